"""Atomic writes: a file appears under its name only when complete, whatever kills the writer."""

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from advdissect.errors import ArtifactError
from advdissect.store import FORMATS, atomic_path, open_h5, write_h5


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_files_get_the_umask_permissions_not_private_ones(tmp_path):
    old = os.umask(0o022)
    try:
        write_h5(tmp_path / "a.h5", "demo", {}, {"x": np.arange(3)})
    finally:
        os.umask(old)
    assert (tmp_path / "a.h5").stat().st_mode & 0o777 == 0o644


def test_a_leftover_temporary_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "shard[0].h5"  # glob characters in the name are taken literally
    leftover = tmp_path / ".shard[0].h5.abc123.tmp"
    other = tmp_path / ".shard1.h5.abc123.tmp"  # another target's: not ours to remove
    leftover.write_text("killed mid-write")
    other.write_text("in progress")
    write_h5(target, "demo", {}, {"x": np.arange(3)})
    assert not leftover.exists() and other.exists()
    with open_h5(target, "demo") as f:
        np.testing.assert_array_equal(f["x"][()], np.arange(3))


WRITER = """
import sys, numpy as np
from advdissect.store import write_h5
# big enough that writing takes a while; the parent kills us once the temporary exists
write_h5(sys.argv[1], "demo", {"model": "m"}, {"x": np.ones((400, 3, 224, 224), np.float32)})
"""


def test_sigkill_while_writing_leaves_no_file_under_the_target_name(tmp_path):
    target = tmp_path / "shard.h5"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".shard.h5.*.tmp")):
        assert proc.poll() is None, "the writer finished before it could be killed"
        assert time.monotonic() < deadline, "no temporary file appeared"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    with pytest.raises(ArtifactError, match="cannot be read as HDF5"):
        open_h5(target, "demo")
    # the re-run writes the complete file and clears the killed run's temporary
    subprocess.run([sys.executable, "-c", WRITER, str(target)], check=True)
    assert [p.name for p in tmp_path.iterdir()] == ["shard.h5"]
    with h5py.File(target) as f:
        assert f["x"].shape == (400, 3, 224, 224) and f["x"][-1, -1, -1, -1] == 1


def test_a_file_without_the_datasets_of_its_kind_is_refused(tmp_path):
    path = tmp_path / "acts.h5"
    write_h5(path, "activations", {"model": "m"}, {"activations": np.zeros((2, 3, 1, 1), np.float32)})
    with pytest.raises(ArtifactError, match=r"acts\.h5: activations file without rows"):
        open_h5(path, "activations", expect={"model": "m"})
    write_h5(path, "activations", {"model": "m"}, {"activations": np.zeros((2, 3, 1, 1)), "rows": np.arange(2)})
    with open_h5(path, "activations", expect={"model": "m"}) as f:
        assert set(f) == set(FORMATS["activations"])


# ---------------------------------------------------------------- checksums

ACTIVATIONS = {
    "rows": np.arange(4),
    "activations/layer4": np.arange(4 * 8 * 3 * 3, dtype=np.float32).reshape(4, 8, 3, 3),
}


def _corrupt_chunk(path, name: str, chunk: int = 0) -> None:
    """Flip bytes inside the stored data of one chunk of dataset `name`, as a bad disk would."""
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(chunk)
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset + info.size // 2)
        data = handle.read(16)
        handle.seek(info.byte_offset + info.size // 2)
        handle.write(bytes(b ^ 0xFF for b in data))


def test_every_dataset_with_data_carries_a_checksum(tmp_path):
    path = tmp_path / "a.h5"
    arrays = {
        **ACTIVATIONS,
        "names": np.array([b"sky", b"tree"]),
        "scalar": np.float64(3.5),
        "empty": np.zeros((0, 5), np.float32),
    }
    write_h5(path, "activations", {"model": "m"}, arrays)
    write_h5(tmp_path / "c.h5", "counts", {}, {"x/y": np.ones((3, 2))}, chunk_rows=False)
    with h5py.File(path, "r") as f:
        assert f["activations/layer4"].chunks == (1, 8, 3, 3)
        assert f["activations/layer4"].fletcher32 and f["rows"].fletcher32 and f["names"].fletcher32
        assert not f["scalar"].fletcher32 and not f["empty"].fletcher32
        assert f["scalar"][()] == 3.5 and f["empty"].shape == (0, 5)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["x/y"].fletcher32


@pytest.mark.parametrize("read", ["whole", "row", "slice", "layer"])
def test_a_corrupted_chunk_is_refused_naming_the_file(tmp_path, read):
    from advdissect.store import open_layer

    path = tmp_path / "0001.h5"
    write_h5(path, "activations", {"model": "m"}, ACTIVATIONS)
    _corrupt_chunk(path, "activations/layer4", chunk=2)
    with pytest.raises(ArtifactError, match=r"0001\.h5: damaged on disk .*delete it and re-run"):
        if read == "layer":
            with open_layer(path, {"model": "m", "layer": "layer4"}) as (_, acts):
                acts[:, :2]
        else:
            with open_h5(path, "activations", expect={"model": "m"}) as f:
                assert f["rows"][()].tolist() == [0, 1, 2, 3]  # the undamaged dataset reads
                {"whole": lambda d: d[()], "row": lambda d: d[2], "slice": lambda d: d[1:3, 0]}[read](
                    f["activations/layer4"]
                )
    # The rows that do not touch the damaged chunk still read.
    with open_h5(path, "activations", expect={"model": "m"}) as f:
        assert f["activations/layer4"][:2].shape == (2, 8, 3, 3)


def test_only_the_damaged_file_is_named(tmp_path):
    good, bad = tmp_path / "good.h5", tmp_path / "bad.h5"
    for path in (good, bad):
        write_h5(path, "activations", {"model": "m"}, ACTIVATIONS)
    _corrupt_chunk(bad, "activations/layer4")
    with pytest.raises(ArtifactError, match=r"bad\.h5: damaged"):
        with open_h5(good, "activations", expect={"model": "m"}):
            with open_h5(bad, "activations", expect={"model": "m"}) as f:
                f["activations/layer4"][()]
    # A failed read of a file not opened through the store, or any other OSError, stays itself.
    with pytest.raises(OSError, match="filter returned failure"):
        with open_h5(good, "activations", expect={"model": "m"}), h5py.File(bad, "r") as other:
            other["activations/layer4"][()]
    with pytest.raises(OSError, match="no space"):
        with open_h5(good, "activations", expect={"model": "m"}) as f:
            f["rows"][()]
            raise OSError(28, "no space left on device")


def test_a_full_disk_is_refused_before_hdf5_writes(tmp_path, monkeypatch):
    import shutil as _shutil
    from collections import namedtuple

    from advdissect import store

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(_shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    out = tmp_path / "deep" / "a.h5"
    with pytest.raises(ArtifactError, match=r"no space left on device: .*a\.h5 needs about 8\.0 MiB"):
        store.write_h5(out, "thresholds", {}, {"thresholds": np.zeros(2**20)})
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))
    monkeypatch.undo()
    store.write_h5(out, "thresholds", {}, {"thresholds": np.zeros(2**20)})
    assert out.exists()
