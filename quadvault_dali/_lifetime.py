"""Child processes: they must not outlive the process that started them, and run the code it runs."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

#: What stops a long command like Ctrl-C, not a crash: the terminal's SIGINT, a scheduler's SIGTERM, a closed
#: terminal's (or ssh session's) SIGHUP
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: prctl's option number for the signal a process gets when its parent dies (linux/prctl.h)
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Linux: this process gets SIGKILL when its parent dies, however it dies (``kill -9`` of a scan must not
    leave decoders holding GPU memory or writing shards). Linux counts the *thread* that started the child as its
    parent, so the starting thread must outlive the child. Kept across ``exec``, so it also works as a
    ``subprocess`` ``preexec_fn``. A parent that died before this call (a spawned child imports torch first: seconds)
    is not seen by it, so this process exits if its parent is no longer ``parent_pid`` (by default the parent a
    ``multiprocessing`` child was started by). Elsewhere the parent stops its children itself."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # pragma: no cover - a libc without prctl
        return
    if parent_pid is None:
        parent = multiprocessing.parent_process()
        parent_pid = parent.pid if parent is not None else None
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # orphaned already: the scan it worked for is gone


def dies_with_this_process() -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess``: the child dies with this process, even if it died during the fork."""
    pid = os.getpid()
    return lambda: die_with_parent(pid)


def same_python(code: str) -> list[str]:
    """The command line of a child that runs ``code`` with this interpreter, its flags (``-X faulthandler``...)
    and its import path: ``python -m`` would put the working directory first on the path, and a ``click.py`` or
    ``av.py`` there would replace the library (a review helper's find)."""
    flags = getattr(subprocess, "_args_from_interpreter_flags", lambda: [])()  # what multiprocessing uses too
    return [sys.executable, *flags, "-c", f"import sys; sys.path[:] = {sys.path!r}; {code}"]


def signal_name(number: int) -> str:
    """``SIGSEGV`` for 11: how a child's death by a signal is named in messages."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@contextmanager
def stop_signals_deferred(*, from_start: bool = True) -> Iterator[Callable[[], None]]:
    """SIGINT, SIGTERM and SIGHUP that come inside the block take effect at its end: for a few milliseconds of
    file renames that must not be cut in two (a merge of shard pairs stopped between them left most videos in two
    pairs). ``from_start=False``: only from when the yielded function is called (inside nested blocks whose
    exits do the renames: a reel and its clip list). In another thread than the main one (where handlers cannot
    be set) it defers nothing."""
    caught: list[int] = []
    previous: dict[int, Any] = {}

    def hold() -> None:
        if previous or threading.current_thread() is not threading.main_thread():
            return
        for number in STOP_SIGNALS:
            handler = signal.getsignal(number)
            if handler is not signal.SIG_IGN:
                previous[number] = handler
                signal.signal(number, lambda n, frame: caught.append(n))

    if from_start:
        hold()
    try:
        yield hold
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(caught):
            signal.raise_signal(number)
