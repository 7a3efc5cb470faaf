"""Keeps an overnight scan going when its process dies in native code.

A decoder or driver can kill the scan's process with a signal no Python ``except`` sees: FFmpeg or NVDEC
crashing on a damaged file, or DALI aborting on ``CUDA_ERROR_ILLEGAL_ADDRESS`` (seen in two of three scan calls
on an H200 in stop 25, intermittently: a race, gone under ``CUDA_LAUNCH_BLOCKING=1``). The scan's own resume and
``crashguard`` already make the *same command* go on where it stopped, isolating the videos in flight. But a
crash at 1 a.m. then wastes the night until someone types it. So ``quadvault scan`` runs the scan in a child
process and starts it again after such a death, with resume (always: a restarted ``--no-resume`` would
scan everything again; and without ``--retry-errors``, which would open the crasher's error row again), until it finishes, it is stopped, or it dies ``restarts`` times in a row without a new
complete shard (a crash loop the suspects' checks cannot break).

The child is the same command line with ``IN_PROCESS_ENV`` set, in the same process group: Ctrl-C from the
terminal reaches it directly (the supervisor only notes it), and a SIGTERM sent to the supervisor (a batch
system's time limit) is passed on. Killed with ``kill -9``, the supervisor takes its child with it
(``die_with_parent``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Sequence

from .._lifetime import die_with_parent
from .shards import complete_shards

log = logging.getLogger(__name__)

#: Set in the environment of a scan that runs in its own process (the supervised child, or by a user who wants
#: no supervision): such a scan does not start another.
IN_PROCESS_ENV = "QUADVAULT_SCAN_IN_PROCESS"
#: Deaths that are requests to stop, not crashes: never restarted.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def runs_in_process() -> bool:
    """Whether this process is the scan itself (no supervisor starts)."""
    return os.environ.get(IN_PROCESS_ENV) == "1"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Supervisor:
    """Runs ``python -m quadvault_dali ARGV`` until it ends by itself; ``run`` returns the exit status to use."""

    def __init__(self, argv: Sequence[str], out_dir: Path, restarts: int) -> None:
        self.argv = list(argv)
        self.out_dir = out_dir
        self.restarts = restarts
        self.crashes: list[str] = []  # the signal of each death that was restarted
        self._child: subprocess.Popen[bytes] | None = None
        self._stop: int | None = None  # the stop signal this process got

    def _command(self, first: bool) -> list[str]:
        argv = list(self.argv)
        if not first:  # a restart goes on with the same run: what it wrote is kept and its error rows stand
            argv = ["--resume" if a == "--no-resume" else a for a in argv if a != "--retry-errors"]
        return [sys.executable, "-m", "quadvault_dali", *argv]

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        self._stop = number
        child = self._child
        if number != signal.SIGINT and child is not None and child.poll() is None:
            child.send_signal(number)  # Ctrl-C reached the child from the terminal already

    def run(self) -> int:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {n: signal.signal(n, self._on_signal) for n in handled}
        try:
            return self._loop()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _loop(self) -> int:
        env = {**os.environ, IN_PROCESS_ENV: "1"}
        fruitless = 0  # deaths in a row without a new complete shard
        first = True
        while True:
            before = set(complete_shards(self.out_dir))
            started = time.monotonic()
            self._child = subprocess.Popen(self._command(first), env=env, preexec_fn=die_with_parent)  # noqa: S603
            first = False
            code = self._child.wait()  # the signal handler notes a stop; it raises nothing
            self._child = None
            if code >= 0 or self._stop is not None or -code in STOP_SIGNALS:
                return code if code >= 0 else 128 - code
            how = signal_name(-code)
            fruitless = 0 if set(complete_shards(self.out_dir)) - before else fruitless + 1
            if fruitless > self.restarts:
                log.error("the scan process died %d times in a row (the last by %s) without finishing a shard; not "
                          "starting it again. Run with -v to see why, or try --device cpu or --processes 2; the "
                          "same command resumes", fruitless, how)
                return 128 - code
            self.crashes.append(how)
            log.warning("the scan process died by %s after %.0f s (a crash in a decoder or driver, not in Python); "
                        "starting it again to resume (restart %d; the videos it was decoding are checked one at a "
                        "time first)", how, time.monotonic() - started, len(self.crashes))
