"""A clock for hang limits that stands still while the process is stopped.

``time.monotonic`` runs on while a job is stopped with Ctrl-Z: after ``fg`` an hour later, every "no frame for
N s" limit had long passed, and a healthy video in a suspects' check was blamed for hanging the decoder (a review
helper's find). A ticker thread notices such gaps (all threads stop with the process) and leaves them out.
"""

from __future__ import annotations

import os
import threading
import time

#: How often the ticker looks, and a gap between two looks beyond which the process counts as having been stopped
TICK_S = 0.5
STOPPED_GAP_S = 5.0

_lock = threading.Lock()
_stopped_s = 0.0
_owner_pid: int | None = None  # the process whose ticker runs (a forked child starts its own)


def _tick() -> None:
    global _stopped_s
    last = time.monotonic()
    while True:
        time.sleep(TICK_S)
        now = time.monotonic()
        gap = now - last - TICK_S
        if gap > STOPPED_GAP_S:
            with _lock:
                _stopped_s += gap
        last = now


def awake() -> float:
    """Seconds on a monotonic clock, less the time this process spent stopped (Ctrl-Z, SIGSTOP)."""
    global _owner_pid
    if _owner_pid != os.getpid():
        with _lock:
            if _owner_pid != os.getpid():
                threading.Thread(target=_tick, name="quadvault-awake-clock", daemon=True).start()
                _owner_pid = os.getpid()
    with _lock:
        return time.monotonic() - _stopped_s
