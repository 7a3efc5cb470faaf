"""Resume: which videos the complete shards already hold, and retiring rows a rescan supersedes.

The invariant kept here: among the complete shards of a scan folder, each path appears at most once.
A video is skipped when a complete shard holds it with the same path, size, mtime and model
fingerprint, sampled at the same ``--fps`` (and in exact mode when exact is asked for), unless its row
is an error the file could not even be read for (``FileAccessError``). When it must be scanned again (the file changed, other models, ``--no-resume``,
``--retry-errors``) its old rows are removed from their shard pair *before* the rescan, by rewriting
the pair atomically (seconds first, videos last, the same order as writing). Readers therefore never
need to deduplicate.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .shards import (DamagedShardError, TagLock, complete_shards, parse_name, quarantine_pair, read_shard,
                     write_parquets_atomic)

log = logging.getLogger(__name__)


#: Error rows of these kinds are scanned again by every resumed run, ``--retry-errors`` or not: the file
#: could not be read at all, which is often temporary (an unmounted share, a permission fixed since).
RETRIED_ERROR_KINDS = frozenset({"FileAccessError"})


@dataclass(frozen=True)
class FileState:
    """A library file as ``stat`` sees it now."""

    path: Path
    size_bytes: int
    mtime_ns: int
    real: str = ""  # its path with symlinks resolved, when the caller has it already

    @property
    def real_path(self) -> str:
        return self.real or os.path.realpath(self.path)


@dataclass
class ResumePlan:
    """``todo`` to scan, ``skipped`` already done, ``superseded`` rows to retire (shard -> paths)."""

    todo: list[FileState] = field(default_factory=list)
    skipped: list[FileState] = field(default_factory=list)
    superseded: dict[str, set[str]] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)  # paths whose rows are retired: no longer in the library

    @property
    def superseded_count(self) -> int:
        return sum(len(v) for v in self.superseded.values())


def _done_index(out_dir: Path) -> dict[str, list[dict[str, object]]]:
    """path -> the video rows of it found in complete shards (newest first), each with its shard name and
    how many seconds rows its pair really holds for it."""
    found: dict[str, list[dict[str, object]]] = {}
    cols = ["path", "real_path", "size_bytes", "mtime_ns", "model_fingerprint", "status", "error_kind",
            "scanned_at", "frames_scored", "sampling_mode", "sampling_fps"]
    for name in complete_shards(out_dir):
        try:  # every column: damage in one a reader needs later (scores) must be found here, where the
            # pair can be moved aside and its videos scanned again, not at the end of the run
            seconds_table = read_shard(out_dir / "seconds" / name)
            videos_table = read_shard(out_dir / "videos" / name)
        except DamagedShardError as exc:
            quarantine_pair(out_dir, name, exc)
            continue
        if seconds_table is None or videos_table is None:  # retired by another job since it was listed
            continue
        seconds = seconds_table.column("path")
        held = dict(zip(*(c.to_pylist() for c in pc.value_counts(seconds).flatten()))) if len(seconds) else {}
        for row in videos_table.select(cols).to_pylist():
            row["shard"] = name
            row["seconds_held"] = held.get(row["path"], 0)
            found.setdefault(str(row["path"]), []).append(row)
    for rows in found.values():
        rows.sort(key=lambda r: r["scanned_at"], reverse=True)  # type: ignore[arg-type, return-value]
    return found


def sampled_as_asked(row: dict[str, object], fps: float, mode: str) -> bool:
    """Whether a row's seconds are what this run would sample: the same rate (rows before schema 1.2 were
    1 frame/s), and exact frames when exact is asked for (keyframe or auto accept either)."""
    rate = row.get("sampling_fps")
    if abs(float(rate if rate is not None else 1.0) - float(fps)) > 1e-9:  # type: ignore[arg-type]
        return False
    return not (mode == "exact" and row.get("sampling_mode") == "keyframe")


def plan_resume(files: list[FileState], out_dir: Path, *, fingerprint: str, fps: float = 1.0, mode: str = "auto",
                resume: bool = True, retry_errors: bool = False,
                gone: Callable[[str], bool] | None = None) -> ResumePlan:
    """Splits ``files`` into done and to-do against the complete shards in ``out_dir``.

    ``gone(path)`` says whether a path with rows but not among ``files`` has left this run's part of the
    library (deleted or moved); its rows are then retired, so totals and highlights list what exists.
    """
    done = _done_index(out_dir)
    # the same file reached by another path (the library through a symlink, or its target): scanning through
    # the other path rescanned every video and listed each twice. A row is known by its path resolved now (a
    # link made since); only once that path is gone (the link it was scanned through removed) by the real path
    # it recorded, which a link re-pointed since would otherwise give to another file.
    reals = {path: os.path.realpath(path) for path in done}
    dead_paths = {path for path in done if not os.path.lexists(path)}
    by_real: dict[str, list[dict[str, object]]] = {}
    for path, path_rows in done.items():
        for row in path_rows:
            recorded = str(row.get("real_path") or "") if path in dead_paths else ""
            for real in {reals[path], recorded} - {""}:
                by_real.setdefault(real, []).append(row)
    claimed: set[str] = set()  # row paths matched to a file of this run (never also 'gone')
    kept: set[tuple[str, str]] = set()  # (shard, path) of the rows a file of this run keeps
    plan = ResumePlan()
    for f in files:
        same_file = {id(r): r for r in (*done.get(str(f.path), []), *by_real.get(f.real_path, []))}
        rows = sorted(same_file.values(), key=lambda r: r["scanned_at"], reverse=True)  # type: ignore[arg-type, return-value]
        claimed.update(str(r["path"]) for r in rows)
        keep = None
        if resume and rows:
            newest = rows[0]
            same = (newest["size_bytes"] == f.size_bytes and newest["mtime_ns"] == f.mtime_ns
                    and newest["model_fingerprint"] == fingerprint
                    # a kill between rewriting a pair's seconds and its videos leaves a row without seconds
                    and newest["frames_scored"] == newest["seconds_held"]
                    and sampled_as_asked(newest, fps, mode))
            failed = newest["status"] == "error"
            # a file that could not be read at all (not mounted, permission) is tried again every run
            retry = failed and (retry_errors or newest["error_kind"] in RETRIED_ERROR_KINDS)
            # scanned through a link removed since: reels and highlights.json open rows by their path, so the
            # video is scanned again under this run's path (once) rather than kept under a dead one
            dead = str(newest["path"]) != str(f.path) and not os.path.exists(str(newest["path"]))
            if same and not retry and not dead:
                keep = newest
        (plan.skipped if keep is not None else plan.todo).append(f)
        if keep is not None:
            kept.add((str(keep["shard"]), str(keep["path"])))
        for row in rows:
            if row is not keep:
                plan.superseded.setdefault(str(row["shard"]), set()).add(str(row["path"]))
    if gone is not None:
        for path, rows in done.items():
            real = reals[path]  # a row kept under a link's path: gone when its file is
            recorded = {str(r.get("real_path") or real) for r in rows} - {path, real} if path in dead_paths else set()
            if path not in claimed and (gone(path) or (real != path and gone(real))
                                        or any(gone(r) for r in recorded)):
                plan.gone.append(path)
                for row in rows:
                    plan.superseded.setdefault(str(row["shard"]), set()).add(path)
    for shard, path in kept:  # one row two files reached: the one that keeps it wins (the other is rescanned)
        plan.superseded.get(shard, set()).discard(path)
    return plan


def _filter_file(path: Path, drop: set[str]) -> tuple[pa.Table, bool]:
    table = pq.read_table(path)
    mask = pc.invert(pc.is_in(table["path"], value_set=pa.array(sorted(drop), pa.string())))
    kept = table.filter(mask)
    return kept, kept.num_rows != table.num_rows


def drop_superseded(out_dir: Path, superseded: dict[str, set[str]], own_tag: str = "",
                    lock_timeout_s: float = 120.0) -> int:
    """Removes the rows of ``superseded`` paths from their shard pairs; returns video rows removed.

    A pair written under another tag (a plain run's, another --shard job's) may be rewritten by another
    job at the same time: its tag's lock is held while it is read and rewritten. A pair whose lock does
    not come free in ``lock_timeout_s`` keeps its old rows this time (the next run supersedes them).
    """
    removed = 0
    for name, paths in sorted(superseded.items()):
        tag = (parse_name(name) or ("", 0))[0]
        lock = TagLock(out_dir, tag) if tag != own_tag else None
        if lock is not None and not lock.acquire(timeout_s=lock_timeout_s):
            log.warning("shard pair %s is being written by another scan; its %d old rows are removed next run",
                        name, len(paths))
            continue
        try:
            removed += _drop_from_pair(out_dir, name, paths)
        finally:
            if lock is not None:
                lock.release()
    return removed


def _drop_from_pair(out_dir: Path, name: str, paths: set[str]) -> int:
    """Rewrites one pair without ``paths`` (read now, under its lock); returns video rows removed."""
    seconds_path, videos_path = out_dir / "seconds" / name, out_dir / "videos" / name
    if not videos_path.exists():  # another job retired the pair meanwhile
        return 0
    seconds, changed_s = _filter_file(seconds_path, paths)
    videos, changed_v = _filter_file(videos_path, paths)
    if videos.num_rows == 0:  # nothing left: retire the pair, its commit marker (videos) first
        os.unlink(videos_path)
        os.unlink(seconds_path)
        log.info("removed shard pair %s (all its videos are rescanned)", name)
        return len(paths)
    # both written before either is renamed (a full disk leaves the pair as it was), seconds first
    write_parquets_atomic([(path, table) for path, table, changed in ((seconds_path, seconds, changed_s),
                                                                      (videos_path, videos, changed_v)) if changed])
    log.info("rewrote shard pair %s without %d superseded videos", name, len(paths))
    return len(paths) if changed_v else 0
