"""Which videos the gpu backend sends to NVDEC, decided from the probe alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import pytest

from quadvault_dali.probe import VideoInfo, probe_video
from quadvault_dali.sampling._nvdec import dali_cpu_limitation, nvdec_limitation


@pytest.fixture(scope="module")
def h264_info(make_clip: Callable[..., Path]) -> VideoInfo:
    return probe_video(make_clip("nvdec_caps.mp4", codec="h264", width=256, height=160, duration_s=1.0))


@pytest.mark.parametrize(("changes", "verdict"), [
    ({}, None),
    ({"codec": "hevc", "pix_fmt": "yuv420p10le", "coded_width": 3840, "coded_height": 2160}, None),
    ({"codec": "hevc", "coded_width": 7680, "coded_height": 4320}, None),
    ({"codec": "vp9", "pix_fmt": "yuv420p12le"}, None),
    ({"pix_fmt": "yuvj420p"}, None),
    ({"pix_fmt": "gray"}, None),
    ({"codec": "av1"}, "does not decode av1"),
    ({"codec": "prores", "pix_fmt": "yuv422p10le"}, "does not decode prores"),
    ({"codec": "hevc", "coded_width": 96, "coded_height": 64}, "96x64 is below NVDEC's minimum for hevc (144x144)"),
    ({"codec": "vp9", "coded_width": 160, "coded_height": 120}, "below NVDEC's minimum for vp9"),
    ({"coded_width": 7680, "coded_height": 4320}, "7680x4320 is above NVDEC's maximum for h264"),
    ({"pix_fmt": "yuv422p"}, "4:2:0 only, this h264 is yuv422p"),
    ({"codec": "mjpeg", "pix_fmt": "yuvj420p"}, "DALI's GPU video decoder does not take MJPEG"),  # seen on the H100
    ({"codec": "hevc", "pix_fmt": "yuv444p10le"}, "4:2:0 only"),
    ({"pix_fmt": "yuv420p10le"}, "h264 up to 8 bits, this one is 10-bit"),
])
def test_nvdec_limitation(h264_info: VideoInfo, changes: dict, verdict: str | None) -> None:
    info = dataclasses.replace(h264_info, **changes)
    if verdict is None:
        assert nvdec_limitation(info) is None
    else:
        assert verdict in (nvdec_limitation(info) or "")


def test_dali_cpu_decoder_takes_only_vp8_vp9_mjpeg(h264_info: VideoInfo) -> None:
    assert "does not decode h264" in (dali_cpu_limitation(h264_info) or "")
    for codec in ("vp8", "vp9", "mjpeg"):
        assert dali_cpu_limitation(dataclasses.replace(h264_info, codec=codec)) is None


def test_real_files_from_the_corpus(corpus: Path) -> None:
    mp4 = corpus / "androidx+media/libraries/test_data/src/test/assets/media/mp4"
    assert "av1" in (nvdec_limitation(probe_video(mp4 / "sample_with_colr_mdcv_and_clli.mp4")) or "")
    for name in ("hdr10-video-with-sdr-container.mp4", "8k24fps_300ms.mp4", "portrait_4k60.mp4"):
        assert nvdec_limitation(probe_video(mp4 / name)) is None, name  # 10-bit HEVC, 8K HEVC, rotated 4K H.264
    assert nvdec_limitation(probe_video(corpus / "gopro+gpmf-parser/samples/karma.mp4")) is None


def test_probe_cli_says_which_videos_nvdec_takes(make_clip: Callable[..., Path], tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from quadvault_dali.cli.main import main

    ok = make_clip("nvdec_cli_ok.mp4", codec="h264", width=256, height=160, duration_s=1.0)
    tiny = make_clip("nvdec_cli_tiny.mp4", codec="hevc", width=96, height=64, duration_s=1.0)
    table = CliRunner().invoke(main, ["probe", str(ok), str(tiny)])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split()[-2:] == ["nvdec", "path"]
    verdicts = {line.split()[-1]: line.split()[-2] for line in lines[1:] if line.startswith(("h264", "hevc"))}
    assert verdicts == {str(ok): "yes", str(tiny): "no"}
    as_json = CliRunner().invoke(main, ["probe", "--json", str(ok), str(tiny)])
    rows = {r["path"]: r for r in map(json.loads, as_json.output.splitlines())}
    assert rows[str(ok)]["nvdec_limitation"] is None
    assert "below NVDEC's minimum for hevc" in rows[str(tiny)]["nvdec_limitation"]


def test_a_gpu_without_the_nvdec_library(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """CUDA works but the driver's decode library is missing (a container without the 'video' capability):
    auto decodes on the CPU and says why; an explicit gpu is an error naming the library."""
    import quadvault_dali.device as device
    import quadvault_dali.sampling._base as base
    from quadvault_dali.errors import BackendUnavailableError
    from quadvault_dali.sampling import create_sampler
    from quadvault_dali.sampling._cpu import CpuSampler

    reason = "the NVIDIA video decode library libnvcuvid.so.1 cannot be loaded (not found)"
    monkeypatch.setattr(device, "gpu_status", lambda: (True, "CUDA device Fake"))
    monkeypatch.setattr(base, "nvdec_status", lambda: (False, reason))
    with caplog.at_level("WARNING"):
        sampler = create_sampler("auto", size=32)
    assert isinstance(sampler, CpuSampler)
    assert f"decoding video on the CPU: {reason}" in caplog.text
    with pytest.raises(BackendUnavailableError, match="--device gpu asked for, but the NVIDIA video decode library"):
        create_sampler("gpu", size=32)
