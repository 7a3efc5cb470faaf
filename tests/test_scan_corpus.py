"""The scan over real third-party footage (``../shared/video-corpus``): every file one row, the broken ones
error rows with the reason, the rest sampled second by second; every engine scores the same seconds.

The corpus folder is read-only, so a scan that tried to write into its library would fail here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from quadvault_dali.sampling import create_sampler
from quadvault_dali.scan.runner import ScanOptions, scan_library
from quadvault_dali.scan.shards import read_table

from _scan_helpers import WarmScorer, tree_hash

#: file name -> (error kind, words of the message) for the files no engine can scan
UNSCANNABLE = {
    "sample_audio_only.mp4": ("VideoOpenError", "no video stream"),
    "sample_malformed_free_box.mp4": ("VideoOpenError", "not a readable video container"),
}
#: damaged bitstreams: PyAV reports them; a hardware decoder may conceal the damage and go on
DAMAGED = {"invalid-bitstream.webm": ("DecodeError", "decoded only 0 of")}
#: long files whose last frame is well inside the last second: one sample per started second
FULL_SECONDS = ("karma.mp4", "drone.mp4", "car-detection.mp4", "bottle-detection.mp4",
                "one-by-one-person-detection.mp4", "01_dog.mp4", "max-heromode.mp4")


def scan_corpus(corpus: Path, out: Path, device: str, monkeypatch: pytest.MonkeyPatch | None = None,
                engine: object = None) -> tuple[dict[str, dict], dict[str, list[float]], dict[str, list[float]]]:
    """Scans the corpus; returns videos by file name, and per file name its timestamps and warm scores."""
    if engine is not None and monkeypatch is not None:
        import quadvault_dali.scan.runner as runner

        monkeypatch.setattr(runner, "create_sampler", lambda device, **kw: engine(**kw))  # type: ignore[operator]
    scan_library([corpus], ScanOptions(out_dir=out, device=device, threshold=0.5, streams=4, batch_size=16),
                 scorers=[WarmScorer()])
    videos = {Path(r["path"]).name: r for r in read_table(out, "videos").to_pylist()}
    times: dict[str, list[float]] = {}
    scores: dict[str, list[float]] = {}
    for r in sorted(read_table(out, "seconds").to_pylist(), key=lambda r: (r["path"], r["timestamp_s"])):
        times.setdefault(Path(r["path"]).name, []).append(r["timestamp_s"])
        scores.setdefault(Path(r["path"]).name, []).append(r["score"])
    return videos, times, scores


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    """The cpu backend's scan: what every other engine is compared with."""
    before = tree_hash(corpus)
    result = scan_corpus(corpus, tmp_path_factory.mktemp("corpus") / "scan", "cpu")
    assert tree_hash(corpus) == before
    return result


def test_every_real_file_gets_its_row(corpus: Path, reference) -> None:
    videos, times, _ = reference
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert sorted(videos) == sorted(Path(e["member"]).name for e in manifest)
    failing = {**UNSCANNABLE, **DAMAGED}
    for name, row in videos.items():
        if name in failing:
            kind, words = failing[name]
            assert row["status"] == "error" and row["error_kind"] == kind and words in row["error_message"], row
            assert row["frames_scored"] == 0 and name not in times
            continue
        assert row["status"] == "ok", (name, row["error_message"])
        stamps = times[name]
        assert row["frames_scored"] == len(stamps) >= 1
        assert stamps == sorted(set(stamps)) and stamps[0] < 1.0, (name, stamps[:3])  # 0.6: first keyframe
        assert stamps[-1] < row["duration_s"] + 1e-6
        if name in FULL_SECONDS:
            assert len(stamps) == math.ceil(row["duration_s"]), (name, len(stamps), row["duration_s"])
            assert max(b - a for a, b in zip(stamps, stamps[1:])) < 1.6, name  # about one per second
    # real drone footage with 1 s keyframes: keyframe mode, a fraction of the file read
    assert videos["karma.mp4"]["sampling_mode"] == "keyframe"
    assert videos["karma.mp4"]["bytes_read"] < 0.3 * videos["karma.mp4"]["size_bytes"]
    assert (videos["portrait_4k60.mp4"]["width"], videos["portrait_4k60.mp4"]["height"]) == (2160, 3840)
    assert videos["mv_with_2_top_shots.mp4"]["frames_scored"] == 2  # the video track, not the 2 stills


def test_the_dali_engine_scans_the_same_seconds(corpus: Path, reference, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The gpu backend's engine with DALI's CPU decoder (VP9 through DALI, the rest through its CPU fallback)."""
    from quadvault_dali.sampling._gpu import DaliSampler

    assert_same_scan(reference, scan_corpus(corpus, tmp_path / "scan", "cpu", monkeypatch, DaliSampler),
                     score_tolerance=0.02)


def assert_same_scan(reference, other, score_tolerance: float) -> None:
    """Same rows, same status, same seconds; scores of the same frames within ``score_tolerance``."""
    ref_videos, ref_times, ref_scores = reference
    videos, times, scores = other
    assert sorted(videos) == sorted(ref_videos)
    for name, ref in ref_videos.items():
        row = videos[name]
        if name in DAMAGED:
            continue
        assert (row["status"], row["error_kind"]) == (ref["status"], ref["error_kind"]), (name, row["error_message"])
        if ref["status"] != "ok":
            continue
        assert times[name] == pytest.approx(ref_times[name], abs=1e-6), name
        assert scores[name] == pytest.approx(ref_scores[name], abs=score_tolerance), name


@pytest.mark.gpu
def test_the_gpu_scans_the_same_seconds(corpus: Path, reference, tmp_path: Path) -> None:
    """NVDEC on real files (10-bit HEVC, 8K HEVC, rotations, VFR, moov at the end); AV1 falls back."""
    create_sampler("gpu")  # fails loudly here if CUDA or DALI is missing
    other = scan_corpus(corpus, tmp_path / "scan", "gpu")
    assert_same_scan(reference, other, score_tolerance=0.05)
    videos = other[0]
    assert videos["karma.mp4"]["decoder"] == "nvdec"
    assert videos["sample_with_colr_mdcv_and_clli.mp4"]["decoder"] == "pyav"  # AV1: not on the H100's NVDEC
