"""The README's first command works end to end, and each step's output is right, not just present."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest

from quadvault_dali.demo import run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    lines: list[str] = []
    result = run_demo(tmp_path_factory.mktemp("demo") / "run", device="cpu", epochs=2, report=lines.append)
    return result, lines


def test_every_step_ran_and_reported(demo) -> None:
    result, lines = demo
    assert len(result.steps) == 6
    text = "\n".join(lines)
    assert "Dataset prepared: 96 frames — Highlights: 48 — Normal: 48" in text
    assert "TRAINING COMPLETE" in text
    assert "Total scanned: 13 — " in text and "Errors: 3 — " in text


def test_dataset_and_model(demo) -> None:
    result, _ = demo
    table = pq.read_table(result.root / "dataset" / "dataset.parquet").to_pylist()
    assert len(table) == 96 and {r["label"] for r in table} == {0, 1}
    card = json.loads((result.root / "model" / "model.json").read_text())
    assert (result.root / "model" / "model.safetensors").stat().st_size > 1_000_000
    assert card["image_size"] == 96


def _highlight_share(segments) -> float:
    return sum(s for style, s in segments if style == "highlight") / sum(s for _, s in segments)


def test_scan_ranks_highlight_flights_first(demo) -> None:
    result, _ = demo
    lib = result.library
    videos = {Path(r["path"]): r for r in pq.read_table(result.root / "scan" / "videos").to_pylist()}
    assert {p for p, r in videos.items() if r["status"] == "error"} == set(lib.broken)
    ok = {p: r["score"] for p, r in videos.items() if r["status"] == "ok"}
    assert set(ok) == set(lib.flights)
    by_share = sorted(lib.flights, key=lambda p: _highlight_share(lib.segments[p]))
    dull = [p for p in by_share if _highlight_share(lib.segments[p]) == 0]
    mostly = [p for p in by_share if _highlight_share(lib.segments[p]) > 0.7]
    assert max(ok[p] for p in dull) < min(ok[p] for p in mostly)
    highlights = json.loads((result.root / "scan" / "highlights.json").read_text())["highlights"]
    assert {Path(h["path"]) for h in highlights} >= set(mostly)
    assert not {Path(h["path"]) for h in highlights} & set(dull)
    # the library's files are dated as their month folders say: the README's per-month query has three months
    import datetime as dt

    months = {dt.datetime.fromtimestamp(r["mtime_ns"] / 1e9, dt.timezone.utc).strftime("%Y-%m") == p.parent.name
              for p, r in videos.items()}
    assert months == {True}


def test_reel_cuts_the_highlight_part_of_each_flight(demo) -> None:
    result, _ = demo
    lib = result.library
    rows = list(csv.DictReader((result.root / "highlights.mp4.clips.csv").open()))
    assert 1 <= len(rows) <= 6
    for row in rows:
        segments = lib.segments[Path(row["source_path"])]
        start, inside = 0.0, False
        for style, seconds in segments:
            if style == "highlight" and start - 1e-6 <= float(row["in_s"]) and float(row["out_s"]) <= start + seconds + 1e-6:
                inside = True
            start += seconds
        assert inside, f"{row['source_path']} {row['in_s']}-{row['out_s']} is not inside a highlight segment"
    with av.open(str(result.root / "highlights.mp4")) as reel:
        stream = reel.streams.video[0]
        assert (stream.width, stream.height) == (640, 360)
        assert stream.frames > 0
