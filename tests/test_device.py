"""Device selection and GPU claiming (no GPU needed: the device count is injected)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time

import pytest
import torch

from advdissect import device
from advdissect.device import GPUClaimTimeout, claim_gpu, configure_threads, select_device


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    # Outside SLURM, with CUDA_VISIBLE_DEVICES unset; monkeypatch restores both afterwards.
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_select_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device() == torch.device("cuda", 0)


def test_configure_threads():
    previous = torch.get_num_threads()
    try:
        configure_threads(1)
        assert torch.get_num_threads() == 1
        configure_threads(None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_physical_gpu_count_does_not_start_cuda():
    assert device.physical_gpu_count() >= 0
    assert not torch.cuda.is_initialized()


@pytest.mark.parametrize("ids, available", [(None, 2), ([], 2), ([0, 1], 0), ([5], 2)])
def test_cpu_when_nothing_to_claim(tmp_path, ids, available):
    with claim_gpu(ids, tmp_path / "locks", available=available) as gpu:
        assert gpu is None
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not (tmp_path / "locks").exists()


def test_two_claims_get_different_ids_and_restore_env(tmp_path, caplog):
    locks = tmp_path / "locks"
    with caplog.at_level(logging.INFO, logger="advdissect.device"):
        with claim_gpu([0, 1], locks, available=2) as first:
            assert first == 0
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
            with claim_gpu([0, 1], locks, available=2) as second:
                assert second == 1
                assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert f"claimed GPU 0 (CUDA_VISIBLE_DEVICES=0, lock {locks / 'gpu0.lock'})" in caplog.messages
    assert f"claimed GPU 1 (CUDA_VISIBLE_DEVICES=1, lock {locks / 'gpu1.lock'})" in caplog.messages
    # Released on exit: the next claim starts from the first id again.
    with claim_gpu([0, 1], locks, available=2) as again:
        assert again == 0


def test_only_configured_ids_that_exist_are_claimed(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="advdissect.device"):
        with claim_gpu([3, 1], tmp_path, available=2) as gpu:
            assert gpu == 1
    assert "GPU ids [3, 1] configured, but this machine has 2 CUDA device(s)" in caplog.messages


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

    with caplog.at_level(logging.INFO, logger="advdissect.device"):
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
    with claim_gpu([0, 1], tmp_path, available=2), claim_gpu([0, 1], tmp_path, available=2):
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
    with caplog.at_level(logging.INFO, logger="advdissect.device"):
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
