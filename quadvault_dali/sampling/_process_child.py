"""The decoding process of ``ProcessSampler``: builds its sampler once and serves rounds over its pipe."""

from __future__ import annotations

import logging
import os
import signal
from collections import deque
from typing import Any, Iterator

import torch

from .._gc import freeze_startup_objects
from .._lifetime import die_with_parent
from ..errors import QuadvaultError
from ._base import Sampler, SamplerConfig, VideoSource

log = logging.getLogger(__name__)

#: Batches a child sends between collections of CUDA memory the parent has released.
IPC_COLLECT_EVERY = 16
#: Batches a child may have sent that the parent has not yet copied (each holds the child's GPU memory): a
#: pipe buffers ~90 small CUDA messages, so a child with a slow consumer ran that far ahead, ~3.6 GB each.
MAX_UNACKED = 4
#: What the parent sends back once it has copied a batch (``MAX_UNACKED``).
ACK = "ack"


def child_main(index: int, inner: type[Sampler], config: SamplerConfig, attrs: dict[str, Any], conn: Any,
               log_level: int, processes: int = 1) -> None:
    """A decoding process: builds its sampler once, then runs rounds until the parent stops it. A round
    is one ``iter_batches`` over the videos the parent deals through ``conn``, up to its end marker. After each
    round it reports its DALI counts (``DecodeStats``) and the most its queued clips held, with ``done``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the children
    die_with_parent()
    logging.basicConfig(level=log_level, format=f"%(levelname)s decode-{index}: %(message)s")
    logging.getLogger("quadvault_dali").setLevel(log_level)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, processes)))  # N children, not N x the cores
    try:
        sampler = inner(config)
        for name, value in attrs.items():
            setattr(sampler, name, value)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("fatal", _portable(exc)))
        return
    conn.send(("ready", None))
    freeze_startup_objects()  # this process's torch/DALI/PyAV: out of the garbage collector's passes
    serve(sampler, conn)


def serve(sampler: Sampler, conn: Any) -> None:
    """Runs rounds over ``conn`` until the parent is gone or a round fails: tasks in, batches out, at most
    ``MAX_UNACKED`` batches the parent has not copied yet."""
    tasks: deque[tuple[int | None, Any]] = deque()  # dealt while this process waited for acks
    unacked = 0

    def receive() -> None:
        """One message from the parent: an ack, or a task (kept in ``tasks``)."""
        nonlocal unacked
        message = conn.recv()
        if message == ACK:
            unacked -= 1
        else:
            tasks.append(message)

    def sources() -> Iterator[VideoSource]:
        while True:
            while not tasks:
                receive()
            task_id, source = tasks.popleft()
            if task_id is None:
                return
            conn.send(("took", task_id))
            yield source

    sent = 0
    while True:
        try:
            for batch in sampler.iter_batches(sources()):
                while unacked >= MAX_UNACKED:  # the parent has not copied the last ones yet
                    receive()
                if batch.frames.is_cuda:  # complete before the parent reads it: a GPU hang then shows as this
                    torch.cuda.current_stream(batch.frames.device).synchronize()  # process's silence
                # CPU frames inside the message: as a torch tensor they would travel as a file descriptor the
                # parent fetches from this process while reading, which a child stuck in native code (or dead)
                # cannot answer, and which the parent would hold open as long as it keeps the frames
                frames = batch.frames if batch.frames.is_cuda else batch.frames.numpy()
                conn.send(("batch", (frames, batch.paths, batch.timestamps, batch.completed)))
                unacked += 1
                del frames
                sent += 1
                if batch.frames.is_cuda and sent % IPC_COLLECT_EVERY == 0:
                    torch.cuda.ipc_collect()
        except (EOFError, BrokenPipeError):  # the parent is gone
            return
        except BaseException as exc:  # noqa: BLE001 - e.g. the backend deciding its decoder does not work
            conn.send(("fatal", _portable(exc)))
            _linger(conn)
            return
        conn.send(("done", _round_stats(sampler)))


def _linger(conn: Any) -> None:
    """Stays alive until the parent closes the pipe or stops this process: a GPU pool does not read the pipe of a
    process that has exited (its CUDA frames must not be mapped), so exiting at once could lose the message."""
    try:
        while True:
            conn.recv()
    except (EOFError, OSError):
        pass


def _round_stats(sampler: Sampler) -> dict[str, int]:
    """What the round's decoders did (``DecodeStats.take``: counts since the last report) and the most its queued
    clips held."""
    stats = getattr(sampler, "decode_stats", None)
    return {**(stats.take() if stats is not None else {}),
            "queued_bytes_peak": int(getattr(sampler, "queued_bytes_peak", 0))}


def _portable(exc: BaseException) -> QuadvaultError:
    """``exc`` as an error that survives pickling to the parent (the package's own errors do)."""
    if isinstance(exc, QuadvaultError):
        return exc
    return QuadvaultError(f"the decoding process failed: {type(exc).__name__}: {exc}")
