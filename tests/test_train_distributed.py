"""The --multi-gpu spawn plumbing on the CPU: rank 0's result comes back whatever its size, and a rank
killed by a signal is a clear error. (Training ranks need CUDA and NCCL; these targets need neither.)"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable

import pytest

from quadvault_dali.errors import QuadvaultError
from quadvault_dali.training._distributed import _spawn


def _payload(rank: int, world: int, size: int) -> bytes:
    return bytes([rank]) * size


def _killed(rank: int, world: int) -> None:
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def _raises(rank: int, world: int) -> None:
    if rank == 1:
        raise RuntimeError("rank 1 ran out of frames")
    time.sleep(60)


def _within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``'s result or exception, or a test failure instead of a hang (the bug was a deadlock)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting for the ranks after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_a_result_larger_than_the_pipe_comes_back() -> None:
    """1 MiB from rank 0: read only after the ranks were joined, anything over 64 KiB (a 50-epoch history with
    a few hundred skipped frames) blocked rank 0 in put() and the parent in join(), forever."""
    result = _within(120, lambda: _spawn(_payload, 2, (1 << 20,)))
    assert result == b"\x00" * (1 << 20)


def test_a_rank_killed_by_a_signal_is_a_clear_error() -> None:
    with pytest.raises(QuadvaultError, match=r"training rank 1 \(pid \d+\) was killed by SIGKILL") as err:
        _within(120, lambda: _spawn(_killed, 2, ()))
    assert "out-of-memory" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(QuadvaultError, match="a training rank failed: RuntimeError: rank 1 ran out of frames"):
        _within(120, lambda: _spawn(_raises, 2, ()))
