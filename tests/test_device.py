"""Device selection and GPU claiming (no GPU needed: the device count is injected)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from advdissect.nets import device
from advdissect.nets.device import GPUClaimTimeout, claim_gpu, configure_cpu, select_device


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    # Outside SLURM, with CUDA_VISIBLE_DEVICES unset; monkeypatch restores both afterwards.
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def numerics_restored(monkeypatch):
    """The process-wide CUDA numerics settings, put back after the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    backends = torch.backends
    saved = (
        backends.cudnn.conv.fp32_precision,
        backends.cudnn.rnn.fp32_precision,
        backends.cuda.matmul.fp32_precision,
        backends.cudnn.benchmark,
        backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    conv, rnn, matmul, benchmark, deterministic, algorithms, warn_only = saved
    backends.cudnn.conv.fp32_precision, backends.cudnn.rnn.fp32_precision = conv, rnn
    backends.cuda.matmul.fp32_precision = matmul
    backends.cudnn.benchmark, backends.cudnn.deterministic = benchmark, deterministic
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)


def cuda_numerics():
    return {
        "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "conv": torch.backends.cudnn.conv.fp32_precision,
        "matmul": torch.backends.cuda.matmul.fp32_precision,
        "deterministic": torch.backends.cudnn.deterministic,
        "benchmark": torch.backends.cudnn.benchmark,
        "algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def test_select_device_makes_cuda_reproducible_and_leaves_the_cpu_alone(monkeypatch, numerics_restored):
    before = cuda_numerics()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device() == torch.device("cpu")
    assert cuda_numerics() == before  # the CPU path keeps torch's defaults
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device() == torch.device("cuda", 0)
    # No TF32, no autotuned or non-deterministic kernels, cuBLAS with a fixed workspace.
    assert cuda_numerics() == {
        "cublas": ":4096:8",
        "conv": "ieee",
        "matmul": "ieee",
        "deterministic": True,
        "benchmark": False,
        "algorithms": True,
    }
    assert torch.is_deterministic_algorithms_warn_only_enabled()


def test_configure_cpu_sets_threads():
    previous = torch.get_num_threads()
    try:
        configure_cpu(1)
        assert torch.get_num_threads() == 1
        configure_cpu(None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


# Allocates and frees a 64 MB tensor: 10 times to warm up, then 20 times counting page faults.
_REFAULTS = """
import resource, sys, torch
from advdissect.nets.device import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(10):
    torch.empty(2**24).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(2**24).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keep_freed_memory_stops_refaulting_large_tensors():
    # Without it, each new 64 MB tensor is 16,384 fresh 4 kB pages the kernel zero-fills.
    def faults(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", _REFAULTS, mode], capture_output=True, text=True, check=True)
        return int(done.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    assert default > 20 * 2**24 * 4 // 4096 // 2  # at least half the pages fault again
    assert kept < default / 100


def test_physical_gpu_count_does_not_start_cuda():
    assert device.physical_gpu_count() >= 0
    assert not torch.cuda.is_initialized()


@pytest.mark.parametrize("ids, available", [(None, 2), ([], 2), ([0, 1], 0), ([5], 2)])
def test_cpu_when_nothing_to_claim(tmp_path, ids, available):
    with claim_gpu(ids, tmp_path / "locks", available=available) as gpu:
        assert gpu is None
        # The job sees no GPU, so it runs where its log says, not on an unclaimed GPU 0.
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not (tmp_path / "locks").exists()


def test_ids_count_the_gpus_a_user_left_visible(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-1d2e")
    with caplog.at_level(logging.INFO, logger="advdissect.nets.device"):
        with claim_gpu([0, 1, 2], tmp_path) as gpu:
            assert (gpu, os.environ["CUDA_VISIBLE_DEVICES"]) == (0, "2")
        other_job = device._try_lock(tmp_path / "gpu2.lock")  # another job holds visible GPU 0
        try:
            with claim_gpu([0, 1, 2], tmp_path) as gpu:
                assert (gpu, os.environ["CUDA_VISIBLE_DEVICES"]) == (1, "GPU-1d2e")
        finally:
            os.close(other_job)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,GPU-1d2e"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu2.lock", "gpuGPU-1d2e.lock"]
    assert "GPU ids [0, 1, 2] configured, but this process can see 2 CUDA device(s)" in caplog.messages


def test_inside_a_slurm_allocation_of_several_gpus_each_job_claims_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    other_job = device._try_lock(tmp_path / "gpu4.lock")
    try:
        with claim_gpu([0, 1], tmp_path) as gpu:
            assert (gpu, os.environ["CUDA_VISIBLE_DEVICES"]) == (1, "5")
    finally:
        os.close(other_job)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"


@contextlib.contextmanager
def held_by_another_job(lock_dir, *names):
    """The locks of GPUs `names`, held as another job's claim holds them."""
    fds = [device._try_lock(lock_dir / f"gpu{name}.lock") for name in names]
    try:
        yield
    finally:
        for fd in fds:
            os.close(fd)


def test_two_claims_get_different_ids_and_restore_env(tmp_path, caplog):
    locks = tmp_path / "locks"
    with caplog.at_level(logging.INFO, logger="advdissect.nets.device"):
        with claim_gpu([0, 1], locks, available=2) as first:
            assert first == 0
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
        with held_by_another_job(locks, 0), claim_gpu([0, 1], locks, available=2) as second:
            assert second == 1
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert f"claimed GPU 0 (CUDA_VISIBLE_DEVICES=0, lock {locks / 'gpu0.lock'})" in caplog.messages
    assert f"claimed GPU 1 (CUDA_VISIBLE_DEVICES=1, lock {locks / 'gpu1.lock'})" in caplog.messages
    # Released on exit: the next claim starts from the first id again.
    with claim_gpu([0, 1], locks, available=2) as again:
        assert again == 0


def test_gpu_job_claims_then_configures_the_cpu_then_selects_the_device(tmp_path, monkeypatch):
    # The device is selected (the first thing that may start CUDA) inside the claim, so it sees
    # the claimed GPU only, and after the job's threads are set.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")
    seen = []

    def select():
        seen.append((os.environ["CUDA_VISIBLE_DEVICES"], torch.get_num_threads()))
        return torch.device("cpu")

    monkeypatch.setattr(device, "select_device", select)
    threads = torch.get_num_threads()
    try:
        with held_by_another_job(tmp_path, 3), device.gpu_job([0, 1], 1, lock_dir=tmp_path) as where:
            assert where == torch.device("cpu")
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"
            assert device._try_lock(tmp_path / "gpu7.lock") is None  # held by this job
    finally:
        torch.set_num_threads(threads)
    assert seen == [("7", 1)]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,7"


def test_only_configured_ids_that_exist_are_claimed(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="advdissect.nets.device"):
        with claim_gpu([3, 1], tmp_path, available=2) as gpu:
            assert gpu == 1
    assert "GPU ids [3, 1] configured, but this process can see 2 CUDA device(s)" in caplog.messages


def _hold_gpu(lock_dir, queue):
    with claim_gpu([0, 1], lock_dir, available=2) as gpu:
        queue.put(gpu)
        time.sleep(120)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() in a process with threads
def test_lock_held_by_another_process_and_released_when_it_is_killed(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    holder = ctx.Process(target=_hold_gpu, args=(tmp_path, queue), daemon=True)
    holder.start()
    try:
        assert queue.get(timeout=30) == 0
        assert (tmp_path / "gpu0.lock").read_text().split()[0] == str(holder.pid)
        with claim_gpu([0, 1], tmp_path, available=2) as gpu:
            assert gpu == 1
        with pytest.raises(GPUClaimTimeout) as err:
            with claim_gpu([0], tmp_path, available=1, timeout=0.2, poll=0.05):
                pass
        assert str(err.value).startswith(
            f"all GPUs [0] stayed in use for 0.2 s (locks in {tmp_path}: gpu0.lock: pid {holder.pid} "
        )
        assert str(err.value).endswith("; lower --resources gpu=N or free a GPU")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(timeout=10)
    assert holder.exitcode == -signal.SIGKILL
    # The kernel dropped the dead holder's lock: GPU 0 is free again.
    with claim_gpu([0, 1], tmp_path, available=2, timeout=0) as gpu:
        assert gpu == 0


def test_claim_waits_for_a_gpu_to_be_released(tmp_path, caplog):
    got = []

    def wait_for_gpu():
        with claim_gpu([0], tmp_path, available=1, timeout=10, poll=0.02) as gpu:
            got.append(gpu)

    with caplog.at_level(logging.INFO, logger="advdissect.nets.device"):
        with claim_gpu([0], tmp_path, available=1) as gpu:
            assert gpu == 0
            waiter = threading.Thread(target=wait_for_gpu)
            waiter.start()
            time.sleep(0.3)
            assert got == []
        waiter.join(timeout=10)
    assert got == [0]
    assert "all GPUs [0] in use; waiting up to 10 s for one" in caplog.messages


def test_timeout_when_all_gpus_stay_taken(tmp_path):
    with held_by_another_job(tmp_path, 0, 1):
        start = time.monotonic()
        with pytest.raises(GPUClaimTimeout) as err:
            with claim_gpu([0, 1], tmp_path, available=2, timeout=0.2, poll=0.05):
                pass
        assert time.monotonic() - start >= 0.2
    pid = os.getpid()
    assert str(err.value).startswith(
        f"all GPUs [0, 1] stayed in use for 0.2 s (locks in {tmp_path}: gpu0.lock: pid {pid} "
    )
    assert f"; gpu1.lock: pid {pid} " in str(err.value)


def test_inside_slurm_nothing_is_claimed(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with caplog.at_level(logging.INFO, logger="advdissect.nets.device"):
        with claim_gpu([0, 1], tmp_path / "locks", available=2) as gpu:
            assert gpu is None
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert not (tmp_path / "locks").exists()
    assert "inside SLURM job 4242: using SLURM's CUDA_VISIBLE_DEVICES=3, claiming no GPU" in caplog.messages


def test_refuses_once_cuda_is_initialised(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="claim_gpu must run before CUDA is initialised"):
        with claim_gpu([0], tmp_path, available=1):
            pass


def test_in_batches_halves_on_out_of_memory_and_keeps_the_smaller_size():
    calls, done = [], []

    def run(start, stop):
        calls.append((start, stop))
        if stop - start > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        done.extend(range(start, stop))

    device.in_batches(10, 8, run)
    assert done == list(range(10))  # every item once, in order
    assert calls == [(0, 8), (0, 4), (0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]


def test_in_batches_raises_what_is_not_out_of_memory_or_cannot_shrink():
    def fails(start, stop):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        device.in_batches(4, 2, fails)

    def always_oom(start, stop):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        device.in_batches(4, 4, always_oom)
    assert device.is_out_of_memory(RuntimeError("DefaultCPUAllocator: out of memory"))
    assert not device.is_out_of_memory(RuntimeError("shape mismatch"))
