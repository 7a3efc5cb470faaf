"""A child process that must not outlive the process that started it."""

from __future__ import annotations

import ctypes
import signal
import sys

#: prctl's option number for the signal a process gets when its parent dies (linux/prctl.h)
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies, however it dies (``kill -9`` of a scan must not
    leave decoders holding GPU memory or writing shards). Linux counts the *thread* that started the child as its
    parent, so the starting thread must outlive the child. Kept across ``exec``, so it also works as a
    ``subprocess`` ``preexec_fn``. Elsewhere the parent stops its children itself."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # pragma: no cover - a libc without prctl
        pass
