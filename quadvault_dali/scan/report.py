"""The end of a scan: ``highlights.json`` and the one-line summary, both from the complete shards.

Both are computed from everything complete in the scan folder (not just this run), so a resumed scan,
or the last of several ``--shard`` jobs, reports the whole library.

``highlights.json`` (written atomically)::

    {"schema_version": SCHEMA_VERSION, "threshold": 0.7, "models": [{"name", "fingerprint"}], "generated_at": ISO,
     "total_scanned": N, "errors": E, "count": H, "other_models": [{"fingerprint", "name", "videos"}],
     "highlights": [{"path", "score", "best_second", "best_second_score", "top3_mean",
                     "frac_above_threshold", "duration_s", "video_id", "model_fingerprint"}, ...]}   # best first
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import AbstractSet, Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from .._files import DISK_FULL_ERRNOS, atomic_path
from ..errors import OutputError
from .schema import SCHEMA_VERSION, ModelRef, combined_fingerprint
from .shards import chosen_seconds, latest_video_rows, model_names, read_settled

HIGHLIGHTS_FILE = "highlights.json"


@dataclass(frozen=True)
class FolderTotals:
    total: int
    highlights: int
    errors: int
    #: videos in the folder scored by other models than this run's (rows of files outside this run's library,
    #: which it did not rescan): their scores are another model's
    other_models: int = 0
    #: the error messages (``path: why``) of the first ``FAILED_LISTED`` failed videos by path: what an overnight
    #: log ends with, not scattered among 18,000 videos' progress lines
    failed: tuple[str, ...] = ()


#: How many failed videos ``FolderTotals.failed`` names
FAILED_LISTED = 20


def highlights_document(out_dir: Path, *, threshold: float, models: Sequence[ModelRef],
                        inside: Callable[[str], bool] | None = None,
                        excluding: set[str] | None = None) -> tuple[dict, FolderTotals]:
    """The highlights document and totals over the complete shards of ``out_dir`` (``_highlights_document``), read
    again where a pair went meanwhile; ``excluding``: paths whose rows are left out."""
    return read_settled(lambda: _highlights_document(out_dir, threshold=threshold, models=models, inside=inside,
                                                     excluding=excluding or frozenset()))


def _highlights_document(out_dir: Path, *, threshold: float, models: Sequence[ModelRef],
                         inside: Callable[[str], bool] | None,
                         excluding: AbstractSet[str]) -> tuple[dict, FolderTotals]:
    """The highlights document and totals over the complete shards of ``out_dir``. ``inside(path)``: paths of
    this run's library, whose other-model rows ``FolderTotals.other_models`` leaves out (the document lists
    them all): a --shard job's other half, or rows kept for an unplugged disk, are not another library's."""
    cols = ["video_id", "path", "score", "best_timestamp_s", "score_max", "score_top3_mean",
            "frac_above_threshold", "duration_s", "status", "model_fingerprint", "error_message"]
    chosen = [(name, row) for name, row in latest_video_rows(out_dir, columns=cols)  # one per path, with its shard
              if row["path"] not in excluding]
    rows = [row for _, row in chosen]
    # By this run's threshold, not the stored flag: resume does not rescan for a new --threshold.
    best_pairs = sorted(((name, r) for name, r in chosen
                         if r["status"] == "ok" and r["score"] is not None and r["score"] >= threshold),
                        key=lambda pair: (-pair[1]["score"], pair[1]["path"]))
    best = [r for _, r in best_pairs]
    fractions = _fractions_above(out_dir, best_pairs, threshold)
    failed = sorted((r for r in rows if r["status"] == "error"), key=lambda r: str(r["path"]))
    errors = len(failed)
    ours = combined_fingerprint(models)
    # scores of another model; an error row (a broken file) is no model's result, as the scan's refusal counts
    others = Counter(str(r["model_fingerprint"]) for r in rows if r["model_fingerprint"] != ours and r["status"] == "ok")
    names = model_names(out_dir) if others else {}
    doc = {
        "schema_version": SCHEMA_VERSION,
        "threshold": threshold,
        "models": [{"name": m.name, "fingerprint": m.fingerprint} for m in models],
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "total_scanned": len(rows),
        "errors": errors,
        "count": len(best),
        # rows left by scans with other models (of files outside this run's library): listed, never hidden
        "other_models": [{"fingerprint": fp, "name": names.get(fp), "videos": n} for fp, n in others.most_common()],
        "highlights": [{
            "path": r["path"], "score": round(float(r["score"]), 6),
            "best_second": r["best_timestamp_s"], "best_second_score": round(float(r["score_max"]), 6),
            "top3_mean": round(float(r["score_top3_mean"]), 6),
            "frac_above_threshold": round(fractions.get(r["video_id"], float(r["frac_above_threshold"])), 6),
            "duration_s": r["duration_s"], "video_id": r["video_id"],
            "model_fingerprint": r["model_fingerprint"],
        } for r in best],
    }
    outside = sum(1 for r in rows if r["model_fingerprint"] != ours and r["status"] == "ok"
                  and not (inside and inside(str(r["path"]))))
    listed = tuple(str(r["error_message"] or f"{r['path']}: failed") for r in failed[:FAILED_LISTED])
    return doc, FolderTotals(len(rows), len(best), errors, outside, listed)


def _fractions_above(out_dir: Path, chosen: list[tuple[str, dict]], threshold: float) -> dict[str, float]:
    """video_id -> fraction of its seconds scoring >= ``threshold``, from the seconds of each row's own shard
    (the stored column holds the fraction at the threshold of the run that scored the video)."""
    fractions: dict[str, float] = {}
    for _, table in chosen_seconds(out_dir, chosen, ["score"]):
        above = pc.greater_equal(table["score"], pa.scalar(threshold, pa.float32()))
        grouped = pa.table({"video_id": table["video_id"], "above": pc.cast(above, pa.int64())}) \
            .group_by("video_id").aggregate([("above", "mean")])
        fractions.update(zip(grouped["video_id"].to_pylist(), grouped["above_mean"].to_pylist()))
    return fractions


def write_json_atomic(path: Path, doc: dict) -> None:
    """``path`` gets the whole document or keeps its old content; a full disk is a clear error."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        full = exc.errno in DISK_FULL_ERRNOS
        raise OutputError(f"cannot write {path.name}: {exc.strerror or exc}", path=path,
                          hint="free space on that disk; the shards are complete, and the same command writes it "
                               "without scanning again" if full else None) from exc


def summary_line(totals: FolderTotals, out_dir: Path | str) -> str:
    return (f"Total scanned: {totals.total:,} — Highlights found: {totals.highlights:,} — "
            f"Errors: {totals.errors:,} — Results saved to: {out_dir}")
