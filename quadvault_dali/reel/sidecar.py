"""The reel's edit list: ``OUT.clips.csv`` next to the reel, and the same plan as text for ``--dry-run``.

A CSV opens in any spreadsheet or editor, so a user can see which second of which file each cut
came from and re-cut it by hand.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .._files import atomic_path
from ..discovery import REEL_SIDECAR_SUFFIX
from ..errors import OutputError
from .select import ReelPlan

COLUMNS = ("position", "source_path", "in_s", "out_s", "score", "reel_start_s", "reel_end_s", "placed_by")


def sidecar_path(out: str | Path) -> Path:
    """``best.mp4`` -> ``best.mp4.clips.csv``: the whole name, so the list names one reel. By stem alone
    (``best.clips.csv``, before 2026-11-27) ``best.mov`` and ``best.mp4`` shared a list, and the list of a reel
    ``trip.mp4`` made the user's own ``trip.mov`` pass for a reel: the next ``reel ... trip.mov`` replaced it."""
    out = Path(out)
    return out.with_name(f"{out.name}{REEL_SIDECAR_SUFFIX}")


def plan_rows(plan: ReelPlan) -> list[dict[str, str]]:
    return [{
        "position": str(c.position),
        "source_path": str(c.window.path),
        "in_s": f"{c.window.in_s:.3f}",
        "out_s": f"{c.window.in_s + c.frames / plan.fps:.3f}",
        "score": f"{c.window.score:.4f}",
        "reel_start_s": f"{c.reel_start_s:.3f}",
        "reel_end_s": f"{c.reel_end_s:.3f}",
        "placed_by": c.window.how,
    } for c in plan.clips]


def write_sidecar(plan: ReelPlan, path: str | Path, *, atomic: bool = True, shown_as: Path | None = None) -> Path:
    """Writes the CSV (UTF-8, quoted as needed, so any path survives), atomically unless the caller writes
    ``path`` as a temporary of its own (``atomic=False``; ``shown_as``: the name errors give, not the temporary's)."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(plan_rows(plan))
    try:
        if atomic:
            with atomic_path(path) as tmp:
                tmp.write_text(buf.getvalue(), encoding="utf-8")
        else:
            path.write_text(buf.getvalue(), encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write the clip list: {exc.strerror or exc}", path=shown_as or path) from exc
    return path


def read_sidecar(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def format_plan(plan: ReelPlan) -> str:
    """Human-readable plan: one line per clip, then the totals and notes."""
    lines = [f"{'#':>3}  {'reel':>15}  {'score':>6}  {'window':>17}  source"]
    for row in plan_rows(plan):
        reel = f"{float(row['reel_start_s']):6.2f}-{float(row['reel_end_s']):6.2f}s"
        window = f"{float(row['in_s']):7.2f}-{float(row['out_s']):7.2f}s"
        lines.append(f"{row['position']:>3}  {reel:>15}  {float(row['score']):6.3f}  {window:>17}  {row['source_path']}")
    fade = f", {plan.fade_frames / plan.fps:g} s crossfades" if plan.fade_frames else ", hard cuts"
    lines.append(f"{len(plan.clips)} clip(s), {plan.duration_s:.2f} s at {plan.fps:g} fps{fade}")
    lines.extend(f"note: {n}" for n in plan.notes)
    return "\n".join(lines)
