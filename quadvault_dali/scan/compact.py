"""Merging a scan's small shard pairs into few large ones, so that the folder's file count follows its videos.

A scan closes a pair every ``--shard-seconds`` (60 s) so that a crash loses little, and a CPU scan, at a few
videos a minute, leaves one pair per minute: a 40-s-average library of 18,000 videos scanned on a CPU became
~1,300 pairs, and every later resume, reel and query opened each of them (an 18,000-video test: 14 s to resume
with nothing to do against 4 s for the same rows in 90 pairs; 51 s for 9,000 pairs). At the end of a run each
of this job's tags has its consecutive small pairs merged into pairs of up to ``--shard-videos`` videos.

Crash safety follows the pair protocol: the group's first pair is rewritten with every row of the group
(``write_parquets_atomic``: seconds renamed first, videos last), and only then are the others retired, each
videos file (the pair's commit marker) before its seconds file. A crash before the first rename leaves the
group as it was; after it, a video is in two complete pairs with the same rows until the next scan's resume
retires the older copy (this tool's readers take one row per path meanwhile; others may see both, as docs/scan.md
says). Nothing is ever in no pair. A reader that listed a pair merged away reads the folder again
(``shards.read_settled``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .._lifetime import stop_signals_deferred
from ..errors import OutputError
from .shards import TagLock, complete_shards, in_job, parse_name, retire_pair, with_videos_of, write_parquets_atomic

log = logging.getLogger(__name__)


def _groups(out_dir: Path, names: Sequence[str], max_videos: int) -> list[list[tuple[str, int]]]:
    """Runs of consecutive pairs (by sequence number) whose shards carry the same metadata (models, threshold,
    schema) and whose videos add up to at most ``max_videos``; only runs of two or more pairs."""
    groups: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] = []
    current_key: tuple[bytes, ...] | None = None
    total = 0
    for name in names:
        try:
            videos = pq.ParquetFile(out_dir / "videos" / name)
            rows = videos.metadata.num_rows
            key = tuple(sorted((videos.schema_arrow.metadata or {}).items()))
        except (OSError, pa.ArrowException):  # gone meanwhile or damaged: the next resume deals with it
            rows, key = max_videos + 1, None
        if key is None or rows >= max_videos or key != current_key or total + rows > max_videos:
            if len(current) > 1:
                groups.append(current)
            current, current_key, total = [], key, 0
            if key is None or rows >= max_videos:
                continue
        current.append((name, rows))
        total += rows
    if len(current) > 1:
        groups.append(current)
    return groups


def _merge(out_dir: Path, group: list[tuple[str, int]]) -> int:
    """Rewrites the group's first pair with all its rows and retires the others; returns pairs removed."""
    names = [name for name, _ in group]
    videos = [pq.read_table(out_dir / "videos" / name) for name in names]
    # each pair's own seconds only: a kill between a rewrite's two renames leaves a pair's seconds holding rows its
    # videos file does not list, which a merge would otherwise add a second time
    seconds = [with_videos_of(pq.read_table(out_dir / "seconds" / name), v)[0] for name, v in zip(names, videos)]
    merged = {"seconds": pa.concat_tables(seconds), "videos": pa.concat_tables(videos)}
    first = names[0]
    write_parquets_atomic([(out_dir / "seconds" / first, merged["seconds"]),
                           (out_dir / "videos" / first, merged["videos"])])
    for name in names[1:]:
        retire_pair(out_dir, name)
    return len(names) - 1


def job_tags(out_dir: Path, tag: str) -> list[str]:
    """The tags of one job's pairs in ``out_dir``: its own (``--shard`` i/n, or none) and its GPU workers'
    (``--gpus``: ``TAG-gN``, or ``gN``); never a sibling ``--shard`` job's."""
    found = {(parse_name(n) or ("", 0))[0] for n in complete_shards(out_dir)}
    return sorted({tag} | {t for t in found if in_job(t, tag)})


def compact_shards(out_dir: Path, tags: Sequence[str], max_videos: int, *, lock_timeout_s: float = 5.0,
                   held: str | None = None) -> int:
    """Merges each tag's consecutive small complete pairs into pairs of up to ``max_videos`` videos; returns
    how many pairs are gone. ``held``: the tag whose lock the caller holds; other tags' locks are taken here, and
    a tag whose writer is running is left alone."""
    removed = 0
    listed = complete_shards(out_dir)  # merging one tag's pairs leaves the others' as they are
    for tag in tags:
        names = [n for n in listed if (parse_name(n) or ("?", 0))[0] == tag]
        names.sort(key=lambda n: (parse_name(n) or ("", 0))[1])
        if len(names) < 2:
            continue
        lock = TagLock(out_dir, tag) if tag != held else None
        if lock is not None and not lock.acquire(timeout_s=lock_timeout_s):
            log.info("not merging the shards of %r: its writer is running", tag)
            continue
        before, gone = len(names), 0
        try:
            for group in _groups(out_dir, names, max_videos):
                with stop_signals_deferred():  # a stop between the rewrite and the last retirement: videos twice
                    gone += _merge(out_dir, group)
        except (OSError, OutputError, pa.ArrowException) as exc:  # a full disk: the pairs stay as they are
            log.warning("could not merge the small shard pairs of %s (%s); they are kept as they are", out_dir, exc)
        finally:
            if lock is not None:
                lock.release()
        if gone:
            log.info("merged %d small shard pairs%s into %d", before, f" of {tag}" if tag else "", before - gone)
        removed += gone
    return removed
