"""Artifact files: atomic writes and HDF5 files that say what they hold.

Every file the workflow writes goes to a temporary name beside its target and is renamed
into place only when complete, so a killed job never leaves a half-written file under a
name Snakemake (or a later stage) would trust. Every HDF5 artifact carries its identity
(`kind` plus the dataset/model/attack/... it was made from) as attributes; readers state
what they expect and get an `ArtifactError` when a file from another stage or config is
fed to them.

Every dataset with data carries HDF5's Fletcher-32 checksum, which HDF5 verifies on every
read; a file whose bytes changed on disk is refused with an `ArtifactError` that says to
delete it, so the next run makes it again.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import ArtifactError, ModelError

PathLike = str | os.PathLike

# The IoU counts of a layer (advdissect.dissect.tally), summed over images.
COUNT_KEYS = ("intersection", "label_area", "activation_lite", "activation_original", "activation_total")
COUNTS = (*COUNT_KEYS, "label_category")
# The HDF5 artifacts, by kind: the datasets every reader may rely on (writers may add more, e.g.
# an images shard's predictions and perturbation sizes). The one declaration of the file formats;
# `open_h5` checks a file against it.
FORMATS = {
    "images": ("rows", "images"),
    "activations": ("rows", "activations"),
    "thresholds": ("thresholds",),
    "segmentations": (
        "rows",
        "pixel",
        "layer_offsets",
        "layer_category",
        "image_labels",
        "label_offsets",
        "label_category",
    ),
    # A counts file holds one image shard's counts of every layer and threshold mode of its image
    # set, each in a group "<mode>/<layer>" of COUNTS (advdissect.dissect.tally.read_counts).
    "counts": (),
    "iou": (*COUNTS, "iou", "label_names", "categories"),
}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it to `path` on success.

    On any exception the temporary file is removed and the target is left untouched. A job
    killed outright (SIGKILL, a node failure) cannot clean up; its leftover temporary file is
    removed here when the target is written again (each target has one writing job).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); results on a shared cluster follow the umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` whole.

    As atomic_path, for outputs that are directories (a page and its pictures).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as CSV, atomically, without the index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _encode_attr(value: Any) -> Any:
    # Nested or None values go in as JSON text; h5py stores scalars and flat arrays natively.
    if value is None or isinstance(value, (dict, list, tuple)):
        return "json:" + json.dumps(value, sort_keys=True, default=_json_default)
    return value


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_h5(
    path: str | os.PathLike,
    kind: str,
    identity: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    chunk_rows: bool = True,
) -> None:
    """Write `arrays` (name -> array; names may contain '/' for groups) atomically.

    Arrays with 2+ dimensions are chunked one row (first axis) per chunk when `chunk_rows`,
    so a reader can take one image without reading the shard; other arrays get h5py's chunk
    shape. Every chunk carries a Fletcher-32 checksum.

    A disk without room for the arrays is refused before HDF5 writes anything (HDF5 can crash
    the process when a write fails for want of space, leaving an empty job log).
    """
    arrays = {name: np.asarray(array) for name, array in arrays.items()}
    check_space(path, sum(array.nbytes for array in arrays.values()))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["kind"] = kind
            for key, value in identity.items():
                f.attrs[key] = _encode_attr(value)
            for name, array in arrays.items():
                array = np.asarray(array)
                f.create_dataset(name, data=array, **_storage(array, chunk_rows))


@contextlib.contextmanager
def h5_writer(path: str | os.PathLike, kind: str, identity: Mapping[str, Any]) -> Iterator[h5py.File]:
    """An HDF5 file of `kind` filled piece by piece, for arrays too large to hold at once;
    atomic as write_h5. Create its arrays with `create_rows`."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["kind"] = kind
            for key, value in identity.items():
                f.attrs[key] = _encode_attr(value)
            yield f


def create_rows(f: h5py.File, name: str, shape: tuple[int, ...], dtype: Any) -> h5py.Dataset:
    """An empty array of `shape` in a file from h5_writer, laid out as write_h5 lays out a
    whole one (a chunk per row, checksums), after checking the disk has room for it."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2 or 0 in shape:
        raise ValueError(f"create_rows makes non-empty arrays of 2+ dimensions, got shape {shape}")
    dtype = np.dtype(dtype)
    check_space(f.filename, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return f.create_dataset(name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]), fletcher32=True)


def row_blocks(shape: tuple[int, ...], itemsize: int, block_bytes: int) -> list[tuple[int, int]]:
    """(start, stop) of blocks of rows of an array of `shape` whose rows take about `block_bytes`
    at `itemsize` bytes per value, at least one row each: how a job reads a shard without
    holding it whole."""
    per_row = int(itemsize) * int(np.prod(shape[1:], dtype=np.int64))
    rows = max(1, int(block_bytes) // max(1, per_row))
    return [(start, min(start + rows, shape[0])) for start in range(0, shape[0], rows)]


# Room kept free beyond a file's arrays: HDF5's headers, chunk indexes and checksums, and a margin.
SPACE_MARGIN = 16 * 2**20


def check_space(path: str | os.PathLike, nbytes: int) -> None:
    """Raise ArtifactError ("no space left on device: <file>") unless the target's file system
    has room for `nbytes` more plus SPACE_MARGIN."""
    target = Path(path)
    where = next((p for p in (target.parent, *target.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(where).free
    if free < nbytes + SPACE_MARGIN:
        raise ArtifactError(
            f"no space left on device: {target} needs about {nbytes / 2**20:.1f} MiB, {where} has "
            f"{free / 2**20:.1f} MiB free; free some space and run again"
        )


def _storage(array: np.ndarray, chunk_rows: bool) -> dict[str, Any]:
    """create_dataset's layout keywords: chunked with checksums, except where HDF5 cannot
    filter (a scalar or an empty array holds no chunk to check)."""
    if array.ndim == 0 or array.size == 0:
        return {}
    chunks = (1,) + array.shape[1:] if chunk_rows and array.ndim >= 2 else True
    return {"chunks": chunks, "fletcher32": True}


def read_attrs(f: h5py.File) -> dict[str, Any]:
    return {key: _decode_attr(value) for key, value in f.attrs.items()}


def check_identity(path: str | os.PathLike, kind: str, attrs: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    """Raise ArtifactError unless `attrs` says `kind` and matches every key of `expect`."""
    found_kind = attrs.get("kind")
    if found_kind != kind:
        raise ArtifactError(f"{path}: expected a '{kind}' file, found kind={found_kind!r}")
    for key, want in expect.items():
        have = attrs.get(key)
        if _normalise(have) != _normalise(want):
            raise ArtifactError(
                f"{path}: made for {key}={have!r}, but this step needs {key}={want!r} "
                "(a file from another model, attack or config; delete it and re-run)"
            )


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=_json_default))


def damaged(path: str | os.PathLike, exc: BaseException) -> ArtifactError:
    """The error for an artifact whose bytes changed after it was written."""
    return ArtifactError(f"{path}: damaged on disk ({exc}); delete it and re-run, and Snakemake makes it again")


class ArtifactFile(h5py.File):
    """An artifact opened by `open_h5`: an h5py File whose `with` block turns a failed read of
    this file (a Fletcher-32 mismatch, a broken structure) into `damaged`'s ArtifactError."""

    def __exit__(self, exc_type, exc, tb):
        failed_here = isinstance(exc, OSError) and self.id.valid and _raised_on(exc, self)
        path = self.filename
        super().__exit__(exc_type, exc, tb)
        if failed_here:
            raise damaged(path, exc) from exc


def _raised_on(exc: BaseException, f: h5py.File) -> bool:
    """Whether `exc` came out of an h5py object of file `f`, not from other I/O in the block
    (writing another file, which may fail for its own reasons)."""
    frames = exc.__traceback__
    while frames is not None:
        obj = frames.tb_frame.f_locals.get("self")
        if isinstance(obj, h5py.HLObject):
            try:
                if obj.file.id == f.id:
                    return True
            except (ValueError, RuntimeError):  # an object that is already closed
                pass
        frames = frames.tb_next
    return False


def open_h5(path: str | os.PathLike, kind: str, expect: Mapping[str, Any] | None = None) -> ArtifactFile:
    """Open an artifact read-only after checking its identity against `expect` and that it
    holds the datasets of its kind (FORMATS). Use it in a `with` block: a damaged file is
    reported there as an ArtifactError."""
    try:
        f = ArtifactFile(path, "r")
    except (OSError, FileNotFoundError) as exc:
        raise ArtifactError(f"{path}: cannot be read as HDF5 ({exc})") from None
    try:
        try:
            attrs = read_attrs(f)
        except OSError as exc:
            raise damaged(path, exc) from exc
        check_identity(path, kind, attrs, expect or {})
        missing = [name for name in FORMATS.get(kind, ()) if name not in f]
        if missing:
            raise ArtifactError(f"{path}: {kind} file without {', '.join(missing)}; delete it and re-run")
    except ArtifactError:
        f.close()
        raise
    return f


def layer_key(layer: str) -> str:
    """The dataset of one layer in an activations file: one file per image shard holds every
    dissected layer of the model, from one forward pass."""
    return f"activations/{layer}"


@contextlib.contextmanager
def open_layer(path: str | os.PathLike, expect: Mapping[str, Any]) -> Iterator[tuple[h5py.File, h5py.Dataset]]:
    """An activations file and the dataset of layer `expect["layer"]` in it; the other keys of
    `expect` are checked against the file's identity as `open_h5` does."""
    want = dict(expect)
    layer = want.pop("layer")
    with open_h5(path, "activations", want) as f:
        key = layer_key(layer)
        if key not in f:
            held = ", ".join(f["activations"].keys()) or "none"
            raise ArtifactError(
                f"{path}: holds no activations of layer {layer!r} (layers: {held}); delete it and re-run"
            )
        yield f, f[key]


# --------------------------------------------------------------------------- sha256 records


def sha256_record(path: str | os.PathLike) -> Path:
    """The file beside a downloaded or written file (weights, an archive) that records its sha256."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def sha256_of(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_sha256_record(record: str | os.PathLike) -> str:
    """The digest a `.sha256` record holds, in the format of `sha256sum`: "<64 hex digits>  <file name>"."""
    text = Path(record).read_text(errors="replace").split()
    digest = text[0].lower() if text else ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ModelError(f"{record}: holds no sha256 digest; delete it and the file beside it, and re-run")
    return digest


def write_sha256_record(path: str | os.PathLike, digest: str) -> None:
    """Record `digest` as the sha256 of `path`, beside it, as `sha256sum` writes it."""
    write_text(sha256_record(path), f"{digest}  {Path(path).name}\n")
