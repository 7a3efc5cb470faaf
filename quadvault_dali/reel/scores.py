"""Reading what the reel is cut from: a scan folder (per-second scores) or a bare ``highlights.json``.

The reel needs, per video, the score of every sampled second so it can cut the best *window* rather
than the whole clip; a ``highlights.json`` alone has one score per video, so windows are then centred
on the video's best second (or its middle) and the caller is told so.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from ..errors import QuadvaultError
from ..scan.schema import video_id
from ..scan.shards import (chosen_seconds, complete_shards, describe_models, folder_threshold, latest_video_rows,
                           model_names, read_settled)

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class VideoScores:
    """One video's scores. ``times``/``scores`` are empty when only a video-level score is known."""

    path: Path
    duration_s: float | None
    video_score: float | None = None
    best_timestamp_s: float | None = None
    rotation: int | None = None
    fps: float | None = None
    mtime_ns: int | None = None
    #: the file's size when it was scanned (``None`` from a highlights.json): a different size now means
    #: the scores describe another file
    size_bytes: int | None = None
    #: the scan's ``video_id`` of the file (a highlights.json's): the id of the file as it is now differs
    #: once it changed (``scan.schema.video_id``: its path, size and mtime)
    scanned_id: str | None = None
    times: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    #: when the camera recorded it (the scan's ``recorded_at``; ``None`` where the container says nothing)
    recorded_at: datetime | None = None

    @property
    def has_seconds(self) -> bool:
        return self.times.size > 0

    @property
    def taken_ns(self) -> int | None:
        """When the footage was shot, for ``--order time``: the camera's date, else the file's mtime (a library
        copied off SD cards or restored from a backup has the copy's mtimes)."""
        if self.recorded_at is not None:  # the scan's UTC timestamp, to the microsecond
            recorded = self.recorded_at if self.recorded_at.tzinfo else self.recorded_at.replace(tzinfo=timezone.utc)
            return (recorded - _EPOCH) // timedelta(microseconds=1) * 1000
        return self.mtime_ns


@dataclass(frozen=True)
class ScoreSource:
    """Everything loaded from SCORES, with how it was read (for messages)."""

    origin: Path
    videos: list[VideoScores]
    per_second: bool
    failed_videos: int = 0
    #: the highlight threshold the scan used (the highest where runs differed); ``None`` when the scores name none
    threshold: float | None = None


def load_scores(path: str | Path) -> ScoreSource:
    """Loads a scan folder or a ``highlights.json``; raises ``QuadvaultError`` naming what is missing."""
    path = Path(path)
    if path.is_dir():
        if _is_scan_folder(path):
            return read_settled(lambda: _load_scan_folder(path))
        if (path / "highlights.json").is_file():
            log.warning("%s has no per-second scores (seconds/*.parquet); using highlights.json only", path)
            return load_highlights_json(path / "highlights.json")
        raise QuadvaultError("not a scan folder: no seconds/part-*.parquet and no highlights.json", path=path,
                             hint="pass the --out folder of 'quadvault scan', or its highlights.json")
    if path.is_file() and path.suffix.lower() == ".json":
        listed = load_highlights_json(path)
        # a scan's own highlights.json has its seconds beside it; batch-classify's OUT.json in OUT.scan/
        for folder in (path.parent, path.with_name(f"{path.stem}.scan")):
            if _is_scan_folder(folder):
                return _with_seconds_of_scan(listed, read_settled(lambda: _load_scan_folder(folder)))
        return listed
    if not path.exists():
        raise QuadvaultError("scores not found", path=path, hint="pass a scan folder or a highlights.json")
    raise QuadvaultError("not a scan folder or a .json file", path=path)


def _is_scan_folder(path: Path) -> bool:
    return (path / "videos").is_dir() and any((path / "seconds").glob("part-*.parquet"))


def _with_seconds_of_scan(listed: ScoreSource, scan: ScoreSource) -> ScoreSource:
    """The videos ``listed`` (a scan's highlights.json) with the per-second scores of ``scan``, its folder: each
    window is then the best run of seconds, not centred on the best second (``reel scan/highlights.json`` cut 1.5 s
    of dull take-off into a 4-s window the folder placed on the highlight; a README review's find). A listed
    video the folder no longer holds as that file keeps the list's own entry."""
    scanned = {v.path: v for v in scan.videos}
    videos = [scanned[v.path] if v.path in scanned and (v.scanned_id is None or _same_version(v, scanned[v.path]))
              else v for v in listed.videos]
    with_seconds = sum(v.has_seconds for v in videos)
    log.info("per-second scores of %d of the %d listed videos from %s", with_seconds, len(videos), scan.origin)
    return ScoreSource(listed.origin, videos, per_second=with_seconds == len(videos), threshold=listed.threshold)


def _same_version(listed: VideoScores, scanned: VideoScores) -> bool:
    """Whether the folder's row is of the file the list named (``video_id``: path, size and mtime)."""
    if scanned.size_bytes is None or scanned.mtime_ns is None:
        return True
    return video_id(str(scanned.path), scanned.size_bytes, scanned.mtime_ns) == listed.scanned_id


def _load_scan_folder(root: Path) -> ScoreSource:
    """Reads complete shard pairs only (a videos file marks its pair as fully written), and of a path
    found in several shards only its newest row and that row's own seconds."""
    names = complete_shards(root)
    if not names:
        raise QuadvaultError("no complete shard (videos/part-*.parquet with its seconds/ twin)", path=root,
                             hint="the scan may still be running or was interrupted before its first shard")
    chosen = latest_video_rows(root)  # checks the schema version; skips a damaged pair with a warning
    ok = [(name, row) for name, row in chosen if row.get("status") == "ok"]
    by_model = Counter(str(row.get("model_fingerprint")) for _, row in ok)
    if len(by_model) > 1:  # one folder scanned with several models in turn: their scores are not one scale
        log.warning("the scores in %s come from %d models (%s): the reel ranks them together as if one had scored "
                    "them all; scan the folder's library with one model (scan --replace-models), or keep one --out "
                    "per model", root, len(by_model), describe_models(dict(by_model), model_names(root)))
    by_key: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for name, sec in chosen_seconds(root, ok, ["timestamp_s", "score"]):
        # video ids as dictionary codes: a Python string per second row took 7 s for an 18,000-video folder
        encoded = sec.column("video_id").combine_chunks().dictionary_encode()
        ids = encoded.dictionary.to_pylist()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        times = sec.column("timestamp_s").to_numpy().astype(np.float64)
        scores = sec.column("score").to_numpy().astype(np.float64)
        order = np.lexsort((times, codes))
        codes, times, scores = codes[order], times[order], scores[order]
        bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True]) if codes.size else np.array([0])
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b > a:
                by_key[(name, ids[codes[a]])] = (times[a:b], scores[a:b])
    out: list[VideoScores] = []
    failed = 0
    for name, row in chosen:
        key = (name, row["video_id"])
        if row.get("status") != "ok" or key not in by_key:
            failed += 1
            continue
        t, s = by_key[key]
        out.append(VideoScores(path=Path(row["path"]), duration_s=row.get("duration_s"),
                               video_score=row.get("score"), best_timestamp_s=row.get("best_timestamp_s"),
                               rotation=row.get("rotation"), fps=row.get("fps"), mtime_ns=row.get("mtime_ns"),
                               size_bytes=row.get("size_bytes"), times=t, scores=s,
                               recorded_at=row.get("recorded_at")))
    log.info("read %d scored videos (%d failed or unscored) from %s", len(out), failed, root)
    return ScoreSource(root, out, per_second=True, failed_videos=failed, threshold=_scan_threshold(root, ok))


def _scan_threshold(root: Path, ok: list[tuple[str, dict]]) -> float | None:
    """The threshold of the scan's latest run: its highlights.json's (a run with a new --threshold rescans
    nothing, so the shards keep the one they were scored at), else the shards' own (the highest)."""
    try:
        threshold = _probability(json.loads((root / "highlights.json").read_text(encoding="utf-8")).get("threshold"))
    except (OSError, ValueError, AttributeError):
        threshold = None
    return threshold if threshold is not None else folder_threshold(root, {name for name, _ in ok})


def _probability(value: object) -> float | None:
    """``value`` as a threshold read from JSON: a number within 0..1, else ``None``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    return None


def _mtime_ns(path: Path) -> int | None:
    """The file's modification time (for --order time); ``None`` when it cannot be read now."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


class _FieldReader:
    """One highlights.json entry's optional fields, checked: a hand-edited list with a score in quotes was a
    Python traceback, now a one-line error naming the entry and the field."""

    def __init__(self, entry: dict, index: int, file: Path) -> None:
        self.entry, self.index, self.file = entry, index, file

    def _bad(self, key: str, wanted: str) -> QuadvaultError:
        return QuadvaultError(f"highlight #{self.index + 1}: {key!r} must be {wanted}, got {self.entry[key]!r}",
                              path=self.file)

    def number(self, key: str, *, required: bool = False, positive: bool = False) -> float | None:
        value = self.entry.get(key)
        if value is None and not required:
            return None
        wanted = "a positive number" if positive else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
                or (positive and value <= 0):
            raise self._bad(key, wanted)
        return float(value)

    def integer(self, key: str) -> int | None:
        value = self.entry.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "a whole number")
        return value


def load_highlights_json(file: Path) -> ScoreSource:
    """Reads ``highlights.json`` (``{"highlights": [{"path", "score", "best_second", "duration_s"}...]}``).

    A bare list of such objects is accepted too, so a hand-made selection can be turned into a reel.
    """
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuadvaultError(f"cannot read highlights JSON ({exc})", path=file) from exc
    entries = data.get("highlights", data.get("videos")) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise QuadvaultError("expected a list of highlights (or an object with a 'highlights' list)", path=file)
    videos: list[VideoScores] = []
    seen: set[Path] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "path" not in entry or "score" not in entry:
            raise QuadvaultError(f"highlight #{i + 1} has no 'path' and 'score'", path=file)
        if not isinstance(entry["path"], str) or not entry["path"]:
            raise QuadvaultError(f"highlight #{i + 1}: 'path' must be a file path, got {entry['path']!r}", path=file)
        field_of = _FieldReader(entry, i, file)
        score = field_of.number("score", required=True)
        best = field_of.number("best_second") if "best_second" in entry else field_of.number("best_timestamp_s")
        p = Path(entry["path"]).expanduser()  # "~/footage/a.mp4", as labels.json takes it
        p = p if p.is_absolute() else file.parent / p
        if p in seen:  # listed best first: the first entry of a path is its best
            log.warning("%s: highlight #%d repeats %s; keeping its first entry", file, i + 1, p)
            continue
        seen.add(p)
        scanned_id = entry.get("video_id")
        videos.append(VideoScores(path=p, duration_s=field_of.number("duration_s", positive=True), video_score=score,
                                  best_timestamp_s=best, rotation=field_of.integer("rotation"),
                                  fps=field_of.number("fps", positive=True),
                                  mtime_ns=field_of.integer("mtime_ns") or _mtime_ns(p),
                                  scanned_id=scanned_id if isinstance(scanned_id, str) else None))
    log.info("read %d highlights from %s (video-level scores only)", len(videos), file)
    return ScoreSource(file, videos, per_second=False,
                       threshold=_probability(data.get("threshold")) if isinstance(data, dict) else None)
