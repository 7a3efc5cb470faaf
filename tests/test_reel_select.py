"""Reel planning without media: which windows are chosen, how --top/--min-score/--duration combine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quadvault_dali.errors import QuadvaultError
from quadvault_dali.reel import EmptySelectionError, VideoScores, best_windows, load_scores, plan_reel


def video(name: str, scores: list[float], duration: float | None = None, mtime_ns: int | None = None) -> VideoScores:
    times = np.arange(len(scores), dtype=np.float64)
    return VideoScores(path=Path(f"/footage/{name}"), duration_s=duration or float(len(scores)),
                       times=times, scores=np.asarray(scores, np.float64), mtime_ns=mtime_ns)


def test_best_window_is_max_mean_not_the_start_or_the_single_best_second() -> None:
    # One spike at 1 s (take-off glitch), a sustained run 5..8 s.
    v = video("a.mp4", [0.3, 1.0, 0.3, 0.2, 0.2, 0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1])
    [w] = best_windows(v, 4.0)
    assert (w.in_s, w.out_s) == (5.0, 9.0)
    assert w.score == pytest.approx(0.9)


def test_window_at_the_very_end_and_short_videos() -> None:
    v = video("end.mp4", [0.1] * 6 + [0.9] * 4, duration=10.0)
    [w] = best_windows(v, 4.0)
    assert (w.in_s, w.out_s) == (6.0, 10.0)
    short = video("short.mp4", [0.8, 0.9], duration=2.0)
    [s] = best_windows(short, 4.0)
    assert (s.in_s, s.out_s, round(s.score, 3)) == (0.0, 2.0, 0.85)


def test_several_windows_per_video_never_overlap() -> None:
    v = video("b.mp4", [0.9, 0.9, 0.9, 0.9, 0.95, 0.95, 0.95, 0.95, 0.2, 0.8, 0.8, 0.8, 0.8])
    windows = best_windows(v, 4.0, per_video=3)
    assert [(w.in_s, w.out_s) for w in windows] == [(4.0, 8.0), (0.0, 4.0), (9.0, 13.0)]
    assert [round(w.score, 3) for w in windows] == [0.95, 0.9, 0.8]


def test_top_min_score_and_order() -> None:
    vids = [video(f"v{i}.mp4", [0.5] * 2 + [s] * 4 + [0.5] * 2, mtime_ns=100 - i)
            for i, s in enumerate([0.86, 0.95, 0.80, 0.90, 0.99])]
    plan = plan_reel(vids, top=3, min_score=0.85, fade_s=0.5, fps=30)
    assert [c.window.path.name for c in plan.clips] == ["v4.mp4", "v1.mp4", "v3.mp4"]
    assert [c.position for c in plan.clips] == [1, 2, 3]
    assert any("left out by --top 3" in n for n in plan.notes)
    by_time = plan_reel(vids, top=3, min_score=0.85, order="time")
    assert [c.window.path.name for c in by_time.clips] == ["v4.mp4", "v3.mp4", "v1.mp4"]  # oldest mtime first


def test_order_time_follows_the_camera_date_before_the_file_time() -> None:
    """A library copied off SD cards has the copy's mtimes: --order time sorted by them while the scan holds the
    camera's date (recorded_at), which the README's own month query uses (a README review's find)."""
    from dataclasses import replace
    from datetime import datetime, timezone

    def shot(year: int) -> datetime:
        return datetime(year, 6, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)

    copied = 1_900_000_000 * 10**9  # every file copied in 2030, newest copy first
    vids = [replace(video("flight_2020.mp4", [0.9] * 4, mtime_ns=copied + 3), recorded_at=shot(2020)),
            replace(video("flight_2024.mp4", [0.9] * 4, mtime_ns=copied + 1), recorded_at=shot(2024)),
            video("phone_no_date.mp4", [0.9] * 4, mtime_ns=int(shot(2022).timestamp()) * 10**9),
            replace(video("flight_2018.mp4", [0.9] * 4, mtime_ns=copied + 2), recorded_at=shot(2018))]
    plan = plan_reel(vids, min_score=0.5, order="time")
    assert [c.window.path.name for c in plan.clips] == ["flight_2018.mp4", "flight_2020.mp4", "phone_no_date.mp4",
                                                        "flight_2024.mp4"]
    assert vids[0].taken_ns == (int(shot(2020).timestamp()) * 10**6 + 123456) * 1000  # to the microsecond


def test_duration_counts_crossfades_on_the_frame_grid() -> None:
    vids = [video(f"v{i}.mp4", [0.9 - i * 0.01] * 8) for i in range(5)]
    plan = plan_reel(vids, min_score=0.5, max_duration_s=11.0, clip_seconds=4.0, fade_s=0.5, fps=30)
    # 3 clips: 3 * 4 s - 2 * 0.5 s = 11.0 s exactly; a 4th would make 14.5 s.
    assert len(plan.clips) == 3
    assert plan.total_frames == 3 * 120 - 2 * 15 == 330
    assert plan.duration_s == pytest.approx(11.0)
    assert [c.start_frame for c in plan.clips] == [0, 105, 210]
    assert [(c.reel_start_s, c.reel_end_s) for c in plan.clips][1] == pytest.approx((3.5, 7.5))
    cuts = plan_reel(vids, min_score=0.5, max_duration_s=11.0, transitions=False, fps=30)
    assert len(cuts.clips) == 2 and cuts.duration_s == pytest.approx(8.0)
    assert any("within 11 s" in n for n in cuts.notes)


def test_duration_skips_a_long_clip_but_keeps_a_shorter_one_that_fits() -> None:
    vids = [video("long1.mp4", [0.99] * 8), video("long2.mp4", [0.98] * 8), video("tiny.mp4", [0.9] * 2)]
    plan = plan_reel(vids, min_score=0.5, max_duration_s=6.0, fade_s=0.5, fps=10)
    assert [c.window.path.name for c in plan.clips] == ["long1.mp4", "tiny.mp4"]
    assert plan.duration_s == pytest.approx(4 + 2 - 0.5)


def test_empty_selection_says_why() -> None:
    vids = [video("a.mp4", [0.81] * 6), video("b.mp4", [0.5] * 6)]
    with pytest.raises(EmptySelectionError, match=r"no video scored ≥ 0.85 .*the best was 0.81 \(a.mp4\)"):
        plan_reel(vids, min_score=0.85)
    with pytest.raises(EmptySelectionError, match=r"--duration 3 s is shorter than the shortest clip that fits the "
                                                  r"fades \(4 s\) \(raise --duration"):
        plan_reel(vids, min_score=0.5, max_duration_s=3.0)
    # a clip too short for the fades is not reported as too long for --duration (it was 0.5 s): alone, it is the
    # reel (a reel of one clip has no crossfade), and the notes say why the 4-s one is not in it
    short = [video("long.mp4", [0.9] * 10), video("blink.mp4", [0.95] * 1, duration=0.5)]
    plan = plan_reel(short, min_score=0.5, max_duration_s=2.0)
    assert [c.window.path.name for c in plan.clips] == ["blink.mp4"]
    assert "1 left out to keep the reel within 2 s" in plan.notes and "shorter than two crossfades" in plan.notes[2]
    with pytest.raises(EmptySelectionError) as err:  # nothing fits at all: both reasons
        plan_reel([video("long.mp4", [0.9] * 10), video("blink.mp4", [0.95] * 1, duration=0.5)], min_score=0.5,
                  max_duration_s=0.4)
    assert str(err.value).startswith("--duration 0.4 s is shorter than the shortest clip that fits the fades (4 s); "
                                     "1 eligible video is shorter than two 0.5-s crossfades")
    with pytest.raises(EmptySelectionError, match="no scored video"):
        plan_reel([], min_score=0.5)
    with pytest.raises(QuadvaultError, match="crossfade"):
        plan_reel(vids, min_score=0.5, clip_seconds=1.0, fade_s=0.5)


def test_highlights_json_centres_on_best_second(tmp_path: Path) -> None:
    doc = {"threshold": 0.7, "highlights": [
        {"path": "/f/a.mp4", "score": 0.93, "best_second": 7.0, "duration_s": 20.0},
        {"path": "b.mp4", "score": 0.88, "best_second": None, "duration_s": 10.0},
        {"path": "/f/c.mp4", "score": 0.91, "best_second": 0.0, "duration_s": 30.0}]}
    (tmp_path / "highlights.json").write_text(json.dumps(doc), encoding="utf-8")
    source = load_scores(tmp_path / "highlights.json")
    assert not source.per_second
    plan = plan_reel(source.videos, min_score=0.85, clip_seconds=4.0)
    got = [(c.window.path.name, c.window.in_s, c.window.out_s, c.window.how) for c in plan.clips]
    assert got == [("a.mp4", 5.5, 9.5, "best-second"), ("c.mp4", 0.0, 4.0, "best-second"),
                   ("b.mp4", 3.0, 7.0, "middle")]
    assert plan.clips[2].window.path == tmp_path / "b.mp4"  # relative paths are relative to the JSON


def test_bad_scores_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(QuadvaultError, match="not a scan folder"):
        load_scores(tmp_path)
    bad = tmp_path / "h.json"
    bad.write_text('{"highlights": [{"score": 0.9}]}', encoding="utf-8")
    with pytest.raises(QuadvaultError, match=r"h.json: highlight #1 has no 'path'"):
        load_scores(bad)


def test_order_time_uses_file_times_from_a_highlights_json(tmp_path: Path) -> None:
    import json
    import os

    for name, mtime in (("a.mp4", 2_000_000_000), ("b.mp4", 1_000_000_000)):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (mtime, mtime))
    doc = {"highlights": [{"path": "a.mp4", "score": 0.9, "best_second": 2.0, "duration_s": 10.0},
                          {"path": "b.mp4", "score": 0.8, "best_second": 2.0, "duration_s": 10.0}]}
    (tmp_path / "highlights.json").write_text(json.dumps(doc))
    plan = plan_reel(load_scores(tmp_path / "highlights.json").videos, min_score=0.5, order="time")
    assert [c.window.path.name for c in plan.clips] == ["b.mp4", "a.mp4"]  # oldest first


def test_a_clip_never_runs_past_the_end_of_its_source() -> None:
    plan = plan_reel([video("short.mp4", [0.9] * 4, duration=3.99)], min_score=0.5, clip_seconds=4.0, fps=30)
    (clip,) = plan.clips
    assert clip.window.in_s + clip.frames / 30 <= 3.99 + 1e-9


def test_the_best_window_may_end_just_before_a_sample() -> None:
    """Two top seconds (2 and 3) and a 2.5-s clip: windows starting at samples all held a third, weak second
    (0.68 at best, under --min-score 0.85); [1.5, 4) holds just the two (a reel tester's find)."""
    clip = video("v.mp4", [0.1, 0.1, 0.97, 0.97, 0.1, 0.1, 0.1, 0.1])
    (w,) = best_windows(clip, 2.5)
    assert (w.in_s, w.out_s) == (1.5, 4.0) and w.score == pytest.approx(0.97)
    # sparse keyframe samples (every 1.5 s): the highlight at 2.5-4 s is held by [2, 4), not [1.5, 3.5)
    sparse = VideoScores(path=Path("/footage/k.mp4"), duration_s=9.0, times=np.array([0.0, 1.5, 3.0, 4.5, 6.0, 7.5]),
                         scores=np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    (w,) = best_windows(sparse, 2.0)
    assert w.score == 1.0 and w.in_s <= 3.0 < w.out_s and w.in_s > 1.5
    # windows stay inside the video
    assert all(0.0 <= w.in_s and w.out_s <= 8.0 + 1e-9 for w in best_windows(clip, 2.5, per_video=4))


def test_equal_windows_are_taken_earliest_first_whatever_the_rounding() -> None:
    """Saturated scores: differences of a running sum made some all-1.0 windows 0.9999999999999999, so the
    earliest-on-ties order depended on rounding noise ([1,4), [5,8), [8,11) instead of [1,4), [4,7), [7,10))."""
    clip = video("v.mp4", [1.13e-9] + [1.0] * 11)
    assert [(w.in_s, w.out_s) for w in best_windows(clip, 3.0, per_video=3)] == [(1.0, 4.0), (4.0, 7.0),
                                                                                  (7.0, 10.0)]


def test_a_scan_folder_gives_the_reel_its_camera_dates(tmp_path: Path) -> None:
    """The scan's recorded_at reaches the reel: copied files (mtimes in copy order) come out as they were shot."""
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _scan_helpers import WarmScorer

    from quadvault_dali.scan.runner import ScanOptions, scan_library
    from quadvault_dali.synth import SynthSpec, make_video

    lib = tmp_path / "lib"
    lib.mkdir()
    for i, (name, shot) in enumerate((("a.mp4", "2024-05-01T10:00:00Z"), ("b.mp4", "2019-05-01T10:00:00Z"),
                                      ("c.mp4", "2021-05-01T10:00:00Z"))):
        make_video(lib / name, SynthSpec(width=64, height=64, duration_s=3.0, style="highlight", seed=i,
                                         recorded_at=shot))
        os.utime(lib / name, (1_900_000_000 + i, 1_900_000_000 + i))  # copied a, b, c in turn
    scan_library([lib], ScanOptions(out_dir=tmp_path / "scan", device="cpu", threshold=0.0), scorers=[WarmScorer()])
    plan = plan_reel(load_scores(tmp_path / "scan").videos, min_score=0.0, clip_seconds=2.0, order="time")
    assert [c.window.path.name for c in plan.clips] == ["b.mp4", "c.mp4", "a.mp4"]


def test_a_scans_highlights_json_is_cut_with_the_seconds_beside_it(tmp_path: Path) -> None:
    """``reel scan/highlights.json`` (the reel's --help example) read the list only and centred each window on
    the best second, though the scan's per-second scores are in the same folder (a README review's find). The
    list still says which videos; a listed file the folder holds as another version keeps the list's entry."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _scan_helpers import StampScorer

    from quadvault_dali.scan.runner import ScanOptions, scan_library
    from quadvault_dali.synth import SynthSpec, make_video

    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(3):
        make_video(lib / f"v{i}.mp4", SynthSpec(width=64, height=64, duration_s=4.0, source_id=i + 1, seed=i))
    scan_library([lib], ScanOptions(out_dir=tmp_path / "scan", device="cpu", threshold=0.015),
                 scorers=[StampScorer()])  # scores (source_id * 1000 + centiseconds) / 1e5: v0 is under 0.015
    listing = tmp_path / "scan" / "highlights.json"
    doc = json.loads(listing.read_text())
    assert [Path(h["path"]).name for h in doc["highlights"]] == ["v2.mp4", "v1.mp4"]
    from_list = load_scores(listing)
    from_folder = {v.path: v for v in load_scores(tmp_path / "scan").videos}
    assert [v.path.name for v in from_list.videos] == ["v2.mp4", "v1.mp4"] and from_list.per_second
    for v in from_list.videos:
        assert np.array_equal(v.times, from_folder[v.path].times) and np.array_equal(v.scores, from_folder[v.path].scores)
    import shutil

    shutil.copytree(tmp_path / "scan", tmp_path / "picks.scan")  # batch-classify LIBRARY MODEL picks.json
    shutil.copy(listing, tmp_path / "picks.json")
    assert load_scores(tmp_path / "picks.json").per_second
    doc["highlights"][1]["video_id"] = "another version of the file"
    listing.write_text(json.dumps(doc))
    stale = load_scores(listing)
    assert [v.has_seconds for v in stale.videos] == [True, False] and not stale.per_second
