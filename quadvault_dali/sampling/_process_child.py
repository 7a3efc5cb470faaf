"""The decoding process of ``ProcessSampler``: builds its sampler once and serves rounds over its pipe."""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
from typing import Any, Iterator

import torch

from .._gc import freeze_startup_objects
from ..errors import QuadvaultError
from ._base import Sampler, SamplerConfig, VideoSource

log = logging.getLogger(__name__)

#: Batches a child sends between collections of CUDA memory the parent has released.
IPC_COLLECT_EVERY = 16
PR_SET_PDEATHSIG = 1


def child_main(index: int, inner: type[Sampler], config: SamplerConfig, attrs: dict[str, Any], conn: Any,
               log_level: int) -> None:
    """A decoding process: builds its sampler once, then runs rounds until the parent stops it. A round
    is one ``iter_batches`` over the videos the parent deals through ``conn``, up to its end marker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the children
    _die_with_parent()
    logging.basicConfig(level=log_level, format=f"%(levelname)s decode-{index}: %(message)s")
    logging.getLogger("quadvault_dali").setLevel(log_level)
    try:
        sampler = inner(config)
        for name, value in attrs.items():
            setattr(sampler, name, value)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("fatal", _portable(exc)))
        return
    conn.send(("ready", None))

    def sources() -> Iterator[VideoSource]:
        while True:
            task_id, source = conn.recv()
            if task_id is None:
                return
            conn.send(("took", task_id))
            yield source

    sent = 0
    freeze_startup_objects()  # this process's torch/DALI/PyAV: out of the garbage collector's passes
    while True:
        try:
            for batch in sampler.iter_batches(sources()):
                # CPU frames inside the message: as a torch tensor they would travel as a file descriptor the
                # parent fetches from this process while reading, which a child stuck in native code (or dead)
                # cannot answer, and which the parent would hold open as long as it keeps the frames
                frames = batch.frames if batch.frames.is_cuda else batch.frames.numpy()
                conn.send(("batch", (frames, batch.paths, batch.timestamps, batch.completed)))
                del frames
                sent += 1
                if batch.frames.is_cuda and sent % IPC_COLLECT_EVERY == 0:
                    torch.cuda.ipc_collect()
        except (EOFError, BrokenPipeError):  # the parent is gone
            return
        except BaseException as exc:  # noqa: BLE001 - e.g. the backend deciding its decoder does not work
            conn.send(("fatal", _portable(exc)))
            return
        conn.send(("done", None))


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies, however it dies (``kill -9`` of a scan must not
    leave decoders holding GPU memory). Linux counts the *thread* that started the child as its parent, so a
    ``ProcessSampler`` belongs to a thread that outlives it. Elsewhere the parent's ``close`` (or its exit:
    the children are daemons) stops it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # pragma: no cover - a libc without prctl
        pass


def _portable(exc: BaseException) -> QuadvaultError:
    """``exc`` as an error that survives pickling to the parent (the package's own errors do)."""
    if isinstance(exc, QuadvaultError):
        return exc
    return QuadvaultError(f"the decoding process failed: {type(exc).__name__}: {exc}")
