"""Resume: which videos the complete shards already hold, and retiring rows a rescan supersedes.

The invariant kept here: among the complete shards of a scan folder, each path appears at most once.
A video is skipped when a complete shard holds it with the same path, size, mtime and model
fingerprint, sampled at the same ``--fps`` (and in exact mode when exact is asked for), unless its row
is an error the file could not even be read for (``FileAccessError``). When it must be scanned again (the file changed, other models, ``--no-resume``,
``--retry-errors``) its old rows are removed from their shard pair *before* the rescan, by rewriting
the pair atomically (seconds first, videos last, the same order as writing). Readers therefore never
need to deduplicate. A file found under a new path (a remounted or moved library) whose old path is gone
takes its old rows along instead of being scanned again (``_moved``, ``relocate_rows``), and a pair that
is rewritten drops seconds rows left without their video row.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..probe import read_color_transfer
from ..sampling._colour import is_hdr
from .schema import video_id
from .shards import (DamagedShardError, TagLock, complete_shards, parse_name, quarantine_pair, read_shard,
                     retire_pair, with_videos_of, write_parquets_atomic)

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    #: paths with rows, in this run's library, that do not exist but were not retired: under an empty or
    #: unreadable folder (an unmounted disk's mount point, or a folder whose clips were all deleted)
    kept_missing: list[str] = field(default_factory=list)
    #: shard -> paths of rows kept under an older fingerprint of these models (``nvdec_fingerprints``), which
    #: get the current one
    refingerprinted: dict[str, set[str]] = field(default_factory=dict)
    #: shard -> {old path: the file now}: rows of a file that moved (a library remounted under another name, a
    #: folder moved), kept and given the new path instead of scanning the file again beside its old rows
    relocated: dict[str, dict[str, FileState]] = field(default_factory=dict)
    #: model fingerprint -> how many of this run's unchanged files have their newest row from that other model
    #: (not an older version of these): a scan retires those rows to score the files again
    other_models: dict[str, int] = field(default_factory=dict)
    #: shard -> {row path: the file now}: the newest rows of unchanged files by another model set, sampled as this
    #: run asks, whose stored per-model scores may include every model of this run (``scan.rescore``)
    other_rows: dict[str, dict[str, FileState]] = field(default_factory=dict)

    @property
    def superseded_count(self) -> int:
        return sum(len(v) for v in self.superseded.values())


def _done_index(out_dir: Path, orphans: set[str] | None = None) -> dict[str, list[dict[str, object]]]:
    """path -> the video rows of it found in complete shards (newest first), each with its shard name and
    how many seconds rows its pair really holds for it. ``orphans`` gets the pairs whose seconds hold rows of
    videos their videos file does not list (a kill between a rewrite's or a merge's two renames)."""
    found: dict[str, list[dict[str, object]]] = {}
    cols = ["path", "real_path", "size_bytes", "mtime_ns", "model_fingerprint", "status", "error_kind",
            "scanned_at", "frames_scored", "sampling_mode", "sampling_fps", "decoder", "color_transfer"]
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
        if orphans is not None and set(held) - set(videos_table.column("path").to_pylist()):
            orphans.add(name)
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


def _moved(files: list[FileState], dead: dict[str, list[dict[str, object]]]) -> dict[FileState, str]:
    """Which rows under paths that no longer exist are files of ``files`` found elsewhere: the same name, size
    and modification time (to the nanosecond; a remount, ``mv``, ``cp -p`` and ``rsync -a`` keep it). Where
    several rows fit a file, the one whose path ends like the file's in the most folders; a tie is no match
    (scanned again rather than guessed), and each row goes to one file at most."""
    by_key: dict[tuple[str, int, int], list[str]] = {}
    for path, rows in dead.items():
        row = rows[0]
        by_key.setdefault((Path(path).name, int(row["size_bytes"]), int(row["mtime_ns"])),  # type: ignore[call-overload]
                          []).append(path)
    offers: list[tuple[int, str, FileState, str]] = []  # (shared tail, file path, file, row path)
    for f in files:
        candidates = by_key.get((f.path.name, f.size_bytes, f.mtime_ns), [])
        tails = sorted(((_shared_tail(f.path, Path(c)), c) for c in candidates), reverse=True)
        if tails and (len(tails) == 1 or tails[0][0] > tails[1][0]):
            offers.append((tails[0][0], str(f.path), f, tails[0][1]))
    matched: dict[FileState, str] = {}
    taken: set[str] = set()
    for _, _, f, path in sorted(offers, key=lambda o: (-o[0], o[1])):  # the best fitting file takes a row first
        if path not in taken:
            taken.add(path)
            matched[f] = path
    return matched


def _shared_tail(a: Path, b: Path) -> int:
    """How many trailing path components ``a`` and ``b`` share (1 = the file name only)."""
    n = 0
    for x, y in zip(reversed(a.parts), reversed(b.parts)):
        if x != y:
            break
        n += 1
    return n


def plan_resume(files: list[FileState], out_dir: Path, *, fingerprint: str, fps: float = 1.0, mode: str = "auto",
                resume: bool = True, retry_errors: bool = False,
                gone: Callable[[str], bool] | None = None,
                within: Callable[[str], bool] | None = None,
                nvdec_fingerprints: frozenset[str] = frozenset(),
                sdr_fingerprints: frozenset[str] = frozenset(),
                older_fingerprints: frozenset[str] = frozenset()) -> ResumePlan:
    """Splits ``files`` into done and to-do against the complete shards in ``out_dir``.

    ``gone(path)`` says whether a path with rows but not among ``files`` has left this run's part of the
    library (deleted or moved); its rows are then retired, so totals and highlights list what exists.
    ``within(path)``: whether a path is in this run's library, for ``kept_missing``. ``nvdec_fingerprints``:
    older fingerprints of these models that still hold for rows decoded on NVDEC (``refingerprinted``), and
    ``sdr_fingerprints`` those that still hold for rows of SDR videos; either only where the row's
    ``color_transfer`` (read from the file for rows before schema 1.6) is not HDR: every version since 3
    tone-maps HDR frames.
    ``older_fingerprints``: these models' fingerprints under every older scoring version, whose rows are
    rescanned but are not another model's (``other_models``).
    """
    orphans: set[str] = set()
    done = _done_index(out_dir, orphans)
    # the same file reached by another path (the library through a symlink, or its target): scanning through
    # the other path rescanned every video and listed each twice. A row is known by its path resolved now (a
    # link made since); only once that path is gone (the link it was scanned through removed) by the real path
    # it recorded, which a link re-pointed since would otherwise give to another file.
    found_now = {str(f.path): f.real_path for f in files}  # resolved by discovery a moment ago: 18 stats a file
    reals = {path: found_now.get(path) or os.path.realpath(path) for path in done}
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
    for name in orphans:  # rewritten with the seconds of its own videos only (``_drop_from_pair`` of no path)
        plan.superseded.setdefault(name, set())

    def count_other_model(row: dict[str, object], f: FileState) -> bool:
        fp = str(row["model_fingerprint"])  # an error row (a broken file) is no model's result
        if row["status"] == "ok" and row["size_bytes"] == f.size_bytes and row["mtime_ns"] == f.mtime_ns \
                and fp != fingerprint and fp not in nvdec_fingerprints and fp not in older_fingerprints:
            plan.other_models[fp] = plan.other_models.get(fp, 0) + 1
            return True
        return False

    def same_scoring(row: dict[str, object], f: FileState) -> bool:
        fp = row["model_fingerprint"]
        if fp == fingerprint:
            return True
        if fp not in sdr_fingerprints and not (fp in nvdec_fingerprints and row.get("decoder") == "nvdec"):
            return False
        transfer = row.get("color_transfer")
        if transfer is None:  # a row from before schema 1.6 (its shard is upgraded after this plan): the file
            # is the one scanned (same size and mtime), so its transfer is read from it, once (1-2 ms)
            transfer = row["color_transfer"] = read_color_transfer(f.path)
        return isinstance(transfer, str) and not is_hdr(transfer)

    def row_complete(row: dict[str, object]) -> bool:
        # a kill between rewriting a pair's seconds and its videos leaves a row without seconds
        return row["frames_scored"] == row["seconds_held"]

    def still_good(row: dict[str, object], f: FileState) -> bool:
        same = (row["size_bytes"] == f.size_bytes and row["mtime_ns"] == f.mtime_ns
                and same_scoring(row, f) and row_complete(row) and sampled_as_asked(row, fps, mode))
        failed = row["status"] == "error"
        # a file that could not be read at all (not mounted, permission) is tried again every run
        retry = failed and (retry_errors or row["error_kind"] in RETRIED_ERROR_KINDS)
        return same and not retry

    unmatched: list[FileState] = []
    for f in files:
        same_file = {id(r): r for r in (*done.get(str(f.path), []), *by_real.get(f.real_path, []))}
        rows = sorted(same_file.values(), key=lambda r: r["scanned_at"], reverse=True)  # type: ignore[arg-type, return-value]
        claimed.update(str(r["path"]) for r in rows)
        if rows and count_other_model(rows[0], f) and resume and row_complete(rows[0]) \
                and sampled_as_asked(rows[0], fps, mode) and rows[0]["path"] == str(f.path):
            plan.other_rows.setdefault(str(rows[0]["shard"]), {})[str(rows[0]["path"])] = f
        keep = None
        if resume and rows and still_good(rows[0], f):
            keep = rows[0]
            # scanned through a link removed since: reels and highlights.json open rows by their path, so the
            # row moves to this run's path rather than staying under a dead one
            if str(keep["path"]) != str(f.path) and not os.path.exists(str(keep["path"])):
                plan.relocated.setdefault(str(keep["shard"]), {})[str(keep["path"])] = f
        (plan.skipped if keep is not None else plan.todo).append(f)
        if not rows:
            unmatched.append(f)
        if keep is not None:
            kept.add((str(keep["shard"]), str(keep["path"])))
            if keep["model_fingerprint"] != fingerprint:  # an older fingerprint that still holds: made current
                plan.refingerprinted.setdefault(str(keep["shard"]), set()).add(str(keep["path"]))
        for row in rows:
            if row is not keep:
                plan.superseded.setdefault(str(row["shard"]), set()).add(str(row["path"]))
    moved_here: set[FileState] = set()
    for f, path in _moved(unmatched, {p: done[p] for p in dead_paths - claimed}).items():
        claimed.add(path)  # moved, not gone: never retired below
        newest = done[path][0]
        count_other_model(newest, f)
        if resume and still_good(newest, f):
            plan.relocated.setdefault(str(newest["shard"]), {})[path] = f
            moved_here.add(f)
        for row in done[path]:
            if not (f in moved_here and row is newest):
                plan.superseded.setdefault(str(row["shard"]), set()).add(path)
    if moved_here:
        plan.todo = [f for f in plan.todo if f not in moved_here]
        plan.skipped.extend(sorted(moved_here, key=lambda f: str(f.path)))
    if gone is not None:
        for path, rows in done.items():
            real = reals[path]  # a row kept under a link's path: gone when its file is
            recorded = {str(r.get("real_path") or real) for r in rows} - {path, real} if path in dead_paths else set()
            if path not in claimed and (gone(path) or (real != path and gone(real))
                                        or any(gone(r) for r in recorded)):
                plan.gone.append(path)
                for row in rows:
                    plan.superseded.setdefault(str(row["shard"]), set()).add(path)
    if within is not None:
        retired = set(plan.gone)
        plan.kept_missing = sorted(p for p in dead_paths - claimed - retired if within(p))
    for shard, path in kept:  # one row two files reached: the one that keeps it wins (the other is rescanned)
        plan.superseded.get(shard, set()).discard(path)
    return plan


def _filter_file(path: Path, drop: set[str]) -> tuple[pa.Table, bool]:
    table = pq.read_table(path)
    mask = pc.invert(pc.is_in(table["path"], value_set=pa.array(sorted(drop), pa.string())))
    kept = table.filter(mask)
    return kept, kept.num_rows != table.num_rows


def _each_pair_locked(out_dir: Path, work: dict[str, T], own_tag: str, lock_timeout_s: float,
                      rewrite: Callable[[Path, str, T], int], what: str) -> int:
    """Runs ``rewrite(out_dir, pair name, its work)`` for each pair, holding the lock of the tag that wrote it
    when another job's (a plain run's, another --shard job's) may rewrite it at the same time; a pair whose
    lock does not come free in ``lock_timeout_s`` is left for the next run."""
    done = 0
    for name, item in sorted(work.items()):
        tag = (parse_name(name) or ("", 0))[0]
        lock = TagLock(out_dir, tag) if tag != own_tag else None
        if lock is not None and not lock.acquire(timeout_s=lock_timeout_s):
            log.warning("shard pair %s is being written by another scan; its %s next run", name, what)
            continue
        try:
            done += rewrite(out_dir, name, item)
        finally:
            if lock is not None:
                lock.release()
    return done


def drop_superseded(out_dir: Path, superseded: dict[str, set[str]], own_tag: str = "",
                    lock_timeout_s: float = 120.0) -> int:
    """Removes the rows of ``superseded`` paths from their shard pairs; returns video rows removed."""
    return _each_pair_locked(out_dir, superseded, own_tag, lock_timeout_s, _drop_from_pair,
                             "old rows are removed")


def relocate_rows(out_dir: Path, relocated: dict[str, dict[str, FileState]], own_tag: str = "",
                  lock_timeout_s: float = 120.0) -> list[FileState]:
    """Gives the rows of moved files (``ResumePlan.relocated``) their new paths; returns the files whose rows
    moved. The others (their pair busy, or rewritten meanwhile by a --shard job that retired the row) have no
    row now: the caller scans them."""
    moved: list[FileState] = []

    def relocate(out: Path, name: str, moves: dict[str, FileState]) -> int:
        done = _relocate_in_pair(out, name, moves)
        moved.extend(moves[path] for path in done)
        return len(done)

    _each_pair_locked(out_dir, relocated, own_tag, lock_timeout_s, relocate, "moved videos get their new paths")
    return moved


def refingerprint_rows(out_dir: Path, refingerprinted: dict[str, set[str]], fingerprint: str, own_tag: str = "",
                       lock_timeout_s: float = 120.0) -> int:
    """Gives rows kept under an older fingerprint of the same models (``ResumePlan.refingerprinted``) the current
    one, so totals, highlights.json and the next resume see one scoring; returns video rows changed."""

    def rewrite(out: Path, name: str, paths: set[str]) -> int:
        videos_path = out / "videos" / name
        if not videos_path.exists():
            return 0
        videos = pq.read_table(videos_path)
        old = videos["model_fingerprint"].to_pylist()
        mine = [p in paths for p in videos["path"].to_pylist()]
        if not any(mine):
            return 0
        i = videos.schema.get_field_index("model_fingerprint")
        values = pa.array([fingerprint if m else f for m, f in zip(mine, old)], videos.schema.field(i).type)
        write_parquets_atomic([(videos_path, videos.set_column(i, videos.schema.field(i), values))])
        return sum(mine)

    return _each_pair_locked(out_dir, refingerprinted, own_tag, lock_timeout_s, rewrite,
                             "rows get the current fingerprint")


def _drop_from_pair(out_dir: Path, name: str, paths: set[str]) -> int:
    """Rewrites one pair without ``paths`` (read now, under its lock); returns video rows removed."""
    seconds_path, videos_path = out_dir / "seconds" / name, out_dir / "videos" / name
    if not videos_path.exists():  # another job retired the pair meanwhile
        return 0
    videos, changed_v = _filter_file(videos_path, paths)
    if videos.num_rows == 0:  # nothing left: retire the pair
        retire_pair(out_dir, name)
        log.info("removed shard pair %s (every row it held is retired)", name)
        return len(paths)
    seconds, changed_s = with_videos_of(pq.read_table(seconds_path), videos)
    # both written before either is renamed (a full disk leaves the pair as it was), seconds first
    write_parquets_atomic([(path, table) for path, table, changed in ((seconds_path, seconds, changed_s),
                                                                      (videos_path, videos, changed_v)) if changed])
    if paths:
        log.info("rewrote shard pair %s without the rows of %d videos (changed, deleted or to be scored again)", name,
                 len(paths))
    else:
        log.info("rewrote shard pair %s without per-second rows of videos it does not list (left by a kill between "
                 "a rewrite's two renames)", name)
    return len(paths) if changed_v else 0


def _relocate_in_pair(out_dir: Path, name: str, moves: dict[str, FileState]) -> set[str]:
    """Rewrites one pair with the moved files' new paths; returns the old paths whose rows it held."""
    seconds_path, videos_path = out_dir / "seconds" / name, out_dir / "videos" / name
    if not videos_path.exists():  # another job retired the pair meanwhile: the files are scanned instead
        return set()
    old_videos = pq.read_table(videos_path)
    held = set(old_videos["path"].to_pylist()) & set(moves)
    if not held:
        return set()
    videos = _moved_rows(old_videos, moves)
    seconds, _ = with_videos_of(_moved_rows(pq.read_table(seconds_path), moves), videos)
    write_parquets_atomic([(seconds_path, seconds), (videos_path, videos)])  # seconds first, as ever
    log.info("shard pair %s: %d moved videos now under their new paths", name, len(held))
    return held


def _moved_rows(table: pa.Table, moves: dict[str, FileState]) -> pa.Table:
    """``table`` with the moved files' rows under their new paths: the path, the id made from it (``video_id``),
    the resolved path and the error message that names it."""
    old = table["path"].to_pylist()
    new = {p: str(f.path) for p, f in moves.items()}
    ids = {p: video_id(new[p], f.size_bytes, f.mtime_ns) for p, f in moves.items()}  # once per video, not row
    values: dict[str, list[object]] = {
        "path": [new.get(p, p) for p in old],
        "video_id": [ids.get(p, v) for p, v in zip(old, table["video_id"].to_pylist())]}
    if "real_path" in table.column_names:
        values["real_path"] = [moves[p].real_path if p in moves else r
                               for p, r in zip(old, table["real_path"].to_pylist())]
    if "error_message" in table.column_names:
        values["error_message"] = [m.replace(p, new[p]) if p in moves and m else m
                                   for p, m in zip(old, table["error_message"].to_pylist())]
    for column, column_values in values.items():
        i = table.schema.get_field_index(column)
        table = table.set_column(i, table.schema.field(i), pa.array(column_values, table.schema.field(i).type))
    return table
