"""The scan on the gpu backend (NVDEC, bf16) against the same scan on the cpu backend.

The stamp scorer turns the stamp each frame carries into its score, so equal seconds rows mean every
frame the GPU scan scored was the frame of that second, from that video.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quadvault_dali.sampling._nvdec import nvdec_limitation
from quadvault_dali.scan.runner import ScanOptions, scan_library
from quadvault_dali.scan.shards import read_table
from quadvault_dali.synth import SynthSpec, make_broken, make_video

from _scan_helpers import StampScorer, WarmScorer, tree_hash

pytestmark = pytest.mark.gpu

#: inside NVDEC's size range for every codec (HEVC needs 144x144), plus two it cannot take
GOOD = {
    "2023/high_h264_30.mp4": SynthSpec(codec="h264", width=256, height=160, fps=30, duration_s=4.0,
                                       style="highlight", source_id=1),
    "2023/calm_hevc_24.mp4": SynthSpec(codec="hevc", width=256, height=160, fps=24, duration_s=4.0,
                                       style="normal", source_id=2),
    "2024/high_vp9_60.webm": SynthSpec(codec="vp9", width=256, height=160, fps=60, duration_s=3.0,
                                       style="highlight", source_id=3),
    "2024/rotated_hevc.mp4": SynthSpec(codec="hevc", width=256, height=160, fps=25, duration_s=3.0, rotation=90,
                                       style="normal", source_id=4),
    "2024/calm_mjpeg.mkv": SynthSpec(codec="mjpeg", width=256, height=160, fps=30, duration_s=2.0,
                                     style="normal", source_id=5),
    "odd/high_av1.mp4": SynthSpec(codec="av1", width=256, height=160, fps=30, duration_s=3.0,
                                  style="highlight", source_id=6),
    "odd/tiny_hevc.mp4": SynthSpec(codec="hevc", width=96, height=64, fps=30, duration_s=3.0,
                                   style="highlight", source_id=7),
}
BROKEN = {"broken/empty.mp4": "empty", "broken/notes.mp4": "text", "broken/truncated.mp4": "truncated"}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpuscan") / "Footage"
    for rel, spec in GOOD.items():
        make_video(root / rel, spec)
    for rel, kind in BROKEN.items():
        make_broken(root / rel, kind, source=root / "2023/high_h264_30.mp4")  # type: ignore[arg-type]
    return root


def _scan(library: Path, out: Path, device: str, streams: int = 4, **options: object) -> tuple[dict, dict]:
    scan_library([library], ScanOptions(out_dir=out, device=device, threshold=0.3, streams=streams, batch_size=8,
                                        shard_videos=3, **options), scorers=[WarmScorer(), StampScorer()])
    videos = {r["path"]: r for r in read_table(out, "videos").to_pylist()}
    seconds: dict[str, list] = {}
    for r in read_table(out, "seconds").to_pylist():
        seconds.setdefault(r["path"], []).append(r)
    return videos, seconds


@pytest.mark.parametrize("client,processes", [("dali", 1), ("ffmpeg", 2)])
def test_gpu_scan_scores_the_same_frames_as_the_cpu_scan(library: Path, tmp_path: Path, client: str,
                                                         processes: int) -> None:
    """Also the scan's ``--decoder ffmpeg --processes 2`` (stop 26's CLI option; the layout that sampled 2.12x DALI
    on the H200): FFmpeg's NVDEC decoders in decoding processes, frames over CUDA IPC. That client takes H.264 and
    HEVC only; the rest decode on the CPU and say so."""
    before = tree_hash(library)
    gpu_videos, gpu_seconds = _scan(library, tmp_path / "gpu", "gpu", decode_client=client, processes=processes,
                                    streams=4 // processes)
    cpu_videos, cpu_seconds = _scan(library, tmp_path / "cpu", "cpu")
    assert set(gpu_videos) == set(cpu_videos) and len(gpu_videos) == len(GOOD) + len(BROKEN)
    for rel, spec in GOOD.items():
        path = str(library / rel)
        row = gpu_videos[path]
        assert row["status"] == "ok", row["error_message"]
        off_client = client == "ffmpeg" and spec.codec not in ("h264", "hevc")
        expected_decoder = "pyav" if nvdec_limitation_of(row) or off_client else "nvdec"
        assert row["decoder"] == expected_decoder, (rel, row["decoder"], row["decoder_note"])
        assert (row["decoder_note"] is None) == (expected_decoder == "nvdec")
        assert cpu_videos[path]["decoder"] == "pyav"
        gpu_rows = sorted(gpu_seconds[path], key=lambda s: s["timestamp_s"])
        cpu_rows = sorted(cpu_seconds[path], key=lambda s: s["timestamp_s"])
        assert [s["timestamp_s"] for s in gpu_rows] == [s["timestamp_s"] for s in cpu_rows]
        for sec in gpu_rows:  # the stamp read back from the very frame the GPU scan scored
            assert sec["model_scores"][1] == pytest.approx(StampScorer.expected(spec.source_id, sec["timestamp_s"]),
                                                           abs=2e-6), (rel, sec["timestamp_s"])
        assert row["is_highlight"] == (spec.style == "highlight")
        assert row["score"] == pytest.approx(cpu_videos[path]["score"], abs=0.05)
    assert "below NVDEC's minimum" in gpu_videos[str(library / "odd/tiny_hevc.mp4")]["decoder_note"]
    for rel in BROKEN:
        path = str(library / rel)
        assert gpu_videos[path]["status"] == "error"
        assert gpu_videos[path]["error_kind"] == cpu_videos[path]["error_kind"]
    assert tree_hash(library) == before


def nvdec_limitation_of(row: dict) -> str | None:
    from quadvault_dali.probe import probe_video

    return nvdec_limitation(probe_video(row["path"]))
