"""Shards of an older minor schema version rewritten with the current columns, so a folder has one schema.

A scan folder outlives versions of this tool: a resumed scan keeps the shards of earlier runs and adds
shards with the columns its version added (``schema.SCHEMA_VERSION``'s history). DuckDB's ``read_parquet``,
``pyarrow.dataset`` and pandas take the schema of the first file unless told otherwise, so the newer
columns of later shards silently vanished from every query (checked with DuckDB 2.0.1 and pyarrow). Each
scan therefore rewrites the complete shards of an older 1.x version with the current columns (null where
the old version had none) before it adds its own. A file is replaced atomically, under its tag's lock
when another job wrote it; shards of a newer minor version are left alone, never downgraded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import SCHEMA_VERSION, SCHEMAS, ScanMetadata, schema_with_metadata
from .shards import DamagedShardError, TagLock, complete_shards, parse_name, read_shard, write_parquet_atomic

log = logging.getLogger(__name__)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def _needs_upgrade(path: Path, table: str) -> ScanMetadata | None:
    """The file's metadata when it is an older minor version (or lacks current columns); else ``None``."""
    try:
        schema = pq.read_schema(path)
        meta = ScanMetadata.from_kv(schema.metadata, source=path)
    except (OSError, ValueError, pa.ArrowException):  # damaged, foreign or another major version: not ours to fix
        return None
    if _version(meta.schema_version) > _version(SCHEMA_VERSION):
        return None
    if meta.schema_version == SCHEMA_VERSION and schema.names == SCHEMAS[table].names:
        return None
    return meta


def _upgrade_file(path: Path, table: str, meta: ScanMetadata) -> bool:
    data = read_shard(path)  # the columns it lacks come as nulls
    if data is None:  # retired by another job meanwhile
        return False
    if table == "videos":
        data = current_video_rows(data, meta.schema_version)
    target = schema_with_metadata(replace(meta, schema_version=SCHEMA_VERSION))
    write_parquet_atomic(path, data.select(target.names).cast(target))
    return True


def current_video_rows(videos: pa.Table, version: str) -> pa.Table:
    """Video rows of schema ``version`` (read by ``read_shard``: later columns null) with what this version knows
    of them filled in: real paths, recording times (before 1.5), the 1 frame/s of rows before 1.2. Rows rebuilt
    from an old shard (``rescore``) go through it too, or they would keep the nulls for good."""
    videos = with_real_paths(videos)
    if _version(version) < (1, 5):
        videos = with_recording_times(videos)
    if _version(version) < (1, 6):
        videos = with_color_transfers(videos)
    if _version(version) < (1, 2):  # sampled at 1 frame/s, the only rate there was (schema.py)
        i = videos.column_names.index("sampling_fps")
        videos = videos.set_column(i, videos.schema.field(i), pa.array([1.0] * videos.num_rows, pa.float64()))
    return videos


def with_real_paths(videos: pa.Table) -> pa.Table:
    """Rows from before 1.4 (``real_path`` null) get the real path of their path where it still opens, so a link
    they were scanned through can be removed later without orphaning them (``resume``)."""
    if "real_path" not in videos.column_names or videos.column("real_path").null_count == 0:
        return videos
    paths = videos.column("path").to_pylist()
    reals = [r if r is not None else (os.path.realpath(p) if os.path.exists(p) else None)
             for p, r in zip(paths, videos.column("real_path").to_pylist())]
    return videos.set_column(videos.column_names.index("real_path"), "real_path", pa.array(reals, pa.string()))


def with_recording_times(videos: pa.Table) -> pa.Table:
    """Rows from before 1.5 (``recorded_at`` null) get their file's recording time where the file is still the
    one scanned (same size and mtime): analytics by flight date then need no rescan of a library scanned
    before (one quick container open per video, about a millisecond for an MP4)."""
    from ..probe import read_recorded_at

    log.debug("reading the recording times of videos scanned before schema 1.5 (once; 1-20 ms each)")
    return _filled(videos, "recorded_at", read_recorded_at)


def with_color_transfers(videos: pa.Table) -> pa.Table:
    """Rows from before 1.6 (``color_transfer`` null) get their file's transfer function where the file is still
    the one scanned: a resume then rescans the HDR videos, which scoring version 3 tone-maps, and keeps the
    SDR ones (one probe per video, 1-2 ms)."""
    from ..probe import read_color_transfer

    log.debug("reading the transfer functions of videos scanned before schema 1.6 (once; 1-2 ms each)")
    return _filled(videos, "color_transfer", read_color_transfer)


def _filled(videos: pa.Table, column: str, read: Callable[[str], object]) -> pa.Table:
    """``videos`` with the nulls of ``column`` in ok rows read from their files by ``read(path)``, where the file
    is unchanged since the scan (same size and mtime)."""
    def current(path: str, size: int, mtime_ns: int) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return st.st_size == size and st.st_mtime_ns == mtime_ns

    rows = zip(videos.column("path").to_pylist(), videos.column("size_bytes").to_pylist(),
               videos.column("mtime_ns").to_pylist(), videos.column("status").to_pylist(),
               videos.column(column).to_pylist())
    values = [value if value is not None or status != "ok" or not current(path, size, mtime) else read(path)
              for path, size, mtime, status, value in rows]
    i = videos.column_names.index(column)
    return videos.set_column(i, videos.schema.field(i), pa.array(values, videos.schema.field(i).type))


def upgrade_shards(out_dir: Path, own_tag: str = "", lock_timeout_s: float = 10.0) -> int:
    """Rewrites the complete shard files of ``out_dir`` written by an older 1.x version; returns how many.

    A pair another job is writing right now keeps its old schema this time (the next scan upgrades it); once
    a tag's lock did not come free, its other pairs are not waited for either (parallel ``--shard`` jobs hold
    theirs for their whole run).
    """
    upgraded = 0
    busy: set[str] = set()
    for name in complete_shards(out_dir):
        todo = [(t, out_dir / t / name) for t in SCHEMAS]
        todo = [(t, p, meta) for t, p in todo if (meta := _needs_upgrade(p, t)) is not None]
        if not todo:
            continue
        tag = (parse_name(name) or ("", 0))[0]
        if tag in busy:
            continue
        lock = TagLock(out_dir, tag) if tag != own_tag else None
        if lock is not None and not lock.acquire(timeout_s=lock_timeout_s):
            log.info("shards of %r are being written by another scan; their schema is upgraded next run", tag)
            busy.add(tag)
            continue
        try:
            for table, path, meta in todo:
                try:
                    upgraded += _upgrade_file(path, table, meta)
                except DamagedShardError as exc:  # left as it is: resume moves a damaged pair aside
                    log.warning("cannot upgrade %s: %s", path, exc)
                    break
        finally:
            if lock is not None:
                lock.release()
    if upgraded:
        log.info("rewrote %d shard files of an earlier schema with the columns of %s (recording times and transfer "
                 "functions read from the videos, once)", upgraded, SCHEMA_VERSION)
    return upgraded
