"""benchmarks/nvdec_ceiling.py: NVDEC's keyframe rate through FFmpeg, the ceiling the gpu backend is read against."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from conftest import import_benchmark


@pytest.fixture(scope="module")
def ceiling():
    return import_benchmark("nvdec_ceiling")


def test_every_copy_of_every_keyframe_is_decoded_once(ceiling, make_clip: Callable[..., Path]) -> None:
    """A row decodes exactly its copies' keyframes, with one decoder per thread or one per video (FFmpeg's CPU
    decoder here: the same code as NVDEC's rows)."""
    path = make_clip("ceiling_h264.mp4", codec="h264", width=128, height=80, fps=30, duration_s=4.0,
                     keyframe_interval_s=1.0, source_id=3)
    clip = ceiling.read_keyframes(path)
    assert clip.codec == "h264" and len(clip.packets) == 4 and clip.extradata
    for per_video in (False, True):
        row = ceiling.run_row(clip, threads=3, copies=7, resize=None, per_video=per_video, software=True)
        warmed = 0 if per_video else 3  # a warm-up copy per thread before the clock
        assert row["frames"] == row["expected_frames"] == 4 * (7 + warmed) and row["frames_per_s"] > 0
        assert row["output_size"] == "128x80"


def test_sizes_for_nvdec_scaler_keep_the_aspect_and_even_sides(ceiling) -> None:
    assert ceiling.scaled_size(1920, 1080, 224) == (398, 224)
    assert ceiling.scaled_size(3840, 2160, 224) == (398, 224)
    assert ceiling.scaled_size(1080, 1920, 224) == (224, 398)


def test_a_clip_without_an_nvdec_decoder_is_refused_by_name(ceiling, make_clip: Callable[..., Path]) -> None:
    path = make_clip("ceiling_mjpeg.avi", codec="mjpeg", width=128, height=80, fps=10, duration_s=1.0)
    clip = ceiling.read_keyframes(path)
    with pytest.raises(ValueError, match="no NVDEC decoder in FFmpeg for mjpeg"):
        ceiling.open_decoder(clip, None)


def test_a_missing_clip_is_a_row_and_the_others_still_run(ceiling, make_clip: Callable[..., Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import sys

    good = make_clip("ceiling_h264.mp4", codec="h264", width=128, height=80, fps=30, duration_s=4.0,
                     keyframe_interval_s=1.0, source_id=3)
    out = tmp_path / "ceiling.json"
    monkeypatch.setattr(sys, "argv", ["nvdec_ceiling.py", str(tmp_path / "missing-k1.0-8s.mp4"), str(good),
                                      "--software", "--threads", "1", "--frames", "8", "--per-video-frames", "4",
                                      "--out", str(out)])
    ceiling.main()
    rows = json.loads(out.read_text())["results"]
    assert "error" in rows[0] and rows[0]["clip"] == "missing-k1.0-8s.mp4"
    assert [r["decoder"] for r in rows[1:]] == ["stream", "per-video"] and all("frames_per_s" in r for r in rows[1:])


def test_hwaccel_rows_are_named_by_client_and_never_run_on_cpu_decoders(ceiling, make_clip: Callable[..., Path],
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``--clients``: each row says how FFmpeg reached NVDEC; the hwaccel clients have no CPU stand-in, so a
    ``--software`` run keeps its cuvid-shaped rows only; a misspelt client is refused before any row runs."""
    import json
    import sys

    good = make_clip("ceiling_h264.mp4", codec="h264", width=128, height=80, fps=30, duration_s=4.0,
                     keyframe_interval_s=1.0, source_id=3)
    out = tmp_path / "ceiling.json"
    argv = ["nvdec_ceiling.py", str(good), "--software", "--threads", "1", "--frames", "8", "--per-video-frames", "4",
            "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv + ["--clients", "cuvid,hwaccel,hwaccel-own"])
    ceiling.main()
    rows = json.loads(out.read_text())["results"]
    assert [(r["decoder"], r["client"]) for r in rows] == [("stream", "cpu"), ("per-video", "cpu")]
    monkeypatch.setattr(sys, "argv", argv + ["--clients", "cuvid,hwacel"])
    with pytest.raises(SystemExit):
        ceiling.main()
