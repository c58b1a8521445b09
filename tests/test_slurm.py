"""The workflow on a real one-node SLURM cluster, through Snakemake's slurm executor.

tests/slurm/cluster.sh starts munged, slurmctld and slurmd on 127.0.0.1 with two fake GPUs
(GRES), once for this module, and stops exactly those daemons afterwards. Snakemake then runs
with profiles/slurm, changed only where this cluster differs from a real one (see
`cluster_profile`). The tests check that every job went through sbatch, that GPU jobs running
at the same time were given different GPUs (CUDA_VISIBLE_DEVICES as the job saw it, recorded
by the cluster's TaskProlog), and that the tiny study's tables equal a local run's, byte for byte
or, where a table records the run's own directory or wall-clock seconds, apart from those.

Where the cluster cannot start (not root, no apt, daemons refuse to run) the tests are skipped
with cluster.sh's reason; ADVDISSECT_REQUIRE_SLURM=1 turns that into a failure.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
TINY_CONFIG = REPO / "tests" / "data" / "tiny_config.yaml"
GPU_RULES = ("attack_shard", "activations", "train_model")

# cluster.sh exit codes meaning "this machine cannot host the test cluster" (None: start hung)
CANNOT_RUN = {
    None: "cluster.sh start timed out",
    3: "not root",
    4: "cannot install slurm/munge",
    5: "a daemon did not start",
    6: "node not idle in time",
}

# What the test cluster needs that a real one does not. Memory and CPUs: the node has only
# all online CPUs and 90% of the RAM, and one CPU per job lets two GPU jobs run at once. Status:
# there is no slurmdbd, so sacct knows nothing and squeue (MinJobAge=3600) answers instead.
# Quick first status check, kept SLURM logs (read below), no retries (a failure shows at once).
PROFILE_CHANGES = {
    "retries": 0,
    "slurm-status-command": "squeue",
    "slurm-init-seconds-before-status-checks": 5,
    "slurm-keep-successful-logs": True,
}
SMALL_RESOURCES = {"mem_mb": 1000, "cpus_per_task": 1}

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]


@dataclass
class SlurmJob:
    job_id: str
    rules: tuple[str, ...]  # the rule of each Snakemake job in the submission (a group job has several)
    name: str  # the run's uuid, Snakemake's --job-name
    state: str
    partition: str
    gres: str
    start: datetime | None
    end: datetime | None


@dataclass
class Cluster:
    state: Path
    env: dict[str, str]

    def submissions(self) -> dict[str, list[str]]:
        """sbatch arguments per job id, as the cluster's sbatch wrapper recorded them."""
        out = {}
        for path in sorted((self.state / "log" / "sbatch").glob("*.args")):
            out[path.stem] = path.read_text().split("\0")[:-1]
        return out

    def jobs(self, run_id: str) -> dict[str, SlurmJob]:
        """Every job of one Snakemake run (all states; finished jobs stay for MinJobAge)."""
        fmt = "%i|%j|%T|%P|%b|%S|%e"
        text = subprocess.run(
            ["squeue", "--states=all", "--noheader", f"--format={fmt}", "--name", run_id],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        submitted = self.submissions()
        jobs = {}
        for line in text.splitlines():
            job_id, name, state, partition, gres, start, end = line.strip().split("|")
            jobs[job_id] = SlurmJob(
                job_id,
                rules_of(submitted.get(job_id, [])),
                name,
                state,
                partition,
                gres,
                parse_time(start),
                parse_time(end),
            )
        return jobs

    def task_devices(self) -> dict[str, set[str]]:
        """CUDA_VISIBLE_DEVICES each job's tasks saw (batch step and srun steps)."""
        seen: dict[str, set[str]] = {}
        for line in (self.state / "log" / "tasks.log").read_text().splitlines():
            job_id, _step, devices = line.split()[:3]
            seen.setdefault(job_id, set()).add(devices)
        return seen


def parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:  # N/A, Unknown
        return None


def rules_of(sbatch_args: list[str]) -> tuple[str, ...]:
    """The rules of a submission's Snakemake jobs, from the `--target-jobs 'rule:wildcards' ...`
    of the command it wraps: one job, or every member of a group job."""
    for i, arg in enumerate(sbatch_args):
        if arg.startswith("--wrap"):
            value = arg.removeprefix("--wrap=") if arg != "--wrap" else sbatch_args[i + 1]
            targets = re.search(r"--target-jobs ((?:'[^']*' ?)+)", value)
            if targets:
                return tuple(re.findall(r"'(\w+):[^']*'", targets.group(1)))
    return ("?",)


def job_env(**extra: str) -> dict[str, str]:
    """This environment without anything SLURM or profile related, one thread per process."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "SNAKEMAKE_PROFILE"
    }
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="no Snakemake slurm executor")
    state = tmp_path_factory.mktemp("slurm")
    if len(str(state)) >= 80:  # the munge socket path must stay short
        state = Path(tempfile.mkdtemp(prefix="advdissect-slurm-"))
    start = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", str(CLUSTER_SH), "start", str(state)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, err = None, f"cluster.sh start ran over {exc.timeout} s"
    if rc != 0:
        subprocess.run(["bash", str(CLUSTER_SH), "stop", str(state)], capture_output=True, timeout=120)
        lines = [line for line in (err or "").splitlines() if line.strip()]
        why = next((line for line in reversed(lines) if line.startswith("cluster.sh:")), "")
        reason = f"SLURM test cluster cannot start ({CANNOT_RUN.get(rc, f'exit {rc}')}): {why}"
        detail = "\n".join(lines[-20:])
        if rc in CANNOT_RUN and not os.environ.get("ADVDISSECT_REQUIRE_SLURM"):
            print(detail)
            pytest.skip(reason)
        pytest.fail(f"{reason}\n{detail}")
    print(f"cluster up in {time.monotonic() - start:.1f} s ({state})")
    env = job_env(
        SLURM_CONF=str(state / "slurm.conf"),
        PATH=os.pathsep.join([str(state / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]]),
    )
    try:
        yield Cluster(state, env)
    finally:
        subprocess.run(["bash", str(CLUSTER_SH), "stop", str(state)], timeout=120)


def cluster_profile(dest: Path, grouped: bool = True) -> Path:
    """profiles/slurm with PROFILE_CHANGES and small memory/CPU requests, without its job groups
    unless `grouped`; its directory."""
    profile = yaml.safe_load(PROFILE.read_text())
    profile.update(PROFILE_CHANGES)
    if not grouped:
        for key in ("groups", "group-components"):
            profile.pop(key, None)
    # a group job must fit this one node: its CPUs and a few of the small jobs' memory
    profile["resources"] = ["gpu=1", f"cpus_per_task={os.cpu_count() or 1}", f"mem_mb={4 * SMALL_RESOURCES['mem_mb']}"]
    profile["default-resources"].update(SMALL_RESOURCES)
    for resources in profile.get("set-resources", {}).values():
        resources.update({k: v for k, v in SMALL_RESOURCES.items() if k in resources})
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


class Snakemake:
    """One Snakemake run (this interpreter's) in its own process group, output to `log`."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path):
        self.name, self.log = name, log
        self.start = time.monotonic()
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "snakemake", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def kill(self) -> None:
        """End the run and whatever it started (its own process group), if still running."""
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def wait(self, timeout: float) -> str:
        """Its output; fails the test with the output's tail unless Snakemake succeeded."""
        left = max(1.0, timeout - (time.monotonic() - self.start))
        try:
            rc = self.proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = None
        text = self.log.read_text()
        print(f"{self.name}: snakemake rc {rc} after {time.monotonic() - self.start:.0f} s ({self.log})")
        if rc != 0:
            tail = "\n".join(text.splitlines()[-60:])
            what = f"ran over {timeout} s" if rc is None else f"exited {rc}"
            pytest.fail(f"{self.name}: snakemake {what}; log {self.log}:\n{tail}")
        return text


def workflow_args(snakefile: Path, work: Path, *extra: str) -> list[str]:
    """Snakemake arguments for `snakefile` run in `work`, with work/config.yaml if there is one."""
    args = ["--snakefile", str(snakefile), "--directory", str(work)]
    if (work / "config.yaml").exists():
        args += ["--configfile", str(work / "config.yaml")]
    return [*args, *extra]


def job_stats(output: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints before running: jobs per rule."""
    lines = output.splitlines()
    assert "Job stats:" in lines, "no 'Job stats:' table in Snakemake's output"
    stats = {}
    for line in lines[lines.index("Job stats:") + 3 :]:
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit() or fields[0] == "total":
            break
        stats[fields[0]] = int(fields[1])
    return stats


def run_id(output: str) -> str:
    match = re.search(r"^SLURM run ID: (\S+)", output, re.M)
    assert match, "no 'SLURM run ID' in Snakemake's output: was the slurm executor used?"
    return match.group(1)


def check_every_job_submitted(cluster: Cluster, output: str) -> dict[str, SlurmJob]:
    """Each non-local job of the run went through sbatch, alone or in a group job, and every
    submission ended COMPLETED."""
    jobs = cluster.jobs(run_id(output))
    local = set(re.findall(r"^localrule (\w+):", output, re.M))
    expected = {rule: n for rule, n in job_stats(output).items() if rule not in local}
    submitted: dict[str, int] = {}
    for job in jobs.values():
        for rule in job.rules:
            submitted[rule] = submitted.get(rule, 0) + 1
    assert submitted == expected, f"SLURM jobs per rule {submitted}, Snakemake planned {expected}"
    not_done = {j.job_id: (j.rules, j.state) for j in jobs.values() if j.state != "COMPLETED"}
    assert not not_done, f"SLURM jobs not COMPLETED: {not_done}"
    return jobs


def check_gpu_jobs(
    cluster: Cluster, jobs: dict[str, SlurmJob], gpu_rules, partitions, require_overlap: bool = True
) -> str:
    """GPU jobs asked for a GPU in their partition, saw exactly one, and overlapping ones differed
    (`require_overlap`: some did overlap; the toy workflow's sleeping jobs always do)."""
    gpu_jobs = [j for j in jobs.values() if set(j.rules) & set(gpu_rules)]
    assert gpu_jobs, f"no jobs of {gpu_rules} in this run"
    devices = cluster.task_devices()
    seen = {}
    for job in gpu_jobs:
        assert "gpu" in job.gres, f"job {job.job_id} ({job.rules}) requested no GPU: {job.gres}"
        for rule in set(job.rules):
            assert job.partition == partitions[rule], (job.job_id, rule, job.partition)
        got = devices.get(job.job_id, set())
        why = f"job {job.job_id} ({job.rules}): tasks saw CUDA_VISIBLE_DEVICES {got}, want one of 0, 1"
        assert len(got) == 1 and got <= {"0", "1"}, why
        seen[job.job_id] = got.pop()
    overlapping = [
        (a, b)
        for a, b in itertools.combinations(gpu_jobs, 2)
        if a.start and a.end and b.start and b.end and a.start < b.end and b.start < a.end
    ]
    if require_overlap:
        assert overlapping, "no two GPU jobs ran at the same time; nothing shows GPUs are kept apart"
    clashes = [(a.job_id, b.job_id) for a, b in overlapping if seen[a.job_id] == seen[b.job_id]]
    assert not clashes, f"GPU jobs running at the same time shared a GPU: {clashes} ({seen})"
    return f"{len(gpu_jobs)} GPU jobs, {len(overlapping)} overlapping pairs, devices {seen}"


def rules_declaring_a_gpu() -> set[str]:
    """The rules whose `resources:` ask for a GPU, read from workflow/rules/*.smk."""
    found = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M):
            name = re.match(r"rule (\w+):", block)
            if name and re.search(r"^\s+gpu=1,?$", block, flags=re.M):
                found.add(name.group(1))
    return found


def test_every_gpu_rule_goes_to_the_gpu_partition():
    """No cluster needed: a rule that claims a GPU must not be sent to the CPU partition."""
    profile = yaml.safe_load(PROFILE.read_text())
    gpu_rules = rules_declaring_a_gpu()
    assert set(GPU_RULES) < gpu_rules  # the parse finds what the cluster test runs, and more
    overrides = profile["set-resources"]
    for rule in sorted(gpu_rules):
        assert overrides.get(rule, {}).get("gres") == "gpu:1", rule
        assert overrides[rule]["slurm_partition"] != profile["default-resources"]["slurm_partition"], rule


def profile_partitions(rules) -> dict[str, str]:
    profile = yaml.safe_load(PROFILE.read_text())
    default = profile["default-resources"]["slurm_partition"]
    overrides = profile.get("set-resources", {})
    return {r: overrides.get(r, {}).get("slurm_partition", default) for r in rules}


def test_profile_requests_gpus_for_gpu_rules():
    """profiles/slurm sends GPU rules to a partition with one GPU each, via the slurm executor."""
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    for key in ("slurm_partition", "slurm_account", "runtime", "mem_mb", "cpus_per_task"):
        assert key in profile["default-resources"], key
    for rule in GPU_RULES:
        resources = profile["set-resources"][rule]
        assert resources["gres"] == "gpu:1", rule
        assert resources["slurm_partition"], rule


def planned_submissions(output: str) -> dict[str, int]:
    """Submissions per group (or per rule, for jobs outside a group) in a dry run's output."""
    out: dict[str, int] = {}
    for line in output.splitlines():
        group = re.match(r"\[.*\] Group job (\w+)", line)
        rule = re.match(r"rule (\w+):", line)  # unindented: a job outside any group
        name = group.group(1) if group else rule.group(1) if rule else None
        if name:
            out[name] = out.get(name, 0) + 1
    return out


def test_paper_study_submits_hundreds_of_jobs(tmp_path):
    """No cluster needed: the real study planned through profiles/slurm stays under a per-user
    job cap of 500 submissions."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="no Snakemake slurm executor")
    args = workflow_args(REPO / "Snakefile", tmp_path, "--configfile", str(REPO / "config" / "paper.yaml"))
    args += ["--workflow-profile", str(PROFILE.parent)]
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", *args], capture_output=True, text=True, env=job_env(), timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    output = run.stdout + run.stderr
    stats = job_stats(output)
    jobs = sum(stats.values())
    submissions = planned_submissions(output)
    total = sum(n for name, n in submissions.items() if name != "all")
    print(f"paper.yaml: {jobs} jobs in {total} submissions {submissions}")
    assert jobs > 1000 and total <= 500
    # 4 shards' attacks and activations per image_set submission, 8 shards' counts per counts one
    assert submissions["image_set"] == stats["attack_shard"] // 4 == stats["activations"] // 4
    assert submissions["counts"] == stats["count_shard"] // 8


TOY_SNAKEFILE = """
rule all:
    input: expand("out/gpu{i}.txt", i=range(4))

rule prepare:
    output: "out/prepare.txt"
    shell: "echo ready > {output}"

# named like a GPU rule of the workflow, so the profile's GPU settings apply
rule attack_shard:
    input: "out/prepare.txt"
    output: "out/gpu{i}.txt"
    resources: gpu=1
    shell: "echo $CUDA_VISIBLE_DEVICES > {output}; sleep 3"
"""


def test_toy_workflow_through_slurm(cluster, tmp_path):
    """A 2-rule workflow: the cluster, the profile and the executor work together."""
    work = tmp_path / "toy"
    work.mkdir()
    (work / "Snakefile").write_text(TOY_SNAKEFILE)
    # one submission per job (no groups), so that the GPU jobs run side by side
    profile = cluster_profile(tmp_path / "profile", grouped=False)
    args = workflow_args(work / "Snakefile", work, "--workflow-profile", str(profile))
    output = Snakemake("toy on SLURM", args, cluster.env, tmp_path / "snakemake.log").wait(300)
    jobs = check_every_job_submitted(cluster, output)
    print(check_gpu_jobs(cluster, jobs, ("attack_shard",), profile_partitions(["attack_shard"])))
    # what the job's shell saw is what the TaskProlog recorded
    recorded = cluster.task_devices()
    devices = set().union(*(recorded[j.job_id] for j in jobs.values() if "attack_shard" in j.rules))
    written = {(work / f"out/gpu{i}.txt").read_text().strip() for i in range(4)}
    assert written <= devices <= {"0", "1"}, (written, devices)


def result_tables(work: Path) -> dict[str, bytes]:
    results = work / "results"
    files = sorted(results.glob("summary/*.csv"))
    files += sorted(p for p in results.rglob("*.csv") if p.parent.name == "tally")
    return {str(p.relative_to(work)): p.read_bytes() for p in files}


def comparable(table: bytes, work: Path) -> pd.DataFrame:
    """A table without what legitimately differs between two runs: the run's own directory
    (in absolute paths) and wall-clock columns (`*_seconds`)."""
    text = table.decode().replace(str(work), "<workdir>")
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    return frame.drop(columns=[c for c in frame.columns if c.endswith("_seconds")])


def device_log_lines(work: Path) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES per SLURM job id, as the job scripts logged it (advdissect.nets.device)."""
    pattern = re.compile(r"inside SLURM job (\d+): using SLURM's CUDA_VISIBLE_DEVICES=([^,\s]+)")
    found = {}
    for rule in GPU_RULES:
        for log in (work / "results" / "logs" / rule).rglob("*.log"):
            for job_id, devices in pattern.findall(log.read_text(errors="replace")):
                found[job_id] = devices
    return found


def study_config() -> dict:
    """The tiny study cut to one trained model, clean + one attack and one shard, or all of it with
    ADVDISSECT_SLURM_FULL=1.

    The cut keeps every stage and all three GPU rules (train_model, attack_shard, activations)
    in 28 jobs instead of 138: on SLURM each job also starts Snakemake twice (the batch script
    and its srun step) and waits for the executor's next status poll, which on 2 CPUs turns
    the full study into a half-hour test.
    """
    config = yaml.safe_load(TINY_CONFIG.read_text())
    if os.environ.get("ADVDISSECT_SLURM_FULL") == "1":
        return config
    config["models"] = {"small18": config["models"]["small18"]}
    config["attacks"] = {name: config["attacks"][name] for name in ("clean", "fgsm_2")}
    for dataset in config["datasets"].values():
        dataset["n_images"] = dataset["shard_size"]
    return config


def test_tiny_workflow_through_slurm(cluster, tmp_path):
    """The tiny study on SLURM: all jobs submitted, GPUs kept apart, tables equal a local run's."""
    local, remote = tmp_path / "local", tmp_path / "slurm"
    config = yaml.safe_dump(study_config(), sort_keys=False)
    for work in (local, remote):
        work.mkdir()
        (work / "config.yaml").write_text(config)
    snakefile = REPO / "Snakefile"

    # The local reference runs alongside on one core: the SLURM run mostly waits for polls.
    local_args = workflow_args(snakefile, local, "--cores", "1")
    reference = Snakemake("local", local_args, job_env(), tmp_path / "local.log")
    try:
        profile = cluster_profile(tmp_path / "profile")
        slurm_args = workflow_args(snakefile, remote, "--workflow-profile", str(profile))
        output = Snakemake("SLURM", slurm_args, cluster.env, tmp_path / "slurm.log").wait(1800)
        reference.wait(1800)
    finally:
        reference.kill()

    jobs = check_every_job_submitted(cluster, output)
    # the profile's groups: fewer submissions than jobs, and an image set's attack and
    # activations in one submission
    members = [j.rules for j in jobs.values()]
    assert len(members) < sum(map(len, members)), f"no job was grouped: {members}"
    assert any({"attack_shard", "activations"} <= set(m) for m in members), members
    gpu_rules = sorted({r for j in jobs.values() for r in j.rules} & set(GPU_RULES))
    assert gpu_rules == sorted(GPU_RULES), f"GPU rules run: {gpu_rules}"
    # whether the study's GPU jobs overlap depends on timing; the toy test makes sure of it
    print(check_gpu_jobs(cluster, jobs, gpu_rules, profile_partitions(gpu_rules), require_overlap=False))
    # where a job script logs the device it was given, that is SLURM's choice
    devices = cluster.task_devices()
    logged = device_log_lines(remote)
    for job_id, value in logged.items():
        assert {value} == devices.get(job_id), (job_id, value, devices.get(job_id))
    logging_rules = sorted({r for j in logged if j in jobs for r in jobs[j].rules})
    print(f"{len(logged)} job logs name SLURM's CUDA_VISIBLE_DEVICES (rules {logging_rules})")

    want, got = result_tables(local), result_tables(remote)
    assert want, "the local run wrote no summary or tally tables"
    assert sorted(got) == sorted(want)
    differ = [name for name in want if got[name] != want[name]]
    print(f"{len(want) - len(differ)} of {len(want)} tables byte-identical; normalised: {differ}")
    unequal = [name for name in differ if not comparable(got[name], remote).equals(comparable(want[name], local))]
    assert not unequal, f"tables differ between the local and the SLURM run: {unequal}"
