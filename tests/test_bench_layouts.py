"""The benchmarks' layout options: how a GPU lease compares decoding in one process with several."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import pytest

from conftest import import_benchmark


@pytest.fixture(scope="module")
def sampling_bench():
    return import_benchmark("sampling_bench")


def test_layouts_name_processes_streams_and_dali_run_shape(sampling_bench) -> None:
    assert sampling_bench.parse_layout("4p2x4x4") == (4, 2, 4, 4, True, False, None, False, 0, True, None, None, "dali", "hwaccel", False)
    assert sampling_bench.parse_layout("2x8x8") == (1, 2, 8, 8, True, False, None, False, 0, True, None, None, "dali", "hwaccel", False)
    assert sampling_bench.parse_layout("4x4x4c") == (1, 4, 4, 4, False, False, None, False, 0, True, None, None, "dali", "hwaccel", False)
    assert sampling_bench.parse_layout("2p4x4x4s") == (2, 4, 4, 4, True, True, None, False, 0, True, None, None, "dali", "hwaccel", False)
    assert sampling_bench.parse_layout("4x4x4im").pyav_mux  # the muxer A/B (``sampling._mp4_join``)
    assert sampling_bench.parse_layout("4x4x4g").switch_ms == 5.0  # Python's default (the product's), explicitly
    with pytest.raises(ValueError, match="one decoding process"):
        sampling_bench.parse_layout("2p2x4x4m")
    assert sampling_bench.parse_layout("8x4x4w").prepare_processes == 8  # clips cut in worker processes
    assert sampling_bench.parse_layout("2x4x4gw").prepare_processes == 4
    assert sampling_bench.parse_layout("4x4x4iwn").feed_without_copy  # DALI reads the fed clips in place (default)
    assert not sampling_bench.parse_layout("4x4x4wy").feed_without_copy  # ... or copies them, as before stop 21
    assert sampling_bench.parse_layout("8x4x4wb").budget_samples == 16  # samples sized as for 4 streams x 4
    assert sampling_bench.parse_layout("8x4x4wbe").spread_min_frames == sampling_bench.SPREAD_MIN_FRAMES
    with pytest.raises(ValueError, match="one decoding process"):
        sampling_bench.parse_layout("2p2x4x4n")
    ffmpeg = sampling_bench.parse_layout("8x4x4wf")  # FFmpeg's decoders on NVDEC instead of DALI's
    assert ffmpeg.decode_client == "ffmpeg" and ffmpeg.nvdec_path == "hwaccel" and ffmpeg.prepare_processes == 8
    cuvid = sampling_bench.parse_layout("8x4x4fc")
    assert cuvid.nvdec_path == "cuvid" and not cuvid.low_delay and sampling_bench.parse_layout("8x4x4fcd").low_delay
    for wrong in ("8x4x4d", "8x4x4fd", "8x4x4ec"):  # delay 0 is the cuvid decoders'; 'c' alone means cropped SPS
        with pytest.raises(ValueError, match="4p2x4x4"):
            sampling_bench.parse_layout(wrong)
    from quadvault_dali.sampling import _ffmpeg_decoder
    with sampling_bench.ffmpeg_nvdec("cuvid", True):
        assert _ffmpeg_decoder.NVDEC_PATH == "cuvid" and _ffmpeg_decoder.LOW_DELAY
    assert _ffmpeg_decoder.NVDEC_PATH == "hwaccel" and not _ffmpeg_decoder.LOW_DELAY
    from quadvault_dali.sampling import _clip_decoder
    assert _clip_decoder.FEED_WITHOUT_COPY
    with sampling_bench.feeding_without_copy(False):
        assert not _clip_decoder.FEED_WITHOUT_COPY
    assert _clip_decoder.FEED_WITHOUT_COPY
    from quadvault_dali.sampling import _remux
    with sampling_bench.pyav_muxing(True):
        assert not _remux.JOIN_IN_ORDER
    assert _remux.JOIN_IN_ORDER
    row = sampling_bench.parse_layout("4x4x4si")  # the GIL switch-interval A/B
    assert row.streamed and row.switch_ms == sampling_bench.SHORT_SWITCH_MS
    before = sys.getswitchinterval()
    with sampling_bench.switch_interval(row.switch_ms):
        assert sys.getswitchinterval() == pytest.approx(row.switch_ms / 1000)
    with sampling_bench.switch_interval(None):
        assert sys.getswitchinterval() == before
    assert sys.getswitchinterval() == before
    with pytest.raises(ValueError, match="4p2x4x4"):
        sampling_bench.parse_layout("4p2x4")


def test_a_process_layout_samples_every_copy(sampling_bench, make_clip: Callable[..., Path]) -> None:
    """The benchmark lists one clip many times; in processes each copy is still sampled exactly once."""
    clip = make_clip("bench_layout.mp4", width=128, height=80, fps=30, duration_s=3.0)
    one = sampling_bench.run_sampler("cpu", [clip] * 4, mode="keyframe", size=32, streams=2)
    two = sampling_bench.run_sampler("cpu", [clip] * 4, processes=2, mode="keyframe", size=32, streams=1)
    assert one["frames"] == two["frames"] == 12 and not one["errors"] and not two["errors"]
    assert one["bytes_read"] == two["bytes_read"] > 0


def test_a_dali_row_says_how_its_streams_took_work(sampling_bench, make_clip: Callable[..., Path]) -> None:
    """A row of the DALI engine (its CPU decoder here) reports the clips queued when a stream took work and the
    share of the streams' time spent waiting for one: whether the decode side or the prepare side limits."""
    from quadvault_dali.sampling._gpu import DaliSampler

    clip = make_clip("bench_take.webm", codec="vp9", width=128, height=80, fps=30, duration_s=3.0, source_id=5)
    with DaliSampler(mode="keyframe", size=32, streams=2) as sampler:
        row = sampling_bench._measure(sampler, "cpu", [clip] * 6, warm_up=1)
    stats = sampler.decode_stats.as_dict()
    assert row["frames"] == 18 and not row["errors"] and row["dali_samples"] >= 1
    assert stats["takes"] >= row["dali_runs"] >= 1  # the warm-up's takes too
    assert row["queued_at_take_mean"] >= 1.0 and 0.0 <= row["decode_wait_share"] <= 1.0
    assert stats["queued_at_takes"] >= stats["takes"] and stats["decode_wait_s"] >= 0.0


def test_an_ffmpeg_client_row_counts_its_decoders(sampling_bench, make_clip: Callable[..., Path]) -> None:
    """A row of the FFmpeg decode client (its CPU stand-in here): one decoder per stream and set-up, reused for
    every video, and how often the streams drained them."""
    from quadvault_dali.sampling._gpu import DaliSampler

    clip = make_clip("bench_ffmpeg.mp4", width=128, height=80, fps=30, duration_s=3.0, source_id=6)
    with DaliSampler(mode="keyframe", size=32, streams=2, decode_client="ffmpeg") as sampler:
        row = sampling_bench._measure(sampler, "cpu", [clip] * 6, warm_up=1)
    stats = sampler.decode_stats.as_dict()
    assert row["frames"] == 18 and not row["errors"]
    assert 1 <= stats["decoder_opens"] <= 2  # one per stream that took work, over warm-up and row alike
    assert stats["frames_returned"] == 18 + 3
    assert row["decoder_opens"] <= 1 and row["drains"] >= 1 and row["frames_on_device"] == 0  # CPU stand-in


def test_the_prepare_bench_feeds_both_clients_every_frame(make_clip: Callable[..., Path],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """``prep_bench``: the gpu backend's host side with decoders that decode nothing, DALI's joined MP4s and the
    FFmpeg client's packets alike; every sampled second comes through, and no decode stream died on the way
    (one that dies at the end loses no frames, but says so in the log)."""
    prep_bench = import_benchmark("prep_bench")
    clip = make_clip("bench_prep.mp4", width=128, height=80, fps=30, duration_s=3.0, source_id=7)
    with caplog.at_level("ERROR"):
        rows = prep_bench.measure([clip] * 6, streams=2, size=32, repeats=1, muxers=("join", "packets"))
    assert not [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert {(r["uncrop_sps"], r["mux"]) for r in rows} == {(True, "join"), (False, "join"), (False, "packets")}
    assert all(r["frames"] == 18 for r in rows), rows


def test_the_prepare_bench_can_wait_as_dali_does_so_short_clips_merge(make_clip: Callable[..., Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``prep_bench --dali-costs``: a null decoder that takes DALI's time per sample lets the queue fill, so short
    videos' clips merge into samples as on a GPU (with none, each clip goes alone); every frame still comes."""
    prep_bench = import_benchmark("prep_bench")
    clip = make_clip("bench_prep.mp4", width=128, height=80, fps=30, duration_s=3.0, source_id=7)
    monkeypatch.setattr(prep_bench, "DALI_COSTS", (0.1, 0.0))
    rows = prep_bench.measure([clip] * 16, streams=1, size=32, repeats=1, muxers=("join",))
    assert all(r["frames"] == 48 for r in rows), rows
    # 3 frames a video: 4+ videos a sample on average (3.4-6 without the wait, 24 with 30 ms, on 2 cores)
    assert all(r["frames_per_sample"] >= 12 and r["dali_costs_ms"] == [100.0, 0.0] for r in rows), rows


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_joined_copies_make_one_longer_video(sampling_bench, make_clip: Callable[..., Path], codec: str) -> None:
    """``--join-copies``: copies of a clip played one after another, packets copied: K times as long, a keyframe
    every second throughout, and each sampled second shows the clip's own second modulo its length."""
    from quadvault_dali.probe import probe_video
    from quadvault_dali.sampling import create_sampler
    from quadvault_dali.synth import read_stamp

    clip = make_clip(f"bench_join_{codec}.mp4", codec=codec, width=160, height=96, fps=30, duration_s=3.0,
                     keyframe_interval_s=1.0, source_id=8)
    joined = sampling_bench.joined_clip(clip, 4)
    assert sampling_bench.joined_clip(clip, 1) == clip and sampling_bench.joined_clip(clip, 4) == joined
    info = probe_video(joined)
    assert info.duration_s == pytest.approx(12.0, abs=0.05) and info.frame_count == 360
    assert [round(t, 3) for t in info.keyframe_times] == [float(s) for s in range(12)]
    frames, times, _ = create_sampler("cpu", mode="keyframe", size=64).sample_video(joined)
    assert times == [float(s) for s in range(12)]
    assert [round(read_stamp(f.numpy()).time_s, 2) for f in frames] == [float(s % 3) for s in range(12)]


def test_scan_layouts_name_processes_streams_and_mode() -> None:
    scan_bench = import_benchmark("scan_bench")
    assert scan_bench.parse_scan_layout("4x2") == (4, 2, "auto", False, None, False, 0, False, None, None, "dali")
    assert scan_bench.parse_scan_layout("2x4k") == (2, 4, "keyframe", False, None, False, 0, False, None, None, "dali")
    assert scan_bench.parse_scan_layout("1x4ks") == (1, 4, "keyframe", True, None, False, 0, False, None, None, "dali")
    assert scan_bench.parse_scan_layout("1x4ki") == (1, 4, "keyframe", False, scan_bench.SHORT_SWITCH_MS, False, 0,
                                                     False, None, None, "dali")
    assert scan_bench.parse_scan_layout("1x4f") == (1, 4, "auto", False, None, False, 0, True, None, None, "dali")
    with pytest.raises(ValueError, match="2x4f"):
        scan_bench.parse_scan_layout("2x4f")
    assert scan_bench.parse_scan_layout("1x4kim")[5] and scan_bench.parse_scan_layout("1x8kw")[6] == 8
    assert scan_bench.parse_scan_layout("1x4kg")[4] == 5.0
    assert scan_bench.parse_scan_layout("1x8we")[8:] == (scan_bench.SPREAD_MIN_FRAMES, None, "dali")
    assert scan_bench.parse_scan_layout("1x8kwfeb")[7:] == (True, scan_bench.SPREAD_MIN_FRAMES,
                                                           scan_bench.BUDGET_SAMPLES, "dali")
    assert scan_bench.parse_scan_layout("1x8kwv")[10] == "ffmpeg"  # FFmpeg's NVDEC decoders, not DALI's
    with pytest.raises(ValueError, match="2x4km"):
        scan_bench.parse_scan_layout("2x4km")
    with pytest.raises(ValueError, match="2x4k"):
        scan_bench.parse_scan_layout("2p4")


def test_a_scan_layout_row_may_run_under_the_environment_of_an_experiment() -> None:
    """The next lease tells the causes of DALI's illegal address apart with the same row under different
    allocators (``1x8k`` against ``1x8k+pool0``): a name picks a known environment, a typo stops the run."""
    scan_bench = import_benchmark("scan_bench")
    assert scan_bench.parse_row_env("1x8k") == ("1x8k", {})
    assert scan_bench.parse_row_env("1x8k+pool0+torchnocache") == (
        "1x8k", {"DALI_USE_DEVICE_MEM_POOL": "0", "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
    with pytest.raises(ValueError, match="unknown row environment 'pool'"):
        scan_bench.parse_row_env("1x8k+pool")


def test_clips_are_chosen_by_name(sampling_bench) -> None:
    specs = sampling_bench.clip_specs(True, 4.0)
    assert [s.name for s in sampling_bench.select_clips(specs, "")] == [s.name for s in specs]
    assert [s.name for s in sampling_bench.select_clips(specs, "720p30-h264-k2")] == ["720p30-h264-k2"]
    with pytest.raises(ValueError, match="no clip named \\['nope'\\]"):
        sampling_bench.select_clips(specs, "720p30-h264-k1,nope")
    extra = sampling_bench.extra_clip_specs(4.0)
    assert [s.name for s in sampling_bench.select_clips(specs, "", extra)] == [s.name for s in specs]
    chosen = sampling_bench.select_clips(specs, "720p30-h264-k1,1080p30-h264high-k2.0", extra)
    assert [s.name for s in chosen] == ["720p30-h264-k1", "1080p30-h264high-k2.0"]
    assert chosen[1].x264_preset == "veryfast"


def test_the_high_profile_clip_has_b_frames_as_drones_write(tmp_path: Path) -> None:
    """The standard 1080p clips are Constrained Baseline (ultrafast, no B-frames); this one is not."""
    import av

    from quadvault_dali.synth import SynthSpec, make_video

    def profile(preset: str | None) -> tuple[str, bool]:
        path = make_video(tmp_path / f"{preset}.mp4", SynthSpec(codec="h264", width=1920, height=1080, fps=30,
                                                                duration_s=0.3, x264_preset=preset))
        with av.open(str(path)) as c:
            ctx = c.streams.video[0].codec_context
            return ctx.profile, bool(ctx.has_b_frames)

    assert profile(None) == ("Constrained Baseline", False)
    assert profile("veryfast") == ("High", True)


def test_scan_completion_profile_separates_start_up_from_the_steady_rate(tmp_path: Path) -> None:
    """20 videos of 100 MB, the first done 2 s after the start, then one every 0.5 s: the steady window (10 % to
    90 % of the bytes: the 2nd to the 18th video) is 8 s for 1.6 GB, 200 MB/s, whatever the start-up cost."""
    from datetime import datetime, timedelta, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq

    scan_bench = import_benchmark("scan_bench")
    started = datetime(2026, 11, 27, tzinfo=timezone.utc)
    done = [started + timedelta(seconds=2 + 0.5 * i) for i in range(20)]
    (tmp_path / "videos").mkdir()
    pq.write_table(pa.table({"scanned_at": pa.array(done[::-1], pa.timestamp("us", tz="UTC")),
                             "size_bytes": pa.array([100_000_000] * 20, pa.int64())}),
                   tmp_path / "videos" / "part-00000.parquet")
    profile = scan_bench.completion_profile(tmp_path, started, wall=12.0)
    assert profile["first_video_s"] == 2.0 and profile["last_video_s"] == 11.5
    assert profile["after_last_video_s"] == 0.5
    assert profile["steady_window_s"] == [2.5, 10.5]
    assert profile["steady_mb_per_s"] == 200.0
    assert profile["scan_wall_at_steady_rate_s"] == 10.0  # the library's 2 GB at 200 MB/s


CRASHING_SCAN_HOOK = '''
import os, signal
if os.environ.get("QV_TEST_SCAN_ABORT"):
    import quadvault_dali.scan.runner as _runner
    def scan_library(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGABRT)  # as DALI's terminate() on CUDA_ERROR_ILLEGAL_ADDRESS
    _runner.scan_library = scan_library
'''


def test_each_bench_scan_runs_in_a_fresh_process_and_a_crash_costs_only_its_row(
        tmp_path: Path, make_clip: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop 25: DALI aborted the scan bench's process mid-lease, and every later row of the call was lost. A row's
    scan now runs in a child: the same numbers as in this process, and an abort there is an error for that row."""
    from conftest import BENCHMARKS

    scan_bench = import_benchmark("scan_bench")
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the spawned child imports scan_bench by name
    files = [make_clip(f"bench_iso_{i}.mp4", width=128, height=80, duration_s=3.0, source_id=80 + i)
             for i in range(2)]
    model = scan_bench.make_model(tmp_path)
    alone = scan_bench.run_scan_isolated(files, tmp_path / "a", "cpu", model, 1, 4, mode="keyframe")
    here = scan_bench.run_scan(files, tmp_path / "b", "cpu", model, 1, 4, mode="keyframe")
    assert (alone["videos"], alone["sampled_frames"], alone["errors"]) == (here["videos"], here["sampled_frames"], 0)
    assert alone["sampled_frames"] == 6
    # the row says where its start-up went (the child's phases cross the pipe as JSON)
    assert alone["phases"]["scanning"] <= alone["phases"]["first_frames_scored"] <= alone["wall_s"], alone["phases"]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASHING_SCAN_HOOK)
    monkeypatch.setenv("QV_TEST_SCAN_ABORT", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(RuntimeError, match=r"the scan process died \(SIGABRT\)"):
        scan_bench.run_scan_isolated(files, tmp_path / "c", "cpu", model, 1, 4, mode="keyframe")
