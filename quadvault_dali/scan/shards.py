"""Shard pairs on disk: atomic writing, listing the complete ones, cleaning up what a crash left.

A pair ``seconds/NAME`` + ``videos/NAME`` is written seconds first, videos last, each to a hidden
temporary name renamed into place. So a reader (or a resumed scan) trusts exactly the pairs whose
videos file exists; a seconds file without its videos partner is the remains of a crash.

Names are ``part-[TAG-]NNNNN.parquet``. Every writer has its own TAG (``s01of04`` for ``--shard 1/4``,
``g2`` for the worker on GPU 2, both joined for both), so machines and GPU workers writing into one
folder never clash. A lock file per tag keeps two writers from using the same tag at once.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .._files import DISK_FULL_ERRNOS, FolderLock, fsync_dir
from ..errors import OutputError
from .aggregate import VideoRows
from .schema import SCHEMAS, ScanMetadata, schema_with_metadata

log = logging.getLogger(__name__)
T = TypeVar("T")

NAME_RE = re.compile(r"^part-(?:(?P<tag>[a-z0-9]+(?:-[a-z0-9]+)*)-)?(?P<seq>\d{5,})\.parquet$")
TMP_PREFIX = ".tmp-"


def shard_tag(shard: tuple[int, int]) -> str:
    """The tag in the shard names of part i of n of a library (``--shard i/n``): none for the whole library."""
    i, n = shard
    return f"s{i:02d}of{n:02d}" if n > 1 else ""


def in_job(shard_tag: str, tag: str) -> bool:
    """Whether pairs tagged ``shard_tag`` are one job's: its own tag (``--shard`` i/n, or none) or one of its GPU
    workers' (``--gpus``: ``TAG-gN``, or ``gN``); never a sibling ``--shard`` job's."""
    workers = f"{tag}-g" if tag else "g"
    return shard_tag == tag or (shard_tag.startswith(workers) and shard_tag[len(workers):].isdigit())


def shard_name(tag: str, seq: int) -> str:
    return f"part-{tag + '-' if tag else ''}{seq:05d}.parquet"


def parse_name(name: str) -> tuple[str, int] | None:
    """``(tag, seq)`` for a shard file name, ``None`` for anything else."""
    m = NAME_RE.match(name)
    return (m.group("tag") or "", int(m.group("seq"))) if m else None


def complete_shards(out_dir: Path) -> list[str]:
    """Names of the complete pairs (videos file present, seconds partner present), sorted."""
    videos, seconds = out_dir / "videos", out_dir / "seconds"
    if not videos.is_dir():
        return []
    return sorted(n for n in os.listdir(videos) if parse_name(n) and (seconds / n).is_file())


class DamagedShardError(OutputError):
    """A complete shard file that cannot be read (a disk error, a file truncated behind the scan's back)."""


#: Where a scan moves shard pairs it cannot read, so that their videos are scanned again.
DAMAGED_FOLDER = "damaged"


def read_shard(path: Path, columns: list[str] | None = None) -> pa.Table | None:
    """One shard file, checked to be the scan table its folder names (``seconds/``, ``videos/``) in a version
    this one reads; ``None`` when the file is gone (another job retired its pair between listing and
    reading: readers take no lock). Columns a later minor version added (asked for, or all of them when
    ``columns`` is ``None``) are presented as nulls.

    Raises ``DamagedShardError`` for an unreadable file and ``OutputError`` for another version or table.
    """
    try:
        with pq.ParquetFile(path) as shard:  # one open for the footer and the data
            schema = shard.schema_arrow
            present = [c for c in columns if c in schema.names] if columns is not None else None
            table = shard.read(columns=present)
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException) as exc:
        raise DamagedShardError(f"unreadable shard file ({' '.join(str(exc).split())})", path=path,
                                hint="a resumed scan moves the pair aside and scans its videos again") from exc
    try:
        meta = ScanMetadata.from_kv(schema.metadata, source=path)
    except ValueError as exc:
        raise OutputError(str(exc)) from None
    expected = path.parent.name
    if expected in SCHEMAS and meta.table != expected:
        raise OutputError(f"expected a {expected!r} table, found {meta.table!r}", path=path)
    full = SCHEMAS[meta.table]
    for name in columns if columns is not None else full.names:
        if name not in table.column_names:
            table = table.append_column(full.field(name), pa.nulls(len(table), full.field(name).type))
    return table


def with_videos_of(seconds: pa.Table, videos: pa.Table) -> tuple[pa.Table, bool]:
    """``seconds`` without rows whose video has no row in ``videos``, and whether any went: a pair's seconds belong
    to its videos (a kill between rewriting a pair's two files could leave seconds whose video row says otherwise)."""
    kept = seconds.filter(pc.is_in(seconds["path"], value_set=videos["path"].combine_chunks()))
    return kept, kept.num_rows != seconds.num_rows


def retire_pair(out_dir: Path, name: str) -> None:
    """Deletes a pair, its commit marker (the videos file) first: a pair retired halfway is incomplete, and the
    seconds file left is removed by ``cleanup_partial``."""
    os.unlink(out_dir / "videos" / name)
    os.unlink(out_dir / "seconds" / name)


def model_names(out_dir: Path) -> dict[str, str]:
    """model fingerprint -> the model names (``a+b`` for an ensemble) the shards that wrote it record, read from
    the shards' footers only: messages name a model as users do, not by its fingerprint."""
    names: dict[str, str] = {}
    for name in complete_shards(out_dir):
        try:
            meta = ScanMetadata.from_kv(pq.read_schema(out_dir / "videos" / name).metadata, source=name)
        except (OSError, ValueError, pa.ArrowException):  # gone meanwhile, damaged or not ours: the readers say so
            continue
        if meta.models:
            names.setdefault(meta.model_fingerprint, "+".join(m.name for m in meta.models))
    return names


def folder_threshold(out_dir: Path, shards: set[str]) -> float | None:
    """The highlight threshold the scans that wrote ``shards`` used (the highest where they differ), from their
    footers; ``None`` when none records one."""
    found = []
    for name in shards:
        try:
            threshold = ScanMetadata.from_kv(pq.read_schema(out_dir / "videos" / name).metadata, source=name).threshold
        except (OSError, ValueError, pa.ArrowException):
            continue
        if threshold == threshold and 0.0 <= threshold <= 1.0:  # NaN: not recorded
            found.append(threshold)
    return max(found) if found else None


def describe_models(counts: dict[str, int], names: dict[str, str]) -> str:
    """``v1 (10bf82c4…): 15 videos, 3a9e… : 2 videos`` for model fingerprint -> count, most first."""
    return ", ".join(f"{names[fp] + ' (' + fp[:8] + '…)' if fp in names else fp}: {n} video{'s' if n != 1 else ''}"
                     for fp, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def chosen_seconds(out_dir: Path, chosen: list[tuple[str, dict[str, Any]]],
                   columns: list[str]) -> Iterator[tuple[str, pa.Table]]:
    """``(shard name, seconds rows)`` of the ``(shard name, videos row)`` pairs in ``chosen``: each row's
    seconds from its own shard only (the same video id may be in another shard, scanned with other models). A
    damaged seconds shard is skipped with a warning, as a damaged videos shard is by ``latest_video_rows``: its
    videos have no seconds here (a reel leaves them out, the report keeps their stored fractions), and the next
    scan moves the pair aside and scans them again."""
    wanted: dict[str, set[str]] = {}
    for name, row in chosen:
        wanted.setdefault(name, set()).add(row["video_id"])
    for name, ids in wanted.items():
        try:
            table = read_shard(out_dir / "seconds" / name, columns=sorted(set(columns) | {"video_id"}))
        except DamagedShardError as exc:
            log.warning("skipping %s: the per-second scores of its %d video(s) are not read (a scan of the folder "
                        "moves the pair aside and scans them again)", exc, len(ids))
            continue
        if table is None:
            raise PairVanished(name)
        yield name, table.filter(pc.is_in(table["video_id"], value_set=pa.array(sorted(ids), pa.string())))


def quarantine_pair(out_dir: Path, name: str, why: Exception) -> None:
    """Moves an unreadable pair to ``OUT/damaged/`` (kept for inspection, out of every reader's way)."""
    target = out_dir / DAMAGED_FOLDER
    target.mkdir(exist_ok=True)
    for table in ("videos", "seconds"):  # the commit marker first, as when retiring a pair
        source = out_dir / table / name
        if source.exists():
            os.replace(source, target / f"{table}-{name}")
    log.warning("%s; moved shard pair %s to %s, its videos are scanned again", why, name, target)


def read_table(out_dir: Path, table: str, names: list[str] | None = None,
               columns: list[str] | None = None) -> pa.Table:
    """One table (``seconds`` or ``videos``) over the complete shards, as one Arrow table."""
    names = complete_shards(out_dir) if names is None else names
    parts = [t for t in (read_shard(out_dir / table / n, columns=columns) for n in names) if t is not None]
    if not parts:
        schema = SCHEMAS[table]
        return schema.empty_table() if columns is None else pa.schema([schema.field(c) for c in columns]).empty_table()
    return pa.concat_tables([p.replace_schema_metadata(None) for p in parts], promote_options="default")


class PairVanished(Exception):
    """A pair listed a moment ago is gone: a scan retired it, or merged it into another (readers take no lock)."""


def read_settled(read: Callable[[], T], attempts: int = 5) -> T:
    """``read()`` again when a shard pair it listed went while it read (``PairVanished``): a reel or a report read
    while a scan merged its pairs missed the videos of the pairs merged away (a reviewer's find)."""
    for attempt in range(1, attempts + 1):
        try:
            return read()
        except PairVanished as exc:
            log.debug("shard pair %s went while it was read; reading the folder again", exc)
            if attempt == attempts:
                raise OutputError("the scan folder kept changing while it was read (a scan is rewriting or merging "
                                  "its shards)", hint="try again once the scan has finished") from None
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def latest_video_rows(out_dir: Path, columns: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(shard name, row)`` of the newest ``videos`` row of each path over the complete shards.

    A resumed scan removes the rows it supersedes, but a path can still be in two shards (an old shard
    whose lock was busy at the time, two jobs over overlapping folders, a file changed between scans);
    readers that present one answer per video (the report, the reel) take the newest by ``scanned_at``,
    then by shard name.
    """
    wanted = None if columns is None else sorted(set(columns) | {"path", "scanned_at"})
    latest: dict[str, tuple[Any, str, dict[str, Any]]] = {}
    for name in complete_shards(out_dir):
        try:
            table = read_shard(out_dir / "videos" / name, columns=wanted)
        except DamagedShardError as exc:
            log.warning("skipping %s", exc)
            continue
        if table is None:
            raise PairVanished(name)
        for row in table.to_pylist():
            key = (row["scanned_at"], name)
            prior = latest.get(row["path"])
            if prior is None or key >= prior[:2]:
                latest[row["path"]] = (row["scanned_at"], name, row)
    return [(name, row) for _, name, row in sorted(latest.values(), key=lambda v: v[2]["path"])]


def read_metadata(path: Path) -> ScanMetadata:
    return ScanMetadata.from_kv(pq.read_schema(path).metadata, source=path)


def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    """Writes ``table`` to a hidden temp file next to ``path``, fsyncs it, renames it into place."""
    write_parquets_atomic([(path, table)])


def write_parquets_atomic(files: list[tuple[Path, pa.Table]]) -> None:
    """Writes every table to a hidden temp file beside its path, fsynced, before renaming any into place, in the
    order given: a full disk stops before a shard pair changes, never between its two files (rewriting a pair
    on resume, the seconds file was replaced and the videos file not, leaving an ``ok`` row without its
    seconds until the next run). A crash between the renames is what resume's seconds count catches."""
    if not files:
        return
    temps: list[Path] = []
    path = files[0][0]
    try:
        for path, table in files:
            tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
            temps.append(tmp)
            pq.write_table(table, tmp, compression="zstd")
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for (path, _), tmp in zip(files, temps):
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise output_error(exc, path) from exc
        raise
    for folder in dict.fromkeys(p.parent for p, _ in files):
        fsync_dir(folder)


def output_error(exc: OSError, path: Path) -> OutputError:
    """The scan's one wording for a file it cannot write in OUT (full disk, read-only, permission)."""
    reason = f"cannot write scan results: {exc.strerror or exc}"
    if exc.errno in DISK_FULL_ERRNOS:
        return OutputError(reason, path=path, hint="free space on the output disk (or use another --out); "
                                                   "complete shards are kept and the same command resumes")
    if exc.errno == errno.EROFS:
        return OutputError(reason, path=path, hint="the output disk is mounted read-only; remount it or use "
                                                   "another --out (the same command resumes)")
    if exc.errno == errno.EIO:
        return OutputError(reason, path=path, hint="the output disk reports I/O errors; check it, or use "
                                                   "another --out (complete shards are kept)")
    return OutputError(reason, path=path, hint="check that --out is writable")


class TagLock(FolderLock):
    """An exclusive ``flock`` on ``DIR/.lock-TAG``: one writer per tag; released when the process dies."""

    def __init__(self, out_dir: Path, tag: str) -> None:
        super().__init__(out_dir / f".lock-{tag or 'main'}")

    def acquire(self, *, wait: bool = False, timeout_s: float | None = None) -> bool:
        """Takes the lock; ``wait`` blocks until it is free, ``timeout_s`` gives up after that long."""
        try:
            return super().acquire(wait=wait, timeout_s=timeout_s)
        except OSError as exc:
            raise output_error(exc, self.path) from exc


class LayoutLock:
    """Jobs writing into one folder must split the library the same way (``--shard i/n`` with one ``n``):
    with another ``n`` the same video falls in two jobs' parts and is scanned twice at once. Each job holds
    a shared ``flock`` on ``DIR/.layout-n{n}``; a job finding another ``n``'s file held refuses to start."""

    def __init__(self, out_dir: Path, parts: int) -> None:
        self.out_dir, self.parts = out_dir, parts
        self._fd: int | None = None

    def acquire(self) -> int | None:
        """Takes the lock; returns the ``n`` of a running job that splits the library otherwise (lock not held)."""
        path = self.out_dir / f".layout-n{self.parts}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise output_error(exc, path) from exc
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._fd = fd
        for other in sorted(self.out_dir.glob(".layout-n*")):
            parts = other.name.removeprefix(".layout-n")
            if not parts.isdigit() or int(parts) == self.parts:
                continue
            probe = os.open(other, os.O_RDWR)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: nobody runs with that n
            except BlockingIOError:
                self.release()
                return int(parts)
            finally:
                os.close(probe)
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def cleanup_partial(out_dir: Path, own_tag: str) -> list[Path]:
    """Deletes temp files and orphan seconds files of every tag whose writer is not running."""
    removed: list[Path] = []
    seconds, videos = out_dir / "seconds", out_dir / "videos"
    by_tag: dict[str, list[Path]] = {}
    for folder in (seconds, videos):
        if not folder.is_dir():
            continue
        for name in os.listdir(folder):
            stem = name[len(TMP_PREFIX):].rsplit(".", 1)[0] if name.startswith(TMP_PREFIX) else None
            parsed = parse_name(stem if stem is not None else name)
            orphan = folder == seconds and parsed and stem is None and not (videos / name).exists()
            if parsed and (stem is not None or orphan):
                by_tag.setdefault(parsed[0], []).append(folder / name)
    for tag, paths in by_tag.items():
        lock = None
        if tag != own_tag:
            lock = TagLock(out_dir, tag)
            if not lock.acquire():
                log.info("leaving partial shards of %r alone: its writer is running", tag)
                continue
        try:
            for p in paths:
                p.unlink(missing_ok=True)
                removed.append(p)
                log.info("discarded incomplete shard file %s", p)
        finally:
            if lock is not None:
                lock.release()
    return removed


class ShardWriter:
    """Buffers finished videos and writes them as shard pairs every ``max_videos`` or ``max_seconds``."""

    def __init__(self, out_dir: Path, *, tag: str, seconds_meta: ScanMetadata, videos_meta: ScanMetadata,
                 max_videos: int = 500, max_seconds: float = 120.0) -> None:
        self.out_dir = out_dir
        self.tag = tag
        self.max_videos = max(1, max_videos)
        self.max_seconds = max_seconds
        self._schemas = {"seconds": schema_with_metadata(seconds_meta), "videos": schema_with_metadata(videos_meta)}
        for sub in ("seconds", "videos"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
        self._seq = self._next_seq()
        self._rows: list[VideoRows] = []
        self._since: float | None = None
        self.written: list[str] = []

    def _next_seq(self) -> int:
        seqs = [p[1] for sub in ("seconds", "videos") for n in os.listdir(self.out_dir / sub)
                if (p := parse_name(n)) and p[0] == self.tag]
        return max(seqs, default=-1) + 1

    def add(self, rows: VideoRows) -> str | None:
        """Buffers one video; returns the shard name when this add completed a shard."""
        if self._since is None:
            self._since = time.monotonic()
        self._rows.append(rows)
        return self.tick()

    def tick(self) -> str | None:
        """Writes the buffer if it is full or old enough; call it often (e.g. every batch)."""
        if not self._rows or self._since is None:
            return None
        if len(self._rows) >= self.max_videos or time.monotonic() - self._since >= self.max_seconds:
            return self.flush()
        return None

    def flush(self) -> str | None:
        if not self._rows:
            return None
        name = shard_name(self.tag, self._seq)
        tables = {t: self._table(t) for t in ("seconds", "videos")}
        # the videos file last: it commits the pair (a crash between the renames leaves seconds no row claims)
        write_parquets_atomic([(self.out_dir / "seconds" / name, tables["seconds"]),
                               (self.out_dir / "videos" / name, tables["videos"])])
        self._seq += 1
        self._rows.clear()
        self._since = None
        self.written.append(name)
        log.debug("wrote shard %s (%d videos)", name, tables["videos"].num_rows)
        return name

    def _table(self, table: str) -> pa.Table:
        schema = self._schemas[table]
        columns: dict[str, list[Any]] = {f.name: [] for f in schema}
        for rows in self._rows:
            if table == "seconds":
                for key, values in rows.seconds.items():
                    columns[key].extend(values)
            else:
                for key in columns:
                    columns[key].append(rows.video[key])
        return pa.Table.from_pydict(columns, schema=schema)

    @property
    def buffered(self) -> int:
        return len(self._rows)

