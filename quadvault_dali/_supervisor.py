"""Keeps a long command going when its process dies in native code: the generic supervisor.

A decoder or driver can kill a process with a signal no Python ``except`` sees: FFmpeg or NVDEC crashing on a
damaged file, or DALI aborting on ``CUDA_ERROR_ILLEGAL_ADDRESS`` (seen in two of three scan calls on an H200 in
stop 25, intermittently: a race, gone under ``CUDA_LAUNCH_BLOCKING=1``). The commands that run for long resume
where they stopped and isolate the videos in flight (``scan.crashguard``), so the *same command* goes on. A
``Supervisor`` runs it in a child process and starts it again after such a death, until it finishes, it is stopped,
or it has been restarted ``restarts`` times in a row without progress (a crash loop the suspects' checks cannot
break). What counts as progress, and how the command line changes for a restart, is each command's
(``scan.supervise.ScanSupervisor``, ``dataset._supervise.PrepareSupervisor``).

The child runs this interpreter with its flags and import path (``same_python``), in the supervisor's process
group, so the terminal treats both as one job: Ctrl-C reaches both, Ctrl-Z stops both and ``fg`` continues both,
and the child may write to and read from the terminal whatever ``stty tostop`` says (a child in a group of its own
stopped for good on its first write there). The supervisor also passes SIGINT, SIGTERM and SIGHUP on, for the
stops sent to it alone (``kill -INT``, a scheduler); the child acts on the first and ignores the rest
(``stop_on_signals``). A child that dies by a signal after it reported its work finished (``DONE_FD_ENV``: DALI
can crash while the interpreter exits) is not restarted. Killed with ``kill -9``, the supervisor takes its child
with it (``die_with_parent``), and the child's own children (GPU workers, suspects' checks) go with it the same
way.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from types import FrameType
from typing import Any, Sequence

from ._clock import awake
from ._lifetime import STOP_SIGNALS, dies_with_this_process, same_python, signal_name

log = logging.getLogger(__name__)

#: Set in the environment of a command that runs in its own process (the supervised child, or by a user who wants
#: no supervision): such a command does not start another. (The name is from when only scan was supervised.)
IN_PROCESS_ENV = "QUADVAULT_SCAN_IN_PROCESS"
#: The file descriptor a supervised child writes ``DONE`` to once its work has finished (its summary printed).
DONE_FD_ENV = "QUADVAULT_SCAN_DONE_FD"
DONE = b"done\n"
#: The exit status of a child whose own workers died by a signal (scan's ``--gpus``): restarted like a crash.
WORKER_CRASH_EXIT = 75
#: Signals the supervisor passes on to its child (a stop sent to the supervisor alone must reach the child); deaths by
#: ``STOP_SIGNALS`` are requests to stop, not crashes: never restarted.
FORWARDED = STOP_SIGNALS
#: The exit statuses of a child that stopped by itself on a stop signal (its message said so)
STOP_STATUSES = frozenset({0, *(128 + s for s in STOP_SIGNALS)})
#: How long a SIGINT or SIGHUP waits before it is passed on: the terminal sends those to the whole job, the child
#: included, and a copy that came before the child's handler was in place broke its start-up with a traceback
FORWARD_DELAY_S = 1.0


def runs_in_process() -> bool:
    """Whether this process is the supervised command itself (no supervisor starts)."""
    return os.environ.get(IN_PROCESS_ENV) == "1"


def report_done() -> None:
    """In a supervised child: tells the supervisor that the work finished, so a crash while exiting is not
    taken for one mid-work."""
    fd = os.environ.get(DONE_FD_ENV)
    if not fd:
        return
    try:
        os.write(int(fd), DONE)
    except (OSError, ValueError):  # not a supervised child after all (the variable was inherited by hand)
        pass


#: The child's first statement: a terminal's Ctrl-C that comes while it still imports (before the command installs
#: its own handler) ends it with status 130 and no KeyboardInterrupt traceback; an inherited SIG_IGN (a background
#: job's) is kept
QUIET_EARLY_SIGINT = ("import signal, sys; signal.getsignal(signal.SIGINT) is signal.default_int_handler and "
                      "signal.signal(signal.SIGINT, lambda number, frame: sys.exit(130))")


class Supervisor:
    """Runs the ``quadvault`` command line ``argv`` again in a child until it ends by itself; ``run`` returns the
    exit status to use. Subclasses say what progress is (``snapshot``, ``progressed``), how a restart's command
    line differs (``restart_argv``) and what a crash changes (``after_crash``)."""

    #: the command, in messages ("the scan process died by SIGABRT")
    what = "command"
    #: what a run must add to count as progress, in the crash-loop message
    progress_unit = "progress"
    #: what to try after a crash loop, in its message
    crash_loop_hint = "Run with -v to see why; the same command resumes"

    def __init__(self, argv: Sequence[str], restarts: int) -> None:
        self.argv = list(argv)
        self.restarts = restarts
        self.crashes: list[str] = []  # the signal of each death that was restarted
        self.stopped_by: int | None = None  # the stop signal this process got
        self._child: subprocess.Popen[bytes] | None = None

    def snapshot(self) -> Any:
        """What the output holds before a run, for ``progressed``."""
        return None

    def progressed(self, before: Any) -> bool:
        """Whether the run that just died added something no run of this command had (``before``: its snapshot)."""
        return False

    def restart_argv(self, argv: list[str]) -> list[str]:
        """The command line of the next run."""
        return argv

    def after_crash(self, lived_s: float, progressed: bool) -> None:
        """Called after a crash that will be restarted: how long the run lived (awake), whether it progressed."""

    def child_env(self) -> dict[str, str]:
        """Variables added to the next run's environment."""
        return {}

    def _command(self) -> list[str]:
        code = f"{QUIET_EARLY_SIGINT}; from quadvault_dali.cli.main import main; main(prog_name='quadvault')"
        return [*same_python(code),
                *self.restart_argv(list(self.argv))]

    def _forward(self, number: int, frame: FrameType | None) -> None:
        if self.stopped_by is None:
            self.stopped_by = number
        if number == signal.SIGTERM:  # a scheduler's, sent to this process alone
            self._send(number)
        else:
            timer = threading.Timer(FORWARD_DELAY_S, self._send, args=(number,))
            timer.daemon = True
            timer.start()

    def _send(self, number: int) -> None:
        child = self._child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(number)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        previous = {}
        for number in FORWARDED:  # one the shell ignores (a background job's SIGINT) stays ignored, child too
            if signal.getsignal(number) is not signal.SIG_IGN:
                previous[number] = signal.signal(number, self._forward)
        try:
            return self._loop()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _stop_status(self, code: int) -> int:
        """The status after a stop signal: the child's own, or the signal's if the child could not say."""
        assert self.stopped_by is not None
        return code if code in STOP_STATUSES else 128 + self.stopped_by

    def _loop(self) -> int:
        fruitless = 0  # restarts in a row without progress
        while True:
            if self.stopped_by is not None:  # a stop between a death and the next start
                return 128 + self.stopped_by
            before = self.snapshot()
            started = awake()
            done_r, done_w = os.pipe()
            env = {**os.environ, **self.child_env(), IN_PROCESS_ENV: "1", DONE_FD_ENV: str(done_w)}
            try:
                self._child = subprocess.Popen(self._command(), env=env, pass_fds=(done_w,),  # noqa: S603
                                               preexec_fn=dies_with_this_process())
            finally:
                os.close(done_w)
            if self.stopped_by is not None:  # it came while the child was being started
                self._send(self.stopped_by)
            code = self._child.wait()  # the handlers above note a stop; they raise nothing
            with os.fdopen(done_r, "rb") as pipe:
                finished = pipe.read() == DONE
            self._child = None
            if code < 0 and finished:
                if self.stopped_by is None:
                    log.warning("the %s finished, then its process died by %s while exiting; everything is "
                                "saved", self.what, signal_name(-code))
                return 0
            if self.stopped_by is not None:
                return self._stop_status(code)
            crashed = (code < 0 and -code not in STOP_SIGNALS) or code == WORKER_CRASH_EXIT
            if not crashed:
                return code if code >= 0 else 128 - code
            how = signal_name(-code) if code < 0 else "a worker's crash"
            progressed = self.progressed(before)
            fruitless = 0 if progressed else fruitless + 1
            if fruitless > self.restarts:
                log.error("the %s process died %d times in a row without %s (the last by %s); not starting it "
                          "again. %s", self.what, fruitless, self.progress_unit, how, self.crash_loop_hint)
                return 128 - code if code < 0 else 1
            self.crashes.append(how)
            lived = awake() - started
            # SIGKILL is not a crash but a kill: the kernel's out-of-memory killer, most often, or a kill -9
            cause = ("killed by the system's out-of-memory killer or a kill -9; see dmesg" if code == -signal.SIGKILL
                     else "a crash in a decoder or driver, not in Python")
            log.warning("the %s process died by %s after %.0f s (%s); starting it again to resume (restart %d; any "
                        "videos it was decoding are checked one at a time first)", self.what, how, lived, cause,
                        len(self.crashes))
            self.after_crash(lived, progressed)
