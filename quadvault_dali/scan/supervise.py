"""Keeps an overnight scan going when its process dies in native code.

A decoder or driver can kill the scan's process with a signal no Python ``except`` sees: FFmpeg or NVDEC
crashing on a damaged file, or DALI aborting on ``CUDA_ERROR_ILLEGAL_ADDRESS`` (seen in two of three scan calls
on an H200 in stop 25, intermittently: a race, gone under ``CUDA_LAUNCH_BLOCKING=1``). The scan's own resume and
``crashguard`` already make the *same command* go on where it stopped, isolating the videos in flight. But a
crash at 1 a.m. then wastes the night until someone types it. So ``quadvault scan`` runs the scan in a child
process and starts it again after such a death, until it finishes, it is stopped, or it has been restarted
``restarts`` times in a row without a new complete shard of its own (a crash loop the suspects' checks cannot
break). Once a run has written a shard, restarts resume it: ``--no-resume`` becomes ``--resume`` (it would scan
everything again) and ``--retry-errors`` is dropped (it would open the crasher's error row again). Only complete
shards survive a crash, so a process that dies more often than it closes a shard (every 60 s by default) would
lose its work each time and never get past it: after a crash the next run closes its shards every third of the
time the crashed run lived (``shard_seconds_after_crash``, at least ``MIN_SHARD_SECONDS``).

The child runs this interpreter with its flags and import path (``same_python``), in the supervisor's process
group, so the terminal treats both as one job: Ctrl-C reaches both, Ctrl-Z stops both and ``fg`` continues both,
and the child may write to and read from the terminal whatever ``stty tostop`` says (a child in a group of its own
stopped for good on its first write there). The supervisor also passes SIGINT, SIGTERM and SIGHUP on, for the
stops sent to it alone (``kill -INT``, a scheduler); the child acts on the first and ignores the rest
(``stop_on_signals``). A child that dies by a signal after it reported its scan finished (``DONE_FD_ENV``: DALI
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
from pathlib import Path
from types import FrameType
from typing import Sequence

from .._clock import awake
from .._lifetime import dies_with_this_process, same_python, signal_name
from .shards import complete_shards, parse_name

log = logging.getLogger(__name__)

#: Set in the environment of a scan that runs in its own process (the supervised child, or by a user who wants
#: no supervision): such a scan does not start another.
IN_PROCESS_ENV = "QUADVAULT_SCAN_IN_PROCESS"
#: The file descriptor a supervised child writes ``DONE`` to once its scan has finished (its summary printed).
DONE_FD_ENV = "QUADVAULT_SCAN_DONE_FD"
DONE = b"done\n"
#: The exit status of a scan child whose own workers died by a signal (``--gpus``): restarted like a crash.
WORKER_CRASH_EXIT = 75
#: Deaths that are requests to stop, not crashes: never restarted.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
#: Signals the supervisor passes on to its child (a stop sent to the supervisor alone must reach the scan).
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: The exit statuses of a child that stopped by itself on a stop signal (its message said so)
STOP_STATUSES = frozenset({0, *(128 + s for s in STOP_SIGNALS)})
#: How long a SIGINT or SIGHUP waits before it is passed on: the terminal sends those to the whole job, the child
#: included, and a copy that came before the child's handler was in place broke its start-up with a traceback
FORWARD_DELAY_S = 1.0
#: The shortest shard interval a restart asks for: shards of a few seconds are many small files, but a scan that
#: crashes that often has bigger problems
MIN_SHARD_SECONDS = 5.0


def runs_in_process() -> bool:
    """Whether this process is the scan itself (no supervisor starts)."""
    return os.environ.get(IN_PROCESS_ENV) == "1"


def report_done() -> None:
    """In a supervised child: tells the supervisor that the scan finished, so a crash while exiting is not
    taken for one mid-scan."""
    fd = os.environ.get(DONE_FD_ENV)
    if not fd:
        return
    try:
        os.write(int(fd), DONE)
    except (OSError, ValueError):  # not a supervised child after all (the variable was inherited by hand)
        pass


def shard_seconds_after_crash(current: float, lived_s: float) -> float:
    """The shard interval for the run after one that crashed ``lived_s`` after it started: a third of that (start-up
    takes some of it), never longer than ``current``, never shorter than ``MIN_SHARD_SECONDS``."""
    return min(current, max(MIN_SHARD_SECONDS, lived_s / 3))


def with_option(argv: Sequence[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option value`` added where click reads it as the subcommand's option: at the end (click
    takes an option's last value), or before a ``--`` after which everything is an argument."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    return [*argv[:end], option, value, *argv[end:]]


def own_shards(out_dir: Path, tag: str) -> set[tuple[str, int, int]]:
    """This job's complete video shards as (name, inode, mtime): a ``--no-resume`` run reuses names, and other
    jobs of a ``--shard`` array write into the same folder under tags of their own."""
    try:
        names = complete_shards(out_dir)
    except OSError:
        return set()
    found = set()
    for name in names:
        shard_tag = (parse_name(name) or ("", 0))[0]  # complete_shards lists parsed names only
        if not (shard_tag == tag or shard_tag.startswith(f"{tag}-g" if tag else "g")):
            continue
        try:
            st = os.stat(out_dir / "videos" / name)
        except OSError:
            continue
        found.add((name, st.st_ino, st.st_mtime_ns))
    return found


def written_paths(out_dir: Path, shards: set[tuple[str, int, int]]) -> set[str]:
    """The video paths in ``shards`` (``own_shards`` entries)."""
    import pyarrow.parquet as pq

    paths: set[str] = set()
    for name, _, _ in shards:
        try:
            paths.update(pq.read_table(out_dir / "videos" / name, columns=["path"]).column("path").to_pylist())
        except Exception:  # noqa: BLE001 - replaced or removed meanwhile, or damaged: the scan deals with it
            continue
    return paths


class Supervisor:
    """Runs this command line again in a child until it ends by itself; ``run`` returns the exit status to use."""

    def __init__(self, argv: Sequence[str], out_dir: Path, restarts: int, tag: str = "", device: str = "auto",
                 shard_seconds: float = 60.0) -> None:
        self.argv = list(argv)
        self.out_dir, self.tag, self.device = out_dir, tag, device
        self.restarts = restarts
        self.shard_seconds = shard_seconds  # the runs' shard interval: shortened after a crash that came sooner
        self._asked_shard_seconds = shard_seconds
        self.crashes: list[str] = []  # the signal of each death that was restarted
        self.stopped_by: int | None = None  # the stop signal this process got
        self._child: subprocess.Popen[bytes] | None = None
        self._written: set[str] = set()  # videos the runs of this command have written rows for: once there are
        # some, a restart resumes the run that wrote them

    def _command(self) -> list[str]:
        argv = list(self.argv)
        if self._written:
            argv = ["--resume" if a == "--no-resume" else a for a in argv if a != "--retry-errors"]
        if self.shard_seconds < self._asked_shard_seconds:
            argv = with_option(argv, "--shard-seconds", f"{self.shard_seconds:g}")
        return [*same_python("from quadvault_dali.cli.main import main; main(prog_name='quadvault')"), *argv]

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

    def _progressed(self, before: set[tuple[str, int, int]]) -> bool:
        """Whether the last run wrote a row for a video no run of this command had written: a row rewritten at every
        start (a retried error, a file still being copied) is no progress, or a crash loop would never end."""
        new = written_paths(self.out_dir, own_shards(self.out_dir, self.tag) - before)
        progressed = bool(new - self._written)
        self._written |= new
        return progressed

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
        fruitless = 0  # restarts in a row without a new complete shard of this job
        while True:
            if self.stopped_by is not None:  # a stop between a death and the next start
                return 128 + self.stopped_by
            before = own_shards(self.out_dir, self.tag)
            started = awake()
            done_r, done_w = os.pipe()
            env = {**os.environ, IN_PROCESS_ENV: "1", DONE_FD_ENV: str(done_w)}
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
                    log.warning("the scan finished, then its process died by %s while exiting; every video is "
                                "saved", signal_name(-code))
                return 0
            if self.stopped_by is not None:
                return self._stop_status(code)
            crashed = (code < 0 and -code not in STOP_SIGNALS) or code == WORKER_CRASH_EXIT
            if not crashed:
                return code if code >= 0 else 128 - code
            how = signal_name(-code) if code < 0 else "a worker's crash"
            if self._progressed(before):
                fruitless = 0
            else:
                fruitless += 1
            if fruitless > self.restarts:
                other = " or --device cpu" if self.device != "cpu" else ""
                log.error("the scan process died %d times in a row without finishing a shard (the last by %s); not "
                          "starting it again. Run with -v to see why, or try --processes 2%s; the same command "
                          "resumes", fruitless, how, other)
                return 128 - code if code < 0 else 1
            self.crashes.append(how)
            lived = awake() - started
            log.warning("the scan process died by %s after %.0f s (a crash in a decoder or driver, not in Python); "
                        "starting it again to resume (restart %d; any videos it was decoding are checked one at a "
                        "time first)", how, lived, len(self.crashes))
            shorter = shard_seconds_after_crash(self.shard_seconds, lived)
            if shorter < self.shard_seconds:
                self.shard_seconds = shorter
                log.warning("shards now close every %.0f s, so that a crash as soon as this one still leaves the "
                            "work before it saved", shorter)
