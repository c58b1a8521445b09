"""An installed copy of the package (not the editable one) imports and finds its config schema.

The package is built from the repository's sources and installed with `pip install --target`
(no editable install, no dependencies: those come from the running environment), then imported
from another directory with only that target on PYTHONPATH.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import json
import advdissect.dissect.tally, advdissect.specs, advdissect.study.config

schema = advdissect.study.config.load_schema()
config = advdissect.study.config.load_config([{config!r}])
print(json.dumps({{
    "specs": advdissect.specs.__file__,
    "config": advdissect.study.config.__file__,
    "tally": advdissect.dissect.tally.__file__,
    "schema_file": str(advdissect.specs.SCHEMA),
    "schema_title": schema["title"],
    "train_defaults": advdissect.specs.schema_defaults("weights.train"),
    "filled": sorted(config),
    "filled_dissection": sorted(config["dissection"]),
}}))
"""


def _unmet_build_requirements() -> list[str]:
    """The build-system requirements of pyproject.toml the running environment does not meet
    (the build runs without isolation, so it uses this environment's setuptools)."""
    from packaging.requirements import Requirement

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    unmet = []
    for text in requires:
        requirement = Requirement(text)
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(text)
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{text} (found {version})")
    return unmet


def _sources(dest: Path) -> Path:
    """What the build reads: the repository's top-level files and the package. Copied, because
    pip builds in the source tree and would leave build/ and *.egg-info in the checkout."""
    dest.mkdir()
    for path in ROOT.iterdir():
        if path.is_file():
            shutil.copy2(path, dest / path.name)
    shutil.copytree(ROOT / "advdissect", dest / "advdissect", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_installed_copy_imports_and_loads_its_schema(tmp_path):
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed in this environment")
    unmet = _unmet_build_requirements()
    if unmet:
        pytest.skip(f"the build backend is not installed here ({', '.join(unmet)}); pip would need the network")
    source, target, elsewhere = _sources(tmp_path / "src"), tmp_path / "target", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation"]
        + ["--check-build-dependencies", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
    )
    assert install.returncode == 0, install.stderr

    packaged = target / "advdissect" / "schemas" / "config.schema.yaml"
    assert packaged.read_bytes() == (ROOT / "advdissect" / "schemas" / "config.schema.yaml").read_bytes()

    script = CHECK.format(config=str(ROOT / "config" / "config.yaml"))
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(target)},
        cwd=elsewhere,
    )
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.strip().splitlines()[-1])
    for key in ("specs", "config", "tally", "schema_file"):
        assert Path(found[key]).resolve().is_relative_to(target.resolve()), (key, found[key])
    assert found["schema_title"] == "advdissect configuration"
    assert found["train_defaults"]["eps"] == "4/255"
    # config/config.yaml gives neither; the defaults come from the installed schema
    assert {"ablation", "storage"} <= set(found["filled"])
    assert "bootstrap" in found["filled_dissection"]
