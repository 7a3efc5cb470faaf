"""The scan's supervisor: ``quadvault scan`` runs in a child that is started again after a native crash.

The generic part (the child, signals, restarts, the crash loop) is ``quadvault_dali._supervisor``; this is what is
a scan's own. Progress is a row for a video no run of this command had written, in a complete shard of this job
(a ``--shard`` sibling's shards and an error row rewritten at every start do not count). Once a run has written a
shard, restarts resume it: ``--no-resume`` becomes ``--resume`` (it would scan everything again) and
``--retry-errors`` is dropped (it would open the crasher's error row again). Only complete shards survive a crash,
so a process that dies more often than it closes a shard (every 60 s by default) would lose its work each time and
never get past it: after a crash that finished videos but saved none, the next run closes its shards sooner (half
the interval, or a third of the time the crashed run lived, at least ``MIN_SHARD_SECONDS``:
``shard_seconds_after_crash``), told through ``SHARD_SECONDS_ENV``. A crash while starting up, or one after a run
that saved its work, changes nothing: an early crash must not pin tiny shards on the rest of a night's scan.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from .._supervisor import Supervisor
from .crashguard import finished_in_journals
from .shards import complete_shards, in_job, parse_name

log = logging.getLogger(__name__)

#: The shortest shard interval a restart asks for: shards of a few seconds are many small files, but a scan that
#: crashes that often has bigger problems
MIN_SHARD_SECONDS = 5.0
#: The shard interval a restarted scan child uses when it is shorter than its --shard-seconds (seconds). An
#: environment variable, not an option added to the command line: an option's value could be "--" or look like an
#: option, and the line would read differently
SHARD_SECONDS_ENV = "QUADVAULT_SCAN_SHARD_SECONDS"


def thread_environment() -> dict[str, str]:
    """What a scan process's environment adds for its threads: OpenMP workers that sleep between torch's parallel
    regions (``OMP_WAIT_POLICY=PASSIVE``) instead of spinning on cores the decoding threads need. A CPU scan on 2
    cores ran 1.05x faster with it alone (stop 27, 3 rounds); a value the user set is kept."""
    return {} if "OMP_WAIT_POLICY" in os.environ else {"OMP_WAIT_POLICY": "PASSIVE"}


def shard_seconds_after_crash(current: float, lived_s: float) -> float:
    """The shard interval after a run that finished videos but closed no shard before it crashed ``lived_s`` after
    it started: half the current one, or a third of that life if less (start-up takes some of it), never shorter
    than ``MIN_SHARD_SECONDS`` (nor longer than ``current``). Halving goes on after each such crash, so start-up
    that takes most of a run's life cannot hold the interval above the crash."""
    return min(current, max(MIN_SHARD_SECONDS, min(current / 2, lived_s / 3)))


def own_shards(out_dir: Path, tag: str) -> set[tuple[str, int, int]]:
    """This job's complete video shards as (name, inode, mtime): a ``--no-resume`` run reuses names, and other
    jobs of a ``--shard`` array write into the same folder under tags of their own."""
    try:
        names = complete_shards(out_dir)
    except OSError:
        return set()
    found = set()
    for name in names:
        if not in_job((parse_name(name) or ("", 0))[0], tag):  # complete_shards lists parsed names only
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


class ScanSupervisor(Supervisor):
    """Runs ``quadvault scan`` (or ``batch-classify``) again in a child until it ends by itself."""

    what = "scan"
    progress_unit = "finishing a shard"

    def __init__(self, argv: Sequence[str], out_dir: Path, restarts: int, tag: str = "", device: str = "auto",
                 shard_seconds: float = 60.0) -> None:
        super().__init__(argv, restarts)
        self.out_dir, self.tag = out_dir, tag
        other = " or --device cpu" if device != "cpu" else ""
        self.crash_loop_hint = f"Run with -v to see why, or try --processes 2{other}; the same command resumes"
        self.shard_seconds = shard_seconds  # the runs' shard interval: shortened after a crash that came sooner
        self._asked_shard_seconds = shard_seconds
        self._written: set[str] = set()  # videos the runs of this command have written rows for: once there are
        # some, a restart resumes the run that wrote them
        self._lost_work = False  # whether the last run finished videos that no shard holds

    def restart_argv(self, argv: list[str]) -> list[str]:
        if self._written:
            argv = ["--resume" if a == "--no-resume" else a for a in argv if a != "--retry-errors"]
        return argv

    def child_env(self) -> dict[str, str]:
        env = thread_environment()
        if self.shard_seconds < self._asked_shard_seconds:
            env[SHARD_SECONDS_ENV] = f"{self.shard_seconds:g}"
        return env

    def snapshot(self) -> set[tuple[str, int, int]]:
        return own_shards(self.out_dir, self.tag)

    def progressed(self, before: set[tuple[str, int, int]]) -> bool:
        """Whether the last run wrote a row for a video no run of this command had written: a row rewritten at every
        start (a retried error, a file still being copied) is no progress, or a crash loop would never end."""
        new = written_paths(self.out_dir, own_shards(self.out_dir, self.tag) - before)
        progressed = bool(new - self._written)
        self._written |= new
        self._lost_work = bool(finished_in_journals(self.out_dir, self.tag) - new)
        return progressed

    def after_crash(self, lived_s: float, progressed: bool) -> None:
        if progressed or not self._lost_work:  # shards were closed, or nothing had finished: the interval is not why
            return
        shorter = shard_seconds_after_crash(self.shard_seconds, lived_s)
        if shorter < self.shard_seconds:
            self.shard_seconds = shorter
            log.warning("shards now close every %.0f s, so that a crash as soon as this one still leaves the work "
                        "before it saved", shorter)
