"""Device selection, GPU claiming for GPU jobs, and batching that survives out-of-memory errors.

`select_device` is the one place that decides where tensors go: CUDA device 0 of whatever
CUDA_VISIBLE_DEVICES leaves visible, else the CPU.

Snakemake's `resources: gpu=1` only caps how many GPU jobs run at once; it does not say which
GPU a job gets (snakemake issue #281). So a local job claims one itself with `claim_gpu`: an
exclusive, non-blocking `flock` on `<lock_dir>/gpu<id>.lock` for the first free id, then
CUDA_VISIBLE_DEVICES=<id> before CUDA starts. The kernel drops the lock when the process dies,
however it dies, so a killed job never leaves a GPU claimed. A SLURM job given one GPU keeps
SLURM's CUDA_VISIBLE_DEVICES and claims nothing; a run inside an allocation of several GPUs
claims among them.

`gpu_job` is a compute job's whole setup in that order: the claim, the CPU settings, the device.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from ..errors import AdvDissectError

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def in_batches(n: int, batch_size: int, run: Callable[[int, int], None]) -> None:
    """Call run(start, stop) on consecutive ranges covering [0, n), at most batch_size long.

    When a range runs out of memory, the CUDA cache is emptied and the range is retried at half
    the size, down to one item; the smaller size is kept for the ranges after it. `run` must
    leave nothing behind when it fails (results are kept only for ranges that finished).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start = 0
    while start < n:
        stop = min(start + batch_size, n)
        try:
            run(start, stop)
        except Exception as exc:
            if not is_out_of_memory(exc) or stop - start == 1:
                raise
        else:
            start = stop
            continue
        # Out of the except block, so the failed batch's tensors (held by the traceback) are freed.
        batch_size = max(1, (stop - start) // 2)
        log.warning("out of memory on a batch of %d; retrying with %d", stop - start, batch_size)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class GPUClaimTimeout(AdvDissectError):
    """Every configured GPU stayed claimed by other jobs for the whole wait."""


def select_device() -> torch.device:
    """CUDA device 0 (the GPU this job was given) when CUDA is available, else the CPU.

    On CUDA the arithmetic is made reproducible first (`reproducible_cuda`)."""
    if torch.cuda.is_available():
        reproducible_cuda()
        return torch.device("cuda", 0)
    return torch.device("cpu")


def reproducible_cuda() -> None:
    """Full float32 precision and deterministic kernels for this process's CUDA work.

    By default cuDNN convolves float32 in TF32 (10-bit mantissa) on Ampere and later GPUs and
    may pick non-deterministic algorithms, so a repeated GPU job would not write the same bytes
    and its results would drift from the CPU's (FGSM flips the signs of near-zero gradients).
    Ops that torch has no deterministic CUDA kernel for warn in the job's log instead of failing.
    Must run before the first CUDA matmul (cuBLAS reads its workspace setting once).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        # Only the new API: torch refuses a mix of the two.
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:  # torch < 2.9
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


# mallopt parameters of glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Keep memory freed by the process for its next allocations instead of handing it back.

    glibc serves blocks above 32 MB with mmap and unmaps them when freed, and trims the top of
    its heap: a CPU training or attack step then gets its large activations afresh every batch,
    and the kernel zero-fills them page by page. On one core that was half of a VGG-11 or
    AlexNet training step (`benchmarks/bench_allocator.py`). With neither, a job's memory stays
    at its peak until it ends. Returns False where the C library is not glibc (nothing changes).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def configure_cpu(threads: int | None) -> None:
    """A compute job's CPU settings: `threads` intra-op threads (a rule's `threads`; None
    leaves torch's default), and freed memory kept for the next batch (`keep_freed_memory`)."""
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    keep_freed_memory()


def physical_gpu_count() -> int:
    """Number of NVIDIA GPUs on the machine, counted through NVML.

    NVML neither starts CUDA nor reads CUDA_VISIBLE_DEVICES, so CUDA_VISIBLE_DEVICES can
    still be set afterwards (torch.cuda.device_count() would pin it for the process).
    """
    if torch.version.cuda is None:
        return 0
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return 0
    try:
        if nvml.nvmlInit_v2() != 0:
            return 0
    except AttributeError:
        return 0
    try:
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    finally:
        nvml.nvmlShutdown()


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on `path`, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    # Who holds it, for the timeout message; the lock itself is the flock, not this text.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def _claim_first(paths: dict[int, Path]) -> tuple[int, int] | None:
    for gpu, path in paths.items():
        fd = _try_lock(path)
        if fd is not None:
            return gpu, fd
    return None


def _holders(paths: Sequence[Path]) -> str:
    out = []
    for path in paths:
        try:
            who = path.read_text().strip() or "?"
        except OSError:
            who = "?"
        out.append(f"{path.name}: pid {who}")
    return "; ".join(out)


def _visible_devices() -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES (ids, UUIDs or MIG names), or None when it is unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [entry.strip() for entry in value.split(",") if entry.strip()]


@contextlib.contextmanager
def _visible_only(value: str) -> Iterator[None]:
    """CUDA_VISIBLE_DEVICES=value for the block, restored afterwards."""
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


def _configured_and_visible(
    gpu_ids: Sequence[int] | None, visible: list[str] | None, available: int | None
) -> tuple[list[int], list[str]]:
    """(the configured ids this process can see, the entries of the devices it sees); logs why
    the job runs on the CPU when no id is left."""
    ids = [int(i) for i in (gpu_ids or [])]
    if not ids:
        log.info("no GPU ids configured: running on the CPU")
        return [], visible or []
    if visible is None:
        visible = [str(i) for i in range(physical_gpu_count() if available is None else int(available))]
    present = [i for i in ids if 0 <= i < len(visible)]
    if len(present) < len(ids):
        log.warning("GPU ids %s configured, but this process can see %d CUDA device(s)", ids, len(visible))
    if not present:
        log.info("no CUDA device among GPU ids %s: running on the CPU", ids)
    return present, visible


def _lock_first_free(
    lock_dir: Path, present: list[int], visible: list[str], timeout: float, poll: float
) -> tuple[int, int, Path]:
    """(id, lock fd, lock path) of the first GPU of `present` whose lock is free, polling every
    `poll` s up to `timeout` s; GPUClaimTimeout when all stay taken."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    # One lock per physical device, whatever position it has in this process's list.
    paths = {i: lock_dir / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', visible[i])}.lock" for i in present}
    deadline = time.monotonic() + timeout
    waiting_logged = False
    while (claimed := _claim_first(paths)) is None:
        if time.monotonic() >= deadline:
            raise GPUClaimTimeout(
                f"all GPUs {present} stayed in use for {timeout:g} s (locks in {lock_dir}: "
                f"{_holders(list(paths.values()))}); lower --resources gpu=N or free a GPU"
            )
        if not waiting_logged:
            log.info("all GPUs %s in use; waiting up to %g s for one", present, timeout)
            waiting_logged = True
        time.sleep(poll)
    gpu, fd = claimed
    return gpu, fd, paths[gpu]


@contextlib.contextmanager
def claim_gpu(
    gpu_ids: Sequence[int] | None,
    lock_dir: str | os.PathLike,
    available: int | None = None,
    timeout: float = 3600.0,
    poll: float = 2.0,
) -> Iterator[int | None]:
    """Claim one GPU of `gpu_ids` for the duration of the block; yield its id, or None.

    Ids count the GPUs this process may see: the entries of CUDA_VISIBLE_DEVICES when it is set
    (id 0 is its first entry), else the machine's GPUs (`available` = how many; None counts
    them with NVML). The first id whose lock is free is taken and CUDA_VISIBLE_DEVICES narrowed to that
    GPU, which must happen before this process starts CUDA. When all are taken, polls every
    `poll` s up to `timeout` s, then raises GPUClaimTimeout.

    None means nothing was claimed. Inside a SLURM job that sees at most one GPU, SLURM's
    CUDA_VISIBLE_DEVICES is kept. With no ids configured, or none of them present, the block
    sees no GPU (CUDA_VISIBLE_DEVICES empty), so the job runs on the CPU as its log says
    rather than on a GPU that nothing claimed. CUDA_VISIBLE_DEVICES is restored on exit.
    """
    visible = _visible_devices()
    if os.environ.get("SLURM_JOB_ID") and (visible is None or len(visible) <= 1):
        log.info(
            "inside SLURM job %s: using SLURM's CUDA_VISIBLE_DEVICES=%s, claiming no GPU",
            os.environ["SLURM_JOB_ID"],
            os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        )
        yield None
        return
    present, visible = _configured_and_visible(gpu_ids, visible, available)
    if not present:
        with _visible_only(""):
            yield None
        return
    if torch.cuda.is_initialized():
        raise RuntimeError("claim_gpu must run before CUDA is initialised in this process")

    gpu, fd, path = _lock_first_free(Path(lock_dir), present, visible, timeout, poll)
    log.info("claimed GPU %d (CUDA_VISIBLE_DEVICES=%s, lock %s)", gpu, visible[gpu], path)
    try:
        with _visible_only(visible[gpu]):
            yield gpu
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# Where the workflow's jobs keep their GPU locks (relative to the working directory).
GPU_LOCK_DIR = ".snakemake/gpu-locks"


@contextlib.contextmanager
def gpu_job(gpu_ids: Sequence[int] | None, threads: int | None, lock_dir: str | os.PathLike = GPU_LOCK_DIR):
    """A compute job's setup: claim a GPU of `gpu_ids` (`claim_gpu`), then the CPU settings for
    `threads` (`configure_cpu`); yields the device to run on (`select_device`).

    The claim comes first, before anything starts CUDA, so it decides which device the job sees.
    Importing torch does not start CUDA; selecting the device does. Keep what may touch CUDA
    (model building, the job's own imports) inside the block.
    """
    with claim_gpu(gpu_ids, lock_dir):
        configure_cpu(threads)
        yield select_device()
