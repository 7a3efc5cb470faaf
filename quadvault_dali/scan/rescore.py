"""Rescoring from stored scores: a video an ensemble scored already holds each model's per-second scores
(``model_scores``), so a scan with some of those models (``-m v1`` after ``-m v1 -m v2``, or the same models
in another order) rebuilds its rows from them instead of decoding the file again: seconds on 9 TB instead
of a night.

The rebuilt rows are what a scan with these models would write: per-model scores are independent of the
other models in an ensemble, the ensemble score is their mean (as ``Aggregator`` computes it) and the
aggregates use this run's threshold. They are written as new pairs of this run's tag *before* the old rows
are retired, so a kill in between leaves a video in two pairs (the newer row wins on resume), never in none.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .aggregate import VideoRows, scored_rows
from .resume import FileState
from .schema import ModelRef, ScanMetadata
from .shards import DamagedShardError, ShardWriter, read_shard
from .upgrade import current_video_rows

log = logging.getLogger(__name__)


def stored_columns(out_dir: Path, shard: str, models: Sequence[ModelRef]) -> list[int] | None:
    """Where each of ``models`` is in the ``model_scores`` of ``shard`` (its seconds file's metadata), or ``None``
    when the shard did not score with all of them."""
    return _columns_of(_metadata(out_dir, shard), models)


def _columns_of(meta: ScanMetadata | None, models: Sequence[ModelRef]) -> list[int] | None:
    stored = [m.fingerprint for m in meta.models] if meta is not None else []
    if not stored or any(m.fingerprint not in stored for m in models):
        return None
    return [stored.index(m.fingerprint) for m in models]


def _metadata(out_dir: Path, shard: str) -> ScanMetadata | None:
    try:
        return ScanMetadata.from_kv(pq.read_schema(out_dir / "seconds" / shard).metadata, source=shard)
    except (OSError, ValueError, pa.ArrowException):  # gone, damaged or not ours: those videos are scanned
        return None


def rescore_stored(out_dir: Path, other_rows: dict[str, dict[str, FileState]], models: Sequence[ModelRef], *,
                   writer: ShardWriter, threshold: float, fingerprint: str) -> list[FileState]:
    """Rebuilds, for ``models``, the rows of the videos in ``other_rows`` (``ResumePlan.other_rows``: shard ->
    {row path: file}) whose shard stored every one of these models' scores, and writes them through ``writer``
    (flushed). Returns the files rebuilt; the caller retires their old rows and scans the others."""
    rebuilt: list[FileState] = []
    for shard, files in sorted(other_rows.items()):
        meta = _metadata(out_dir, shard)
        columns = _columns_of(meta, models)
        if meta is None or columns is None:
            continue
        try:
            seconds = read_shard(out_dir / "seconds" / shard)
            videos = read_shard(out_dir / "videos" / shard)
        except DamagedShardError as exc:
            log.warning("cannot reuse the scores in %s (%s): its videos are scanned again", shard, exc)
            continue
        if seconds is None or videos is None:  # retired by another job since it was listed
            continue
        wanted = pa.array(sorted(files), pa.string())
        seconds = seconds.filter(pc.is_in(seconds["path"], value_set=wanted))
        # an older version's rows: what the upgrade fills in, filled in here as well
        videos = current_video_rows(videos.filter(pc.is_in(videos["path"], value_set=wanted)), meta.schema_version)
        by_path: dict[str, list[int]] = {}
        for i, path in enumerate(seconds["path"].to_pylist()):
            by_path.setdefault(path, []).append(i)
        times = seconds["timestamp_s"].to_numpy()
        stored = seconds["model_scores"].to_pylist()
        for video in videos.to_pylist():
            rows = by_path.get(video["path"], [])
            per_model = np.asarray([stored[i] for i in rows], np.float32).reshape(len(rows), -1)
            if len(rows) != video["frames_scored"] or per_model.shape[1] <= max(columns):
                continue  # not what the resume plan saw (or damaged): scanned again
            writer.add(_rows_for(video, times[rows], per_model[:, columns], threshold, fingerprint))
            rebuilt.append(files[video["path"]])
    writer.flush()
    return rebuilt


def _rows_for(old: dict[str, Any], times: np.ndarray, per_model: np.ndarray, threshold: float,
              fingerprint: str) -> VideoRows:
    """One video's rows from its stored per-second scores of this run's models (columns in this run's order)."""
    seconds, scores = scored_rows(old["video_id"], old["path"], times, per_model, threshold)
    video = {**old, **scores, "model_fingerprint": fingerprint,
             "scanned_at": datetime.now(timezone.utc)}  # newer than the row it replaces: it wins if both survive
    return VideoRows(seconds, video)
