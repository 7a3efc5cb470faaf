"""The gpu backend's DALI graph and machinery.

(a) Without a GPU: the same DALI graph and the same sampler machinery run with DALI's CPU video decoder
    (VP9/MJPEG only), and every frame's stamp is checked against its timestamp.
(b) ``@pytest.mark.gpu``: the real ``gpu`` backend on NVDEC, checked frame by frame and against ``cpu``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from quadvault_dali.errors import BackendUnavailableError
from quadvault_dali.pipelines import video_sampling_pipeline
from quadvault_dali.sampling import _clip_decoder, _remux
from quadvault_dali.sampling._clip_decoder import feed_clips
from quadvault_dali.probe import probe_video
from quadvault_dali.sampling import FrameBatch, create_sampler
from quadvault_dali.sampling._gpu import DaliSampler, GpuSampler
from quadvault_dali.sampling._plan import plan_samples
from quadvault_dali.sampling._reader import CountingFile
from quadvault_dali.sampling._remux import plan_clips
from quadvault_dali.probe import open_container, probe_open
from quadvault_dali.synth import read_stamp

SIZE = 64
STAMP_TOL = 0.006


def _stamps(frames: torch.Tensor) -> list[tuple[float, int] | None]:
    out = []
    for f in frames.cpu().numpy():
        s = read_stamp(f)
        out.append((s.time_s, s.source_id) if s else None)
    return out


def _collect(batches: list[FrameBatch]) -> tuple[dict[Path, list[float]], dict[Path, list], list]:
    times: dict[Path, list[float]] = {}
    stamps: dict[Path, list] = {}
    outcomes = []
    for b in batches:
        for p, t, s in zip(b.paths, b.timestamps, _stamps(b.frames)):
            times.setdefault(p, []).append(t)
            stamps.setdefault(p, []).append(s)
        outcomes.extend(b.completed)
    return times, stamps, outcomes


def _check_like_the_cpu_backend(videos: list[tuple[Path, int]], times: dict[Path, list[float]],
                                stamps: dict[Path, list], mode: str) -> None:
    """Every video got exactly the seconds the cpu backend samples, each frame showing its own second."""
    cpu = create_sampler("cpu", mode=mode, size=SIZE)
    for path, sid in videos:
        assert times[path] == pytest.approx(cpu.sample_video(path)[1], abs=1e-6)
        _check_stamps(times[path], stamps[path], sid)


def _check_stamps(times: list[float], stamps: list, source_id: int) -> None:
    assert times, "no frames"
    for t, s in zip(times, stamps):
        assert s is not None, f"frame at {t}s has no readable stamp"
        assert abs(s[0] - t) <= STAMP_TOL and s[1] == source_id, f"frame at {t}s shows {s}"


# --- (a) the same graph and machinery on DALI's CPU decoder ----------------------------------------

def test_pipeline_graph_on_cpu_decodes_the_wanted_frames(make_clip: Callable[..., Path]) -> None:
    path = make_clip("gpu_vp9_graph.mp4", codec="vp9", width=128, height=80, fps=30, duration_s=5.0, source_id=3)
    fh = CountingFile(path)
    container = open_container(path, fh)
    info, index = probe_open(container, path)
    clips = list(plan_clips(plan_samples(info, index, fps=1.0, mode="exact"), container, fh, max_frames=2))
    container.close(), fh.close()
    for square, shape in ((True, (SIZE, SIZE)), (False, (SIZE, round(128 * SIZE / 80)))):
        pipe = video_sampling_pipeline(decoder_device="cpu", size=SIZE, square=square, batch_size=len(clips),
                                       num_threads=1, device_id=None)
        pipe.build()
        feed_clips(pipe, clips)
        (out,) = pipe.run()
        for i, clip in enumerate(clips):
            frames = torch.from_dlpack(out[i])
            assert tuple(frames.shape) == (len(clip), 3, *shape)
            _check_stamps(clip.times, _stamps(frames), 3)


def test_a_frame_index_past_the_clip_fails_instead_of_a_black_frame(make_clip: Callable[..., Path]) -> None:
    """DALI pads out-of-range indices with black frames by default; they would be scored as footage."""
    path = make_clip("gpu_vp9_graph.mp4", codec="vp9", width=128, height=80, fps=30, duration_s=5.0, source_id=3)
    fh = CountingFile(path)
    container = open_container(path, fh)
    info, index = probe_open(container, path)
    clip = list(plan_clips(plan_samples(info, index, fps=1.0, mode="exact"), container, fh, max_frames=2))[0]
    container.close(), fh.close()
    pipe = video_sampling_pipeline(decoder_device="cpu", size=SIZE, batch_size=1, num_threads=1, device_id=None)
    pipe.build()
    feed_clips(pipe, [clip], indices=[np.array([0, clip.packets + 5], np.int32)])
    with pytest.raises(RuntimeError, match="out-of-bounds frame index"):
        pipe.run()


def test_pipeline_keeps_each_clips_region_of_interest(make_clip: Callable[..., Path]) -> None:
    """A clip decoded to its coded size (uncropped H.264) says which part is the picture: the resize takes
    only that part. Here the top half of a VP9 clip, at its own scale, against the whole clip unscaled."""
    path = make_clip("gpu_vp9_graph.mp4", codec="vp9", width=128, height=80, fps=30, duration_s=5.0, source_id=3)
    fh = CountingFile(path)
    container = open_container(path, fh)
    info, index = probe_open(container, path)
    (clip,) = plan_clips(plan_samples(info, index, fps=1.0, mode="keyframe"), container, fh)
    container.close(), fh.close()
    outputs = []
    for roi, size in (((1.0, 1.0), 80), ((0.5, 1.0), 40)):
        pipe = video_sampling_pipeline(decoder_device="cpu", size=size, square=False, batch_size=1, num_threads=1,
                                       device_id=None)
        pipe.build()
        clip.roi = roi
        feed_clips(pipe, [clip])
        (out,) = pipe.run()
        outputs.append(torch.from_dlpack(out[0]).clone())
    whole, top = outputs
    assert tuple(whole.shape) == (len(clip), 3, 80, 128) and tuple(top.shape) == (len(clip), 3, 40, 128)
    assert (top.float() - whole[:, :, :40].float()).abs().max().item() <= 1.0


def test_black_encoder_padding_never_reaches_the_picture() -> None:
    """Some encoders pad the coded picture with black (a Dolby Vision H.264 file in the corpus does). The kept
    region must be resized exactly as if the padding were not there: the same pixels as the frames cut first."""
    from nvidia.dali import fn, pipeline_def, types

    from quadvault_dali.pipelines import to_model_input

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def graph():  # type: ignore[no-untyped-def]
        frames = fn.external_source(name="frames", dtype=types.UINT8, ndim=4, layout="FHWC")
        roi = fn.external_source(name="roi", dtype=types.FLOAT, ndim=1)
        return to_model_input(frames, roi, size=30, square=False)

    rng = np.random.default_rng(3)
    picture = rng.integers(120, 220, size=(2, 120, 200, 3), dtype=np.uint8)  # the displayed 200x120
    padded = np.concatenate([picture, np.zeros((2, 8, 200, 3), np.uint8)], axis=1)  # coded 200x128, black pad
    pipe = graph()
    pipe.build()
    pipe.feed_input("frames", [padded, picture])
    pipe.feed_input("roi", [np.array([120 / 128, 1.0], np.float32), np.array([1.0, 1.0], np.float32)])
    (out,) = pipe.run()
    from_padded, from_picture = (torch.from_dlpack(out[i]).clone() for i in range(2))
    assert tuple(from_padded.shape) == (2, 3, 30, 50)
    assert torch.equal(from_padded, from_picture)


def test_pipeline_rejects_unknown_decoder_device() -> None:
    with pytest.raises(ValueError, match="decoder_device"):
        video_sampling_pipeline(decoder_device="gpu", batch_size=1, num_threads=1, device_id=None)


@pytest.fixture(scope="module")
def cpu_decodable(make_clip: Callable[..., Path]) -> list[tuple[Path, int]]:
    """VP9 and MJPEG clips (what DALI's CPU decoder knows), with their source ids."""
    specs = [
        ("gpu_vp9_30.mp4", dict(codec="vp9", fps=30, keyframe_interval_s=1.0), 11),
        ("gpu_vp9_25_rot.mp4", dict(codec="vp9", fps=25, keyframe_interval_s=2.0, rotation=90), 12),
        ("gpu_mjpeg_24.mp4", dict(codec="mjpeg", fps=24), 13),
        ("gpu_vp9_vfr.webm", dict(codec="vp9", fps=30, vfr=True), 14),
    ]
    return [(make_clip(name, width=128, height=80, duration_s=4.0, source_id=sid, **spec), sid)
            for name, spec, sid in specs]


@pytest.mark.parametrize("stream", [False, True], ids=["per-sample", "streamed"])
@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_engine_on_cpu_decoder_matches_cpu_backend(cpu_decodable: list[tuple[Path, int]],
                                                   broken_clips: dict[str, Path], mode: str, stream: bool) -> None:
    """Also with the streaming decoder (fn.experimental.inputs.video, every frame of a clip decoded, the
    wanted ones kept): exact mode's GOP prefixes, rotation, MJPEG and a variable frame rate included."""
    videos = [p for p, _ in cpu_decodable]
    videos.insert(1, broken_clips["text"])
    videos.insert(3, broken_clips["truncated"])
    sampler = DaliSampler(fps=1.0, mode=mode, size=SIZE, batch_size=5, streams=2, stream_decode=stream)
    batches = list(sampler.iter_batches(videos))
    assert all(len(b) <= 5 for b in batches)
    times, stamps, outcomes = _collect(batches)
    assert [o.path for o in outcomes] == videos  # one outcome each, in input order
    assert [o.ok for o in outcomes] == [p not in broken_clips.values() for p in videos]
    cpu = create_sampler("cpu", fps=1.0, mode=mode, size=SIZE)
    for path, sid in cpu_decodable:
        _check_stamps(times[path], stamps[path], sid)
        _, cpu_times, cpu_outcome = cpu.sample_video(path)
        assert times[path] == pytest.approx(cpu_times, abs=1e-6)
        outcome = next(o for o in outcomes if o.path == path)
        assert outcome.frames == len(times[path]) and outcome.mode == cpu_outcome.mode == mode
        assert outcome.frames_expected == cpu_outcome.frames_expected == outcome.frames
        assert outcome.bytes_read > 0


@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_feeding_clips_without_a_copy_decodes_the_same_frames(cpu_decodable: list[tuple[Path, int]],
                                                              monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """DALI reading the fed clips in place (``_clip_decoder.FEED_WITHOUT_COPY``): every clip's bytes stay alive
    until its run returns, so the frames are the copying pipeline's, bit for bit."""
    import quadvault_dali.sampling._clip_decoder as clip_decoder

    paths = [p for p, _ in cpu_decodable]
    runs = []
    for in_place in (False, True):
        monkeypatch.setattr(clip_decoder, "FEED_WITHOUT_COPY", in_place)
        sampler = DaliSampler(mode=mode, size=SIZE, batch_size=8, streams=2)
        batches = list(sampler.iter_batches(paths))
        runs.append(([(str(p), t) for b in batches for p, t in zip(b.paths, b.timestamps)],
                     torch.cat([b.frames for b in batches if len(b)])))
        assert sampler.decode_stats.frames > 0
    assert runs[1][0] == runs[0][0] and torch.equal(runs[1][1], runs[0][1])


@pytest.mark.parametrize("matrix", ["bt709", "bt2020nc"])
def test_engine_gives_the_colours_of_the_tagged_matrix(make_clip: Callable[..., Path], matrix: str) -> None:
    """DALI converts every video as BT.601; BT.709-tagged footage (nearly all HD drone video) must still come
    out in the CPU decoder's colours, or one model scores the two backends' frames differently. Without the
    correction the red channel is off by ~10 levels on average here; with it, resampling noise remains."""
    path = make_clip(f"colour_{matrix}.webm", codec="vp9", width=160, height=96, fps=10, duration_s=2.0,
                     style="highlight", color_matrix=matrix, source_id=7)
    assert probe_video(path).color_matrix == matrix
    cpu, cpu_times, _ = create_sampler("cpu", mode="exact", size=SIZE, square=False).sample_video(path)
    dali, dali_times, outcome = DaliSampler(mode="exact", size=SIZE, square=False).sample_video(path)
    assert outcome.decoder == "dali-cpu" and dali_times == cpu_times and dali.shape == cpu.shape
    diff = dali.float() - cpu.float()
    bias = diff.mean(dim=(0, 2, 3))  # per channel: a matrix mismatch shifts whole channels
    assert bias.abs().max().item() < 1.0, f"per-channel bias {bias.tolist()}"
    assert diff.abs().mean().item() < 2.5


def test_engine_and_cpu_backend_agree_on_a_strong_downscale(make_clip: Callable[..., Path]) -> None:
    """The H100's failing geometry (640x360 -> 64 px square) on DALI's CPU decoder: the cpu backend used to
    come out 2 levels darker (swscale's truncating fast path), which read as the GPU being too bright."""
    path = make_clip("colour_downscale.webm", codec="vp9", width=640, height=360, fps=30, duration_s=3.0,
                     style="highlight", color_matrix="bt709", source_id=5)
    cpu, _, _ = create_sampler("cpu", mode="keyframe", size=SIZE).sample_video(path)
    dali, _, _ = DaliSampler(mode="keyframe", size=SIZE).sample_video(path)
    bias = (dali.float() - cpu.float()).mean(dim=(0, 2, 3))
    assert bias.abs().max().item() < 0.5, f"per-channel bias {bias.tolist()}"


def test_engine_keeps_display_orientation_without_square(cpu_decodable: list[tuple[Path, int]]) -> None:
    path, sid = cpu_decodable[1]  # 128x80 as displayed, stored rotated by 90 degrees
    frames, times, _ = DaliSampler(size=SIZE, square=False, mode="keyframe").sample_video(path)
    assert tuple(frames.shape[1:]) == (3, SIZE, round(128 * SIZE / 80))
    cpu_frames, _, _ = create_sampler("cpu", size=SIZE, square=False, mode="keyframe").sample_video(path)
    assert frames.shape == cpu_frames.shape
    _check_stamps(times, _stamps(frames), sid)


class _TrustingDaliSampler(DaliSampler):
    """Sends every video to DALI, as if the capability check had missed one it cannot decode."""

    def _limitation(self, info: object) -> None:
        return None


def test_a_video_dali_fails_on_is_decoded_on_the_cpu(cpu_decodable: list[tuple[Path, int]],
                                                      make_clip: Callable[..., Path]) -> None:
    """DALI's CPU decoder cannot do H.264 (as NVDEC might fail on a file the capability table let through):
    that clip fails alone, the batch partner still decodes, and the CPU decoder delivers the failed video."""
    h264 = make_clip("gpu_h264_for_cpu_decoder.mp4", codec="h264", width=128, height=80, duration_s=3.0,
                     source_id=31)
    vp9, sid = cpu_decodable[0]
    batches = list(_TrustingDaliSampler(mode="keyframe", size=SIZE, streams=1).iter_batches([h264, vp9]))
    times, stamps, outcomes = _collect(batches)
    assert all(o.ok for o in outcomes), [str(o.error) for o in outcomes]
    assert outcomes[0].decoder == "pyav" and outcomes[1].decoder == "dali-cpu"
    assert outcomes[0].fallback_reason.startswith("dali-cpu failed at 0.00s: ")
    assert outcomes[0].fallback_reason.endswith("decoded on the CPU from the start")
    assert times[h264] == [0.0, 1.0, 2.0] and outcomes[0].frames == 3
    _check_stamps(times[h264], stamps[h264], 31)
    _check_stamps(times[vp9], stamps[vp9], sid)


def test_without_cpu_fallback_a_failed_clip_is_an_error_outcome(make_clip: Callable[..., Path],
                                                                 cpu_decodable: list[tuple[Path, int]]) -> None:
    h264 = make_clip("gpu_h264_for_cpu_decoder.mp4", codec="h264", width=128, height=80, duration_s=3.0,
                     source_id=31)
    vp9, sid = cpu_decodable[0]
    sampler = _TrustingDaliSampler(mode="keyframe", size=SIZE, streams=1, cpu_fallback=False)
    times, stamps, outcomes = _collect(list(sampler.iter_batches([h264, vp9])))
    assert not outcomes[0].ok and "GPU decoding failed (dali-cpu failed at 0.00s" in str(outcomes[0].error)
    assert outcomes[1].ok and h264 not in times
    _check_stamps(times[vp9], stamps[vp9], sid)


@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_the_cpu_takes_over_mid_video_without_gaps_or_repeats(cpu_decodable: list[tuple[Path, int]],
                                                              monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """The hardware decoder fails on the clips from 2 s on: the frames before come from DALI, the rest from
    the CPU decoder, and the video's seconds are exactly those the cpu backend samples."""
    import quadvault_dali.sampling._gpu as gpu

    class FailsFrom2s(gpu.ClipDecoder):
        def decode(self, clips):  # type: ignore[no-untyped-def]  # a clip holding any frame from 2 s on fails
            good = [c for c in clips if max(c.times) < 2.0]
            decoded = iter(super().decode(good) if good else [])
            return [next(decoded) if max(c.times) < 2.0 else RuntimeError("injected NVDEC failure") for c in clips]

    monkeypatch.setattr(_remux, "frame_budget", lambda width, height, pixels=None: 2)  # clips (and samples) of 2 frames
    monkeypatch.setattr(gpu, "ClipDecoder", FailsFrom2s)
    chosen = [cpu_decodable[i] for i in (0, 2, 3)]  # 1 s keyframes: clips starting at 0, 2, ... s
    videos = [p for p, _ in chosen]
    batches = list(DaliSampler(mode=mode, size=SIZE, batch_size=3, streams=2).iter_batches(videos))
    times, stamps, outcomes = _collect(batches)
    assert [o.path for o in outcomes] == videos and all(o.ok for o in outcomes), [str(o.error) for o in outcomes]
    cpu = create_sampler("cpu", mode=mode, size=SIZE)
    for (path, sid), outcome in zip(chosen, outcomes):
        _, cpu_times, _ = cpu.sample_video(path)
        assert times[path] == pytest.approx(cpu_times, abs=1e-6)  # no second missing, none twice
        _check_stamps(times[path], stamps[path], sid)
        assert outcome.frames == len(cpu_times)
        assert outcome.decoder == "dali-cpu+pyav", outcome
        assert "injected NVDEC failure; decoded on the CPU after " in outcome.fallback_reason


@pytest.fixture(scope="module")
def short_vp9(make_clip: Callable[..., Path]) -> list[tuple[Path, int]]:
    """Five 3-second clips from one camera setting (equal codec set-up), different content each."""
    return [(make_clip(f"short_vp9_{sid}.mp4", codec="vp9", width=128, height=80, fps=30, duration_s=3.0,
                       keyframe_interval_s=1.0, source_id=sid), sid) for sid in range(41, 46)]


class _CountingDecoder:
    """Wraps the sampler's ClipDecoder: records how many frames each DALI sample held."""

    samples: list[int] = []

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch, fails_on: set[bytes] = frozenset(),  # type: ignore[assignment]
                prepared_first: int = 0) -> list[int]:
        """``prepared_first``: the first decode waits until that many videos are cut into clips, so what the
        stream finds queued (and merges) does not depend on how busy the machine is."""
        import quadvault_dali.sampling._gpu as gpu

        seen: list[int] = []
        prepared = threading.Semaphore(0)
        real_prepare = gpu.DaliSampler._prepare

        def prepare(self, task, work, stop):  # type: ignore[no-untyped-def]
            try:
                real_prepare(self, task, work, stop)
            finally:
                prepared.release()

        monkeypatch.setattr(gpu.DaliSampler, "_prepare", prepare)

        class Counting(gpu.ClipDecoder):
            def decode(self, clips):  # type: ignore[no-untyped-def]
                if not seen:
                    for _ in range(prepared_first):
                        assert prepared.acquire(timeout=60), "the videos were not prepared"
                seen.extend(len(c) for c in clips)
                bad = [any(p.data in fails_on for run in c.runs for p in run.packets) for c in clips]
                decoded = iter(super().decode([c for c, b in zip(clips, bad) if not b]) if not all(bad) else [])
                return [RuntimeError("injected decode failure") if b else next(decoded) for b in bad]

        monkeypatch.setattr(gpu, "ClipDecoder", Counting)
        return seen


@pytest.mark.parametrize(("mode", "layout"), [("keyframe", (2, 2)), ("exact", (2, 2)), ("keyframe", (8, 4))])
def test_short_videos_share_dali_samples_and_keep_their_frames(short_vp9: list[tuple[Path, int]],
                                                              monkeypatch: pytest.MonkeyPatch, mode: str,
                                                              layout: tuple[int, int]) -> None:
    """One decoder set-up per DALI sample costs more than a dozen keyframes: clips of several videos with
    the same codec set-up are decoded as one sample, and every video still gets exactly its own seconds
    (also with more samples per DALI run and more pipeline threads, as the sampling benchmark tries)."""
    samples = _CountingDecoder.install(monkeypatch, prepared_first=len(short_vp9))
    videos = [p for p, _ in short_vp9]
    sampler = DaliSampler(mode=mode, size=SIZE, streams=1)
    sampler.clips_per_run, sampler.decode_threads = layout
    times, stamps, outcomes = _collect(list(sampler.iter_batches(videos)))
    assert all(o.ok for o in outcomes) and [o.path for o in outcomes] == videos
    _check_like_the_cpu_backend(short_vp9, times, stamps, mode)
    assert sum(samples) == sum(len(t) for t in times.values())
    assert max(samples) > 3 and len(samples) < len(videos)  # merged: fewer samples than videos
    decoded = sampler.decode_stats.as_dict()  # what the benchmarks report as frames per DALI sample
    assert (decoded["dali_samples"], decoded["frames_returned"]) == (len(samples), sum(samples))
    assert -(-len(samples) // layout[0]) <= decoded["dali_runs"] <= len(samples)
    assert decoded["frames_per_sample"] == round(sum(samples) / len(samples), 2)


def _first_take_waits_for(mp: pytest.MonkeyPatch, queued: int) -> None:
    """A sampler's first take waits (up to 60 s) until ``queued`` clips are queued, so what it merges does not
    depend on how busy the machine is."""
    import quadvault_dali.sampling._gpu as gpu

    real_next = gpu.DaliSampler._next_work

    def next_work(self, work, carry):  # type: ignore[no-untyped-def]
        if not carry and self.decode_stats.takes == 0:
            deadline = time.monotonic() + 60
            while work.qsize() < queued and time.monotonic() < deadline:
                time.sleep(0.01)
        return real_next(self, work, carry)

    mp.setattr(gpu.DaliSampler, "_next_work", next_work)


@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_spread_samples_share_a_run_and_keep_their_frames(short_vp9: list[tuple[Path, int]], mode: str) -> None:
    """``spread_min_frames``: five queued videos (3 frames each) go to one DALI run as two samples of 9 and 6
    frames, decoded in parallel on the pipeline's threads, where filling makes one sample of 15 decoded frame
    after frame; every video keeps exactly its own seconds."""
    videos = [p for p, _ in short_vp9]
    for spread, expected in ((None, [15]), (3, [9, 6])):
        with pytest.MonkeyPatch.context() as mp:
            samples = _CountingDecoder.install(mp)
            _first_take_waits_for(mp, len(videos))
            sampler = DaliSampler(mode=mode, size=SIZE, streams=1)
            sampler.clips_per_run, sampler.decode_threads, sampler.spread_min_frames = 2, 2, spread
            times, stamps, outcomes = _collect(list(sampler.iter_batches(videos)))
        assert all(o.ok for o in outcomes) and [o.path for o in outcomes] == videos
        _check_like_the_cpu_backend(short_vp9, times, stamps, mode)
        assert samples == expected and sampler.decode_stats.runs == 1


def test_spread_and_budget_come_from_the_config() -> None:
    """``SamplerConfig`` carries the experiments (what ``ScanOptions`` and the scan benchmark's ``e``/``b``
    layouts set), so decoding processes and scans get them too; nonsense values are refused."""
    from quadvault_dali.sampling import SamplerConfig

    sampler = DaliSampler(size=SIZE, spread_min_frames=16, budget_samples=8)
    assert (sampler.spread_min_frames, sampler.budget_samples) == (16, 8)
    assert DaliSampler(size=SIZE).spread_min_frames is None
    with pytest.raises(ValueError, match="spread_min_frames"):
        SamplerConfig(spread_min_frames=0)
    with pytest.raises(ValueError, match="budget_samples"):
        SamplerConfig(budget_samples=-1)


def test_spread_pixels_leave_room_for_the_largest_clip_and_the_floor() -> None:
    from quadvault_dali.sampling._remux import Clip
    from quadvault_dali.sampling._samples import _Work, spread_pixels

    def work(frames: int) -> _Work:
        return _Work(None, 0, Clip(b"", np.arange(frames, dtype=np.int32), [0.0] * frames, frames, [],  # type: ignore[arg-type]
                                   ("h264", b"", 10, 10, "yuv420p")))

    items = [work(8) for _ in range(6)]  # 48 frames of 100 pixels over 4 samples: 12 each, + 7 for clip edges
    assert spread_pixels(items, 4, 16, 10_000) // 100 == 19
    assert spread_pixels(items, 4, 30, 10_000) == 30 * 100  # the floor
    assert spread_pixels(items, 4, 16, 1_000) == 1_000  # never above the memory budget
    assert spread_pixels(items, 1, 16, 10_000) == 10_000  # one sample per run: nothing to spread


def test_spreading_never_costs_a_dali_run_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """A take of two codec set-ups already fills a 2-sample run and stays as it is (spreading its frames would
    split each set-up again: a review found 2 runs where 1 did); with room for a third sample the first
    set-up's clips spread into two, still one run."""
    from quadvault_dali.sampling._remux import Clip, SourcePacket, _Run
    from quadvault_dali.sampling._samples import _Work

    def work(t: float, width: int) -> _Work:
        runs = [_Run([SourcePacket(b"\x00", t + k, t + k, True)], [t + k]) for k in range(3)]
        return _Work(None, 0, Clip(b"", np.arange(3, dtype=np.int32), [t, t + 1, t + 2], 3, runs,  # type: ignore[arg-type]
                                   ("vp9", b"", width, 80, "yuv420p")))

    items = [work(10.0 * i, 128) for i in range(4)] + [work(50.0, 160)]
    def merge(clips: list[Clip]) -> Clip:  # the frames of all, without muxing (these clips hold no video)
        n = sum(len(c) for c in clips)
        return Clip(b"", np.arange(n, dtype=np.int32), [t for c in clips for t in c.times], n,
                    [r for c in clips for r in c.runs], clips[0].signature)

    monkeypatch.setattr("quadvault_dali.sampling._samples.merge_clips", merge)
    sampler = DaliSampler(size=SIZE)
    sampler.clips_per_run, sampler.spread_min_frames = 2, 3
    seen: list[int] = []

    class Decoder:
        def decode(self, clips):  # type: ignore[no-untyped-def]
            seen.append(len(clips))
            return [torch.zeros((len(c), 3, 4, 4), dtype=torch.uint8) for c in clips]

    sampler._decode_samples(Decoder(), items)  # type: ignore[arg-type]
    assert seen == [2]  # one run: [four 128-wide clips], [the 160-wide one]
    sampler.clips_per_run = 3  # room for one more sample: the first set-up's clips spread over two
    seen.clear()
    sampler._decode_samples(Decoder(), items)  # type: ignore[arg-type]
    assert seen == [3]


@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_streamed_samples_merge_many_videos_and_keep_their_frames(short_vp9: list[tuple[Path, int]],
                                                                  mode: str) -> None:
    """The streaming decoder pays one set-up per merged clip, so it merges far more: the five short videos
    (prepared before decoding starts, as in a busy run) need fewer DALI samples than videos, and every video
    keeps exactly its own seconds."""
    videos = [p for p, _ in short_vp9]
    sampler = DaliSampler(mode=mode, size=SIZE, streams=1, stream_decode=True)
    with pytest.MonkeyPatch.context() as mp:
        _first_take_waits_for(mp, len(videos))
        times, stamps, outcomes = _collect(list(sampler.iter_batches(videos)))
    assert all(o.ok for o in outcomes) and [o.path for o in outcomes] == videos
    _check_like_the_cpu_backend(short_vp9, times, stamps, mode)
    decoded = sampler.decode_stats.as_dict()
    assert decoded["frames_returned"] == sum(len(t) for t in times.values())
    assert decoded["dali_samples"] < len(videos)  # merged


def _mark_uncropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clips cut with ``uncrop`` say they are uncropped (VP9 has no SPS to rewrite: the mark is the test)."""
    import quadvault_dali.sampling._gpu as gpu

    real_plan_clips = _remux.plan_clips

    def marking(plan, container, fh, max_frames=None, uncrop=False, mux=True):  # type: ignore[no-untyped-def]
        for clip in real_plan_clips(plan, container, fh, max_frames=max_frames, uncrop=uncrop, mux=mux):
            if uncrop:
                clip.roi, clip.cropped_signature = (0.5, 1.0), clip.signature
            yield clip

    monkeypatch.setattr(_remux, "plan_clips", marking)


def _refusing_decoder(monkeypatch: pytest.MonkeyPatch, refuse_all: bool = False) -> None:
    import quadvault_dali.sampling._gpu as gpu

    class Refusing(gpu.ClipDecoder):
        def decode(self, clips):  # type: ignore[no-untyped-def]
            if refuse_all or any(c.roi != (1.0, 1.0) for c in clips):
                return [RuntimeError("injected: the decoder rejected the stream") for _ in clips]
            return super().decode(clips)

    monkeypatch.setattr(gpu, "ClipDecoder", Refusing)


def test_a_decoder_that_refuses_uncropped_clips_decodes_them_cropped(
        short_vp9: list[tuple[Path, int]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """If a DALI or driver refused the rewritten parameter sets (``_uncrop``), the clip is decoded again as the
    file has it; that working, uncropping is switched off and the clips already cut are cropped back: every
    video still decodes on the hardware decoder, and the run says so once. The refusal is injected."""
    import logging

    _mark_uncropped(monkeypatch)
    _refusing_decoder(monkeypatch)
    videos = [p for p, _ in short_vp9] * 2
    sampler = DaliSampler(mode="keyframe", size=SIZE, streams=1)
    sampler.uncrop_sps = True
    with caplog.at_level(logging.WARNING, logger="quadvault_dali.sampling._gpu"):
        batches = list(sampler.iter_batches(videos))
    outcomes = [o for b in batches for o in b.completed]
    assert [o.path for o in outcomes] == videos and all(o.ok for o in outcomes), [str(o.error) for o in outcomes]
    assert [o.decoder for o in outcomes] == ["dali-cpu"] * len(videos) and not sampler.uncrop_sps
    assert len([r for r in caplog.records if "keeping the cropping" in r.getMessage()]) == 1
    times, stamps, _ = _collect(batches)
    for path, sid in short_vp9:
        assert times[path] == [0.0, 1.0, 2.0] * 2
        _check_stamps(times[path], stamps[path], sid)


def test_a_decoder_that_never_works_still_stops_the_run_with_uncropped_clips(
        short_vp9: list[tuple[Path, int]], cpu_decodable: list[tuple[Path, int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncropped clips that fail cropped back too are the decoder's failures: a broken install still stops
    the run after FAILURES_BEFORE_GIVING_UP videos instead of quietly decoding the library on the CPU."""
    import quadvault_dali.sampling._gpu as gpu

    _mark_uncropped(monkeypatch)
    _refusing_decoder(monkeypatch, refuse_all=True)
    videos = [p for p, _ in short_vp9 + cpu_decodable]
    assert len(set(videos)) > gpu.FAILURES_BEFORE_GIVING_UP
    sampler = DaliSampler(mode="keyframe", size=SIZE, streams=1)
    sampler.uncrop_sps = True
    with pytest.raises(BackendUnavailableError, match="decoded none"):
        list(sampler.iter_batches(videos))
    assert sampler.uncrop_sps  # nothing said the rewrite was the problem


def test_a_damaged_video_in_a_merged_sample_fails_alone(short_vp9: list[tuple[Path, int]],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import av

    bad_path, bad_sid = short_vp9[2]
    with av.open(str(bad_path)) as c:
        bad_packets = {bytes(p) for p in c.demux(video=0) if p.size}
    samples = _CountingDecoder.install(monkeypatch, fails_on=bad_packets, prepared_first=len(short_vp9))
    videos = [p for p, _ in short_vp9]
    times, stamps, outcomes = _collect(list(DaliSampler(mode="keyframe", size=SIZE, streams=1).iter_batches(videos)))
    assert all(o.ok for o in outcomes), [str(o.error) for o in outcomes]
    assert [o.decoder for o in outcomes] == ["dali-cpu", "dali-cpu", "pyav", "dali-cpu", "dali-cpu"]
    assert "injected decode failure" in outcomes[2].fallback_reason
    for path, sid in short_vp9:
        _check_stamps(times[path], stamps[path], sid)
    assert max(samples) > 3  # the others still shared samples


def test_a_clip_the_cutter_cannot_make_goes_to_the_cpu(cpu_decodable: list[tuple[Path, int]],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the packets for DALI fails after the first clip: the CPU decoder finishes the video."""
    import quadvault_dali.sampling._gpu as gpu
    from quadvault_dali.errors import DecodeError

    real = _remux.plan_clips

    def cut_one_then_fail(plan, container, fh, max_frames=None, uncrop=False, mux=True):  # type: ignore[no-untyped-def]
        clips = real(plan, container, fh, max_frames=2, uncrop=uncrop, mux=mux)
        yield next(iter(clips))
        raise DecodeError("keyframe at 2.00s is cut off by the end of the file", path=plan.info.path)

    monkeypatch.setattr(_remux, "plan_clips", cut_one_then_fail)
    path, sid = cpu_decodable[0]
    frames, times, outcome = DaliSampler(mode="keyframe", size=SIZE).sample_video(path)
    assert times == pytest.approx(create_sampler("cpu", mode="keyframe", size=SIZE).sample_video(path)[1])
    _check_stamps(times, _stamps(frames), sid)
    assert outcome.decoder == "dali-cpu+pyav"
    assert outcome.fallback_reason.startswith("cutting clips for dali-cpu failed: keyframe at 2.00s is cut off")


def test_a_decode_stream_survives_what_its_clips_raise(cpu_decodable: list[tuple[Path, int]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after decoding (the GPU rotation running out of memory) and one setting a stream up (a
    broken CUDA/DALI install) each end in a CPU take-over, never in a consumer waiting forever."""
    import quadvault_dali.sampling._gpu as gpu

    (vp9, sid), (rotated, rot_sid) = cpu_decodable[0], cpu_decodable[1]
    real_upright = gpu._displayed

    def oom_for_rotated(frames, info):  # type: ignore[no-untyped-def]
        if info is not None and info.rotation:
            raise RuntimeError("CUDA out of memory")
        return real_upright(frames, info)

    monkeypatch.setattr(gpu, "_displayed", oom_for_rotated)
    times, stamps, outcomes = _collect(list(DaliSampler(size=SIZE, streams=2).iter_batches([rotated, vp9])))
    assert all(o.ok for o in outcomes) and [o.decoder for o in outcomes] == ["pyav", "dali-cpu"]
    assert "CUDA out of memory" in outcomes[0].fallback_reason
    _check_stamps(times[rotated], stamps[rotated], rot_sid)
    _check_stamps(times[vp9], stamps[vp9], sid)

    def broken_setup(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(DaliSampler, "_clip_decoder", broken_setup)
    times, stamps, outcomes = _collect(list(DaliSampler(size=SIZE, streams=2).iter_batches([vp9, rotated])))
    assert all(o.ok and o.decoder == "pyav" for o in outcomes)
    assert all("CUDA driver initialization failed" in o.fallback_reason for o in outcomes)
    _check_stamps(times[vp9], stamps[vp9], sid)


def test_a_decoder_that_never_works_stops_the_run(cpu_decodable: list[tuple[Path, int]], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken driver or DALI install: after the first 8 videos failed and none decoded, the run stops
    with a clear error instead of decoding the whole library on the CPU."""
    import shutil

    from quadvault_dali.sampling._gpu import FAILURES_BEFORE_GIVING_UP

    def broken_setup(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(DaliSampler, "_clip_decoder", broken_setup)
    source = cpu_decodable[0][0]
    # more videos than the sampler prepares ahead (streams x clips per run x QUEUED_PER_STREAM)
    videos = [shutil.copy(source, tmp_path / f"copy_{i:03d}{source.suffix}") for i in range(100)]
    with pytest.raises(BackendUnavailableError, match=r"failed on the first \d+ videos and decoded none") as err:
        list(DaliSampler(size=SIZE, streams=4).iter_batches(videos))
    failed = int(str(err.value).split("failed on the first ")[1].split()[0])
    assert FAILURES_BEFORE_GIVING_UP <= failed < len(videos)
    assert "CUDA driver initialization failed" in str(err.value) and "--device cpu" in str(err.value)


def test_closing_early_stops_a_cpu_take_over(make_clip: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import quadvault_dali.sampling._gpu as gpu

    class AlwaysFails(gpu.ClipDecoder):
        def decode(self, clips):  # type: ignore[no-untyped-def]
            return [RuntimeError("injected NVDEC failure") for _ in clips]

    monkeypatch.setattr(gpu, "ClipDecoder", AlwaysFails)
    long_vp9 = make_clip("gpu_vp9_long.webm", codec="vp9", width=128, height=80, duration_s=60.0, fps=10,
                         keyframe_interval_s=1.0)
    batches = DaliSampler(mode="exact", size=SIZE, batch_size=2).iter_batches([long_vp9])
    first = next(batches)
    assert len(first) == 2 and first.timestamps == [0.0, 1.0]
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(("cpu-takeover", "gpu-decode"))]


def test_damage_both_decoders_fail_on_is_reported_in_the_cpu_decoders_words(corpus: Path) -> None:
    webm = corpus / "androidx+media/libraries/test_data/src/test/assets/media/vp9/invalid-bitstream.webm"
    (outcome,) = [o for b in DaliSampler(size=SIZE).iter_batches([webm]) for o in b.completed]
    assert outcome.error is not None and outcome.error.kind == "DecodeError"
    assert "decoded only 0 of 3 sampled frames" in str(outcome.error)
    assert outcome.fallback_reason.startswith("dali-cpu failed at 0.00s")


@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_videos_the_decoder_cannot_take_are_decoded_on_the_cpu(cpu_decodable: list[tuple[Path, int]],
                                                               make_clip: Callable[..., Path], mode: str) -> None:
    """Known from the probe: such a video goes to the CPU decoder, its frames still arrive in order on the
    sampler's device with the right stamps, and its outcome says which decoder ran and why."""
    h264 = make_clip("fallback_h264_rot.mp4", codec="h264", width=128, height=80, duration_s=5.0, rotation=90,
                     keyframe_interval_s=1.0, source_id=21)
    hevc = make_clip("fallback_hevc.mp4", codec="hevc", width=128, height=80, fps=25, duration_s=40.0,
                     keyframe_interval_s=1.0, source_id=22)  # more frames than the bounded hand-over holds
    (vp9, vp9_sid), (mjpeg, mjpeg_sid) = cpu_decodable[0], cpu_decodable[2]
    videos = [h264, vp9, hevc, mjpeg]
    batches = list(DaliSampler(mode=mode, size=SIZE, batch_size=7, streams=2).iter_batches(videos))
    times, stamps, outcomes = _collect(batches)
    assert [o.path for o in outcomes] == videos and all(o.ok for o in outcomes), [str(o.error) for o in outcomes]
    assert [o.decoder for o in outcomes] == ["pyav", "dali-cpu", "pyav", "dali-cpu"]
    assert "h264" in outcomes[0].fallback_reason and outcomes[1].fallback_reason is None
    cpu = create_sampler("cpu", mode=mode, size=SIZE)
    for path, sid in ((h264, 21), (vp9, vp9_sid), (hevc, 22), (mjpeg, mjpeg_sid)):
        _check_stamps(times[path], stamps[path], sid)
        cpu_frames, cpu_times, cpu_outcome = cpu.sample_video(path)
        assert times[path] == pytest.approx(cpu_times, abs=1e-6)
        outcome = outcomes[videos.index(path)]
        assert outcome.frames == len(cpu_times) and outcome.mode == cpu_outcome.mode == mode
        assert outcome.bytes_read >= cpu_outcome.bytes_read > 0
    assert len(times[hevc]) == 40
    h264_frames, _, _ = DaliSampler(mode=mode, size=SIZE).sample_video(h264)
    assert torch.equal(h264_frames, cpu.sample_video(h264)[0])  # the CPU decoder's very pixels


def test_without_cpu_fallback_they_are_error_outcomes(cpu_decodable: list[tuple[Path, int]],
                                                      make_clip: Callable[..., Path]) -> None:
    h264 = make_clip("gpu_h264_for_cpu_decoder.mp4", codec="h264", width=128, height=80, duration_s=3.0,
                     source_id=31)
    vp9, sid = cpu_decodable[0]
    batches = list(DaliSampler(mode="keyframe", size=SIZE, cpu_fallback=False).iter_batches([h264, vp9]))
    times, stamps, outcomes = _collect(batches)
    assert not outcomes[0].ok and outcomes[0].error.kind == "UnsupportedCodecError"
    assert str(outcomes[0].error).startswith(f"{h264}: DALI's CPU decoder does not decode h264")
    assert h264 not in times and outcomes[1].ok
    _check_stamps(times[vp9], stamps[vp9], sid)


def test_gpu_backend_refuses_to_run_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailableError):
        GpuSampler()
    with pytest.raises(BackendUnavailableError):
        create_sampler("gpu")


# --- (b) the real gpu backend (NVDEC) -------------------------------------------------------------

GPU_CLIPS = {
    "h264_30_k1": dict(codec="h264", fps=30, keyframe_interval_s=1.0),
    "h264_24_k5": dict(codec="h264", fps=24, keyframe_interval_s=5.0, duration_s=11.0),
    "hevc_25_k1": dict(codec="hevc", fps=25, keyframe_interval_s=1.0),
    "hevc_60_k5": dict(codec="hevc", fps=60, keyframe_interval_s=5.0, duration_s=11.0),
    "vp9_30": dict(codec="vp9", fps=30, keyframe_interval_s=1.0),
    "h264_vfr": dict(codec="h264", fps=30, vfr=True),
    "h264_rot90": dict(codec="h264", fps=30, rotation=90),
    "hevc_rot270": dict(codec="hevc", fps=25, rotation=270),
}


def _gpu_clip(make_clip: Callable[..., Path], name: str, sid: int) -> Path:
    # 256x160: inside NVDEC's size range for every codec (HEVC needs at least 144x144)
    spec = {"width": 256, "height": 160, "duration_s": 5.0, "source_id": sid, **GPU_CLIPS[name]}
    return make_clip(f"nvdec_{name}_s{sid}.mp4", **spec)  # the source id in the name: a cached clip is by name


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_gpu_backend_every_frame_is_the_right_second(make_clip: Callable[..., Path], mode: str) -> None:
    names = sorted(GPU_CLIPS)
    paths = [_gpu_clip(make_clip, n, i + 1) for i, n in enumerate(names)]
    sampler = create_sampler("gpu", fps=1.0, mode=mode, size=SIZE, batch_size=16, streams=4)
    batches = list(sampler.iter_batches(paths))
    assert all(b.frames.device.type == "cuda" and b.frames.dtype == torch.uint8 for b in batches if len(b))
    times, stamps, outcomes = _collect(batches)
    assert [o.path for o in outcomes] == paths and all(o.ok for o in outcomes), [str(o.error) for o in outcomes]
    cpu = create_sampler("cpu", fps=1.0, mode=mode, size=SIZE)
    for i, path in enumerate(paths):
        _check_stamps(times[path], stamps[path], i + 1)
        _, cpu_times, _ = cpu.sample_video(path)
        assert times[path] == pytest.approx(cpu_times, abs=1e-6), path.name
        info, index = probe_video(path, with_index=True)
        plan = plan_samples(info, index, fps=1.0, mode=mode)
        assert max(min(abs(t - g) for t in times[path]) for g in plan.grid) <= plan.max_error_s + 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize(("mode", "fps"), [("exact", 1.0), ("exact", 2.0), ("keyframe", 1.0)])
def test_nvdec_samples_mpeg_ts_from_byte_seeks(make_clip: Callable[..., Path], mode: str, fps: float) -> None:
    """MPEG-TS with B-frames (camcorder .MTS/.m2ts): runs and keyframes found at the prober's byte positions
    (``_remux.byte_position``), so NVDEC decodes them instead of the CPU fallback, first second included."""
    paths = [make_clip(f"nvdec_{codec}_k{gop:g}.ts", codec=codec, width=256, height=160, fps=rate, duration_s=6.0,
                       keyframe_interval_s=gop, source_id=sid)
             for sid, (codec, rate, gop) in enumerate([("h264", 30, 1.0), ("h264", 25, 3.0), ("hevc", 30, 2.0)], 1)]
    sampler = create_sampler("gpu", fps=fps, mode=mode, size=SIZE, batch_size=16, streams=2)
    times, stamps, outcomes = _collect(list(sampler.iter_batches(paths)))
    assert all(o.ok and o.decoder == "nvdec" for o in outcomes), \
        [(o.path.name, str(o.error), o.decoder, o.fallback_reason) for o in outcomes]
    cpu = create_sampler("cpu", fps=fps, mode=mode, size=SIZE)
    for sid, path in enumerate(paths, 1):
        _check_stamps(times[path], stamps[path], sid)
        assert times[path][0] == 0.0
        assert times[path] == pytest.approx(cpu.sample_video(path)[1], abs=1e-6), path.name


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_nvdec_with_prepare_workers_gives_what_prepare_threads_give(make_clip: Callable[..., Path],
                                                                   mode: str) -> None:
    """Clips cut in worker processes (``prepare_processes``, 1.1-1.6x the frames/s on the H100 in stop 17)
    decode on NVDEC to the same seconds, pixels and byte counts as clips cut in the prepare threads: plain
    MP4s read by path, a Matroska file and an MPEG-TS through the Python file."""
    paths = [_gpu_clip(make_clip, n, i + 1) for i, n in enumerate(["h264_30_k1", "hevc_25_k1", "h264_rot90"])]
    paths += [make_clip("nvdec_workers.mkv", codec="h264", width=256, height=160, fps=30, duration_s=4.0,
                        keyframe_interval_s=1.0, source_id=11),
              make_clip("nvdec_workers.ts", codec="hevc", width=256, height=160, fps=25, duration_s=4.0,
                        keyframe_interval_s=2.0, source_id=12)]
    runs = {}
    for workers in (0, 2):
        sampler = create_sampler("gpu", fps=1.0, mode=mode, size=SIZE, batch_size=16, streams=2,
                                 prepare_processes=workers)
        try:
            batches = list(sampler.iter_batches(paths))
        finally:
            sampler.close()
        frames = {p: [] for p in paths}
        for b in batches:
            for path, frame in zip(b.paths, b.frames):
                frames[Path(path)].append(frame.cpu())
        outcomes = [o for b in batches for o in b.completed]
        assert all(o.ok and o.decoder == "nvdec" for o in outcomes), [(o.path.name, str(o.error)) for o in outcomes]
        runs[workers] = ({o.path: (o.frames, o.bytes_read) for o in outcomes}, _collect(batches)[0], frames)
    (counts_t, times_t, frames_t), (counts_w, times_w, frames_w) = runs[0], runs[2]
    assert counts_w == counts_t and times_w == times_t
    for path in paths:  # the same pictures decoded in other merged samples: equal up to rounding at most
        assert len(frames_w[path]) == len(frames_t[path])
        assert all((a.int() - b.int()).abs().max().item() <= 1 for a, b in zip(frames_w[path], frames_t[path])), \
            path.name


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_gpu_streaming_decoder_gives_every_second_and_the_per_sample_pixels(make_clip: Callable[..., Path],
                                                                          mode: str) -> None:
    """The experimental streaming decoder (fn.experimental.inputs.video on NVDEC, one set-up per merged clip)
    samples the same seconds as the CPU backend, and its frames are the per-sample decoder's: the padded
    200x120 H.264 (coded 208x128) keeps its picture region through the build-time slice."""
    names = ["h264_30_k1", "h264_24_k5", "hevc_25_k1", "h264_rot90", "h264_vfr"]
    paths = [_gpu_clip(make_clip, n, i + 1) for i, n in enumerate(names)]
    padded = make_clip("nvdec_h264_200x120.mp4", codec="h264", width=200, height=120, fps=30, duration_s=4.0,
                       keyframe_interval_s=1.0, source_id=21, style="highlight")
    sampler = create_sampler("gpu", fps=1.0, mode=mode, size=SIZE, batch_size=16, streams=2, stream_decode=True)
    times, stamps, outcomes = _collect(list(sampler.iter_batches([*paths, padded])))
    assert all(o.ok and o.decoder == "nvdec" for o in outcomes), [str(o.error) for o in outcomes]
    assert sampler.decode_stats.frames > 0
    _check_like_the_cpu_backend([(path, i + 1) for i, path in enumerate(paths)], times, stamps, mode)
    streamed = create_sampler("gpu", mode=mode, size=SIZE, square=False, stream_decode=True)
    s_frames, s_times, _ = streamed.sample_video(padded)
    p_frames, p_times, _ = create_sampler("gpu", mode=mode, size=SIZE, square=False).sample_video(padded)
    assert s_times == p_times and s_frames.shape == p_frames.shape
    assert (s_frames.float() - p_frames.float()).abs().mean().item() < 1.0


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_gpu_backend_open_gop_keyframes_far_apart(make_clip: Callable[..., Path], mode: str) -> None:
    """x265's CRA keyframes 231-240 frames apart: concatenated in one clip their picture order wraps (PyAV
    swapped 0 s and 7.7 s); each gets a clip of its own, and NVDEC must return every second's own frame."""
    path = make_clip("nvdec_hevc_cra.mp4", codec="hevc", width=256, height=160, fps=30, duration_s=40.0,
                     keyframe_interval_s=0.7, source_id=9)
    frames, times, outcome = create_sampler("gpu", fps=0.125, mode=mode, size=SIZE).sample_video(path)
    assert outcome.decoder == "nvdec" and len(times) == 5
    _check_stamps(times, _stamps(frames), 9)


@pytest.mark.gpu
def test_gpu_backend_broken_files_are_error_outcomes(make_clip: Callable[..., Path],
                                                     broken_clips: dict[str, Path]) -> None:
    good = [_gpu_clip(make_clip, "h264_30_k1", 1), _gpu_clip(make_clip, "hevc_25_k1", 3)]
    videos = [broken_clips["empty"], good[0], broken_clips["text"], broken_clips["truncated"],
              broken_clips["no_index"], good[1]]
    batches = list(create_sampler("gpu", size=SIZE, streams=2).iter_batches(videos))
    times, stamps, outcomes = _collect(batches)
    assert [o.path for o in outcomes] == videos
    assert [o.ok for o in outcomes] == [False, True, False, False, False, True]
    assert all(o.error is not None and str(o.path) in str(o.error) for o in outcomes if not o.ok)
    _check_stamps(times[good[0]], stamps[good[0]], 1)
    _check_stamps(times[good[1]], stamps[good[1]], 3)


@pytest.mark.gpu
def test_gpu_backend_4k_clip_keyframe_mode_reads_a_fraction(make_clip: Callable[..., Path]) -> None:
    path = make_clip("nvdec_4k.mp4", codec="hevc", width=3840, height=2160, fps=30, duration_s=3.0,
                     keyframe_interval_s=1.0, source_id=42, style="highlight")
    frames, times, outcome = create_sampler("gpu", mode="keyframe", size=224).sample_video(path)
    assert tuple(frames.shape) == (3, 3, 224, 224) and times == [0.0, 1.0, 2.0]
    _check_stamps(times, _stamps(frames), 42)
    assert outcome.bytes_read < 0.6 * path.stat().st_size


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_gpu_streaming_decoder_agrees_with_per_sample_decoding_on_real_footage(corpus: Path, mode: str) -> None:
    """Before the streaming decoder can be the default: on every corpus file (phones, drones, 4K, rotated, VFR,
    damaged) it gives the per-sample decoder's seconds and pictures, or fails where that fails. DALI's
    streaming operator trusts one picture per packet; a damaged packet NVDEC skips would shift every later
    frame without an error, and this is where that would show."""
    from quadvault_dali.discovery import find_videos

    videos = find_videos([corpus])
    runs = {}
    for streamed in (False, True):
        sampler = create_sampler("gpu", mode=mode, size=SIZE, batch_size=32, streams=2, stream_decode=streamed)
        frames: dict[Path, list[torch.Tensor]] = {}
        times: dict[Path, list[float]] = {}
        outcomes = {}
        for batch in sampler.iter_batches(videos):
            for i, (p, t) in enumerate(zip(batch.paths, batch.timestamps)):
                frames.setdefault(p, []).append(batch.frames[i].cpu())
                times.setdefault(p, []).append(t)
            outcomes.update({o.path: o for o in batch.completed})
        runs[streamed] = (frames, times, outcomes)
    (f0, t0, o0), (f1, t1, o1) = runs[False], runs[True]
    for path in videos:
        assert o1[path].ok == o0[path].ok, (path, o0[path].error, o1[path].error)
        if not o0[path].ok:
            continue
        assert t1[path] == t0[path], path
        diff = (torch.stack(f1[path]).float() - torch.stack(f0[path]).float()).abs().mean(dim=(1, 2, 3))
        assert diff.max().item() < 4.0, f"{path}: frame {int(diff.argmax())} differs by {diff.max().item():.1f}"


@pytest.mark.gpu
def test_gpu_backend_frames_match_cpu_backend_pixels(make_clip: Callable[..., Path]) -> None:
    """Same frames, same resize: the two backends' images differ only by resampling noise."""
    path = _gpu_clip(make_clip, "h264_30_k1", 1)
    gpu_frames, gpu_times, _ = create_sampler("gpu", mode="keyframe", size=SIZE).sample_video(path)
    cpu_frames, cpu_times, _ = create_sampler("cpu", mode="keyframe", size=SIZE).sample_video(path)
    assert gpu_times == cpu_times and gpu_frames.shape == cpu_frames.shape
    diff = (gpu_frames.cpu().float() - cpu_frames.float()).abs().mean().item()
    assert diff < 16.0, f"mean absolute pixel difference {diff:.1f}"


@pytest.mark.gpu
def test_gpu_backend_crops_uncropped_h264_like_the_cpu(make_clip: Callable[..., Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """200x120 H.264 is coded 208x128. NVDEC decodes its clips at the coded size (the SPS lost its
    cropping so DALI's decoder cache matches) and the resize keeps 200x120: same frames as the CPU's."""
    path = make_clip("nvdec_h264_200x120.mp4", codec="h264", width=200, height=120, fps=30, duration_s=4.0,
                     keyframe_interval_s=1.0, source_id=21, style="highlight")
    fed: list[tuple[float, float]] = []
    real_feed = _clip_decoder.feed_clips

    def spy(pipe, clips, indices=None):  # type: ignore[no-untyped-def]
        fed.extend(c.roi for c in clips)
        real_feed(pipe, clips, indices)

    monkeypatch.setattr(_clip_decoder, "feed_clips", spy)
    for square in (True, False):
        gpu_frames, gpu_times, outcome = create_sampler("gpu", mode="keyframe", size=SIZE, square=square).sample_video(path)
        cpu_frames, cpu_times, _ = create_sampler("cpu", mode="keyframe", size=SIZE, square=square).sample_video(path)
        assert outcome.decoder == "nvdec" and gpu_times == cpu_times == [0.0, 1.0, 2.0, 3.0]
        assert gpu_frames.shape == cpu_frames.shape
        _check_stamps(gpu_times, _stamps(gpu_frames), 21)
        diff = (gpu_frames.cpu().float() - cpu_frames.float()).abs().mean().item()
        assert diff < 16.0, f"mean absolute pixel difference {diff:.1f}"
    assert fed and all(roi == (120 / 128, 200 / 208) for roi in fed)


def _gradient_clip(path: Path, width: int, height: int, codec: str, fps: int = 10, seconds: int = 3) -> Path:
    """Grey rising linearly from the top row (0) to the bottom one (240), nearly lossless: the row profile of a
    sampled frame says exactly which source rows landed where."""
    if path.exists():
        return path
    import av

    encoder, key = ("libx264", "x264-params") if codec == "h264" else ("libx265", "x265-params")
    image = np.broadcast_to(np.linspace(0, 240, height)[:, None, None], (height, width, 3)).astype(np.uint8).copy()
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast",
                          key: f"keyint={fps}:min-keyint={fps}:scenecut=0:qp=4" + (":log-level=error" if codec == "hevc" else "")}
        for i in range(fps * seconds):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.gpu
@pytest.mark.parametrize(("codec", "width", "height"), [("h264", 200, 120), ("hevc", 196, 148)])
def test_gpu_backend_keeps_the_picture_geometry_of_padded_streams(media_dir: Path, codec: str, width: int,
                                                                   height: int) -> None:
    """H.264 200x120 is coded 208x128, x265's 196x148 200x152 (NVDEC HEVC needs 144 rows): the clips' uncropped SPS makes NVDEC put out the
    padding too, and the region of interest must drop exactly it. Per output row, GPU and CPU agree within a
    few levels; keeping the padding or cropping it twice shifts rows by 11-16 levels (measured on the CPU)."""
    path = _gradient_clip(media_dir / f"nvdec_gradient_{codec}_{width}x{height}.mp4", width, height, codec)
    gpu, gpu_times, outcome = create_sampler("gpu", mode="keyframe", size=SIZE, square=False).sample_video(path)
    cpu, cpu_times, _ = create_sampler("cpu", mode="keyframe", size=SIZE, square=False).sample_video(path)
    assert outcome.decoder == "nvdec" and gpu_times == cpu_times and gpu.shape == cpu.shape
    rows_gpu, rows_cpu = gpu.cpu().float().mean(dim=(0, 1, 3)), cpu.float().mean(dim=(0, 1, 3))
    error = (rows_gpu - rows_cpu).abs().max().item()
    assert error < 5.0, f"row profile off by up to {error:.1f} levels: {rows_gpu[-4:].tolist()} vs {rows_cpu[-4:].tolist()}"


@pytest.mark.gpu
@pytest.mark.parametrize("axis", ["columns", "rows"])
def test_gpu_backend_keeps_a_track_header_that_crops_the_sps_further(media_dir: Path, axis: str) -> None:
    """A track header smaller than the SPS's picture within its last macroblocks (the GoPro Karma drone's 854x480
    over an 864x480 SPS): FFmpeg's decoder shows the track's size ("container cropping", ``probe.codec_setup``),
    and so must the GPU's frames, with no columns or rows of the coded picture past it. A 192x108 gradient
    under a 180x100 track header: per output column (row), GPU and CPU agree within a few levels; frames of
    the SPS's 192x108 resized instead shift them by up to 15 (18) levels (measured on the CPU)."""
    import av

    from _media import remux_video

    source = media_dir / f"nvdec_gradient_{axis}_192x108.mp4"
    if not source.exists():
        ramp = np.linspace(0, 240, 192 if axis == "columns" else 108)
        image = np.broadcast_to(ramp[None, :, None] if axis == "columns" else ramp[:, None, None],
                                (108, 192, 3)).astype(np.uint8).copy()
        with av.open(str(source), "w") as out:
            stream = out.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 192, 108, "yuv420p"
            stream.options = {"preset": "veryfast", "x264-params": "keyint=10:min-keyint=10:scenecut=0:qp=4"}
            for i in range(30):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    path = remux_video(source, media_dir / f"nvdec_track_cropped_{axis}.mp4", width=180, height=100)
    assert (probe_video(path).width, probe_video(path).height) == (180, 100)
    gpu, gpu_times, outcome = create_sampler("gpu", mode="keyframe", size=SIZE, square=False).sample_video(path)
    cpu, cpu_times, _ = create_sampler("cpu", mode="keyframe", size=SIZE, square=False).sample_video(path)
    assert outcome.decoder == "nvdec" and gpu_times == cpu_times and gpu.shape == cpu.shape
    dims = (0, 1, 2) if axis == "columns" else (0, 1, 3)
    profile_gpu, profile_cpu = gpu.cpu().float().mean(dim=dims), cpu.float().mean(dim=dims)
    error = (profile_gpu - profile_cpu).abs().max().item()
    assert error < 4.0, f"{axis} profile off by up to {error:.1f} levels: {profile_gpu[-4:].tolist()} vs {profile_cpu[-4:].tolist()}"


@pytest.mark.gpu
def test_gpu_backend_gives_the_colours_of_the_tagged_matrix(make_clip: Callable[..., Path]) -> None:
    """NVDEC's colour kernel converts as BT.601 whatever the tag; BT.709 footage is corrected to it."""
    path = make_clip("nvdec_bt709.mp4", codec="h264", width=640, height=360, fps=30, duration_s=3.0,
                     style="highlight", color_matrix="bt709", source_id=5)
    gpu_frames, gpu_times, _ = create_sampler("gpu", mode="keyframe", size=SIZE).sample_video(path)
    cpu_frames, cpu_times, _ = create_sampler("cpu", mode="keyframe", size=SIZE).sample_video(path)
    assert gpu_times == cpu_times
    bias = (gpu_frames.cpu().float() - cpu_frames.float()).mean(dim=(0, 2, 3))
    assert bias.abs().max().item() < 1.0, f"per-channel bias {bias.tolist()}"


@pytest.mark.gpu
def test_gpu_backend_decodes_what_nvdec_cannot_on_the_cpu(make_clip: Callable[..., Path]) -> None:
    """AV1 (no AV1 decoder on the H100) and a below-minimum HEVC clip: CPU-decoded, still CUDA frames, said so."""
    av1 = make_clip("nvdec_av1.mp4", codec="av1", width=256, height=160, fps=30, duration_s=3.0, source_id=31)
    tiny = make_clip("nvdec_tiny_hevc.mp4", codec="hevc", width=96, height=64, fps=25, duration_s=3.0, source_id=32)
    good = _gpu_clip(make_clip, "h264_30_k1", 1)
    videos = [av1, good, tiny]
    batches = list(create_sampler("gpu", size=SIZE, streams=2).iter_batches(videos))
    assert all(b.frames.device.type == "cuda" for b in batches if len(b))
    times, stamps, outcomes = _collect(batches)
    assert all(o.ok for o in outcomes), [str(o.error) for o in outcomes]
    assert [o.decoder for o in outcomes] == ["pyav", "nvdec", "pyav"]
    assert "below NVDEC's minimum" in outcomes[2].fallback_reason
    for path, sid in ((av1, 31), (good, 1), (tiny, 32)):
        _check_stamps(times[path], stamps[path], sid)


@pytest.mark.gpu
def test_gpu_backend_samples_an_avi_with_b_frames_like_the_cpu(make_clip: Callable[..., Path]) -> None:
    """AVI's packet times are in decode order: exact runs cannot be cut from them, so the cutter refuses and
    the CPU decoder samples the video (presentation times from ``_frame_times``); keyframe clips, one packet
    each, go to NVDEC. Both modes give the CPU backend's frames, each one frame behind its time as FFmpeg's
    AVI times are."""
    path = make_clip("nvdec_bframes.avi", codec="h264", width=320, height=192, fps=24, keyframe_interval_s=1.0,
                     duration_s=4.0, source_id=33)
    for mode, decoder in (("exact", "pyav"), ("keyframe", "nvdec")):
        batches = list(create_sampler("gpu", mode=mode, size=SIZE).iter_batches([path]))
        times, stamps, outcomes = _collect(batches)
        assert outcomes[0].ok and outcomes[0].decoder == decoder, (mode, outcomes[0].fallback_reason)
        if mode == "exact":
            assert "stores decode times" in outcomes[0].fallback_reason
        assert times[path] == pytest.approx(create_sampler("cpu", mode=mode, size=SIZE).sample_video(path)[1])
        _check_stamps([t - 1 / 24 for t in times[path]], stamps[path], 33)


def test_gpu_samples_follow_the_cards_memory() -> None:
    """Samples keep their full-size frames until the resize: a big card gets long samples (each pays DALI's
    fixed set-up once), a small one short ones, never below the old clip budget."""
    from quadvault_dali.sampling._samples import MAX_SAMPLE_PIXELS, sample_pixels_for
    from quadvault_dali.sampling._remux import frame_budget

    gib, mib = 1 << 30, 1 << 20
    h100 = sample_pixels_for(81559 * mib, 16)  # an H100 80GB as CUDA reports it; 4 streams x 4 samples per run
    assert frame_budget(1920, 1088, h100) == 106 and frame_budget(3840, 2160, h100) == 26
    h200 = sample_pixels_for(143771 * mib, 16)
    assert frame_budget(3840, 2160, h200) == 47 and h200 <= MAX_SAMPLE_PIXELS
    assert sample_pixels_for(1024 * gib, 16) == MAX_SAMPLE_PIXELS and frame_budget(3840, 2160, MAX_SAMPLE_PIXELS) == 48
    assert sample_pixels_for(24 * gib, 16) == 48 * 1920 * 1080  # a 24 GB card: never below one old clip
    # four processes on one H100 share its budget (SamplerConfig.memory_share = 1/4)
    assert sample_pixels_for(80 * gib // 4, 16) == 48 * 1920 * 1080


def test_gpu_samples_budget_counts_the_layout_and_the_processes() -> None:
    """The budget is set when sampling starts, from the layout then in force and this sampler's memory share."""
    from quadvault_dali.sampling._base import SamplerConfig
    from quadvault_dali.sampling._processes import ProcessSampler

    assert SamplerConfig(processes=4).memory_share == 1.0
    child = ProcessSampler(DaliSampler, processes=4, streams=2).child_config
    assert (child.processes, child.memory_share) == (1, 0.25)
    with pytest.raises(ValueError, match="memory_share"):
        SamplerConfig(memory_share=0)


def test_a_merge_that_fails_decodes_the_clips_one_by_one(short_vp9: list[tuple[Path, int]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import quadvault_dali.sampling._samples as samples_module

    def broken_merge(clips):  # type: ignore[no-untyped-def]
        raise ValueError("injected muxer failure")

    monkeypatch.setattr(samples_module, "merge_clips", broken_merge)
    samples = _CountingDecoder.install(monkeypatch)
    videos = [p for p, _ in short_vp9]
    times, stamps, outcomes = _collect(list(DaliSampler(mode="keyframe", size=SIZE, streams=1).iter_batches(videos)))
    assert all(o.ok and o.decoder == "dali-cpu" for o in outcomes)
    assert max(samples) == 3  # one video's three keyframes per sample: nothing merged, nothing lost
    for path, sid in short_vp9:
        _check_stamps(times[path], stamps[path], sid)


def test_a_stream_takes_one_runs_worth_of_clips() -> None:
    """Clips that cannot merge: two samples per run, the third kept for the stream's next run (not taken
    for a second run while the other streams wait); clips that merge ride along in the same sample."""
    import queue

    from quadvault_dali.sampling._samples import _Work
    from quadvault_dali.sampling._remux import Clip, SourcePacket, _Run

    def clip(signature, t):  # type: ignore[no-untyped-def]
        run = _Run([SourcePacket(b"\x00", t, t, True)], [t])
        return Clip(b"", np.zeros(3, np.int32), [0.0, 1.0, 2.0], 3, [run], signature)

    vp9 = ("vp9", b"", 128, 80, "yuv420p")
    sampler = DaliSampler(size=SIZE)
    sampler.clips_per_run = 2
    work: queue.Queue = queue.Queue()
    items = [_Work(None, i, clip(sig, float(i))) for i, sig in enumerate([vp9, vp9, None, None, vp9])]  # type: ignore[arg-type]
    for item in items:
        work.put(item)
    carry: list = []
    taken, stop = sampler._next_work(work, carry)
    assert taken == items[:3] and carry == [items[3]] and not stop and work.qsize() == 1  # [vp9+vp9], [None]
    taken, _ = sampler._next_work(work, carry)
    assert taken == items[3:] and carry == []


def test_a_stream_takes_one_streamed_clip_merged_up_to_its_share() -> None:
    """Streamed clips: one fed clip per take, short videos merged only up to ``stream_merge_frames`` wanted
    frames, so a full queue is spread over the idle streams instead of one stream taking 4 x 512 frames."""
    import queue

    from quadvault_dali.sampling._samples import _Work, joins
    from quadvault_dali.sampling._remux import Clip, SourcePacket, _Run

    def clip(t: float) -> Clip:  # three wanted keyframes, cut for the streaming decoder
        runs = [_Run([SourcePacket(b"\x00", t + k, t + k, True)], [t + k]) for k in range(3)]
        made = Clip(b"", np.arange(3, dtype=np.int32), [t, t + 1.0, t + 2.0], 3, runs, ("vp9", b"", 64, 64, "yuv420p"))
        made.stream_cap = 512
        return made

    sampler = DaliSampler(size=SIZE)
    sampler.clips_per_run = 4
    sampler.stream_merge_frames = 7  # two 3-frame clips fit, a third would make 9
    work: queue.Queue = queue.Queue()
    items = [_Work(None, i, clip(10.0 * i)) for i in range(5)]  # type: ignore[arg-type]
    for item in items:
        work.put(item)
    carry: list = []
    taken, _ = sampler._next_work(work, carry)
    assert taken == items[:2] and carry == [items[2]] and work.qsize() == 2
    assert joins(taken[:1], items[1], 0, 7) and not joins(taken, items[2], 0, 7)
    assert joins(taken, items[2], 0, None)  # without the share: up to the clips' own cap of 512
    taken, _ = sampler._next_work(work, carry)
    assert taken == items[2:4] and carry == [items[4]]


def test_budget_samples_keeps_samples_from_shrinking_as_streams_are_added(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gpu backend sizes samples from the card's memory shared by streams x samples per run: 8 streams get
    half the pixels of 4 (on the H100, 2160p samples of one video each). ``budget_samples`` fixes the divisor."""
    from types import SimpleNamespace

    from quadvault_dali.sampling import _gpu

    monkeypatch.setattr(_gpu.torch.cuda, "get_device_properties", lambda _: SimpleNamespace(total_memory=80 << 30))

    def merge_pixels(streams: int, budget: int | None) -> int:
        sampler = SimpleNamespace(config=SimpleNamespace(device_id=0, memory_share=1.0, streams=streams),
                                  clips_per_run=4, budget_samples=budget)
        _gpu.GpuSampler._size_samples(sampler)  # type: ignore[arg-type]
        assert sampler.clip_pixels == sampler.merge_pixels
        return int(sampler.merge_pixels)

    assert merge_pixels(8, None) < merge_pixels(4, None) == merge_pixels(8, 16)


def test_streaming_runs_end_where_a_clip_ends() -> None:
    """The layout the streaming decoder checks every run against (DALI's inputs.video on its CPU build)."""
    from quadvault_dali.sampling._stream_decoder import run_layouts

    assert run_layouts(30, 4, 3) == [[4, 4, 4], [4, 4, 4], [4, 2]]
    assert run_layouts(24, 4, 3) == [[4, 4, 4], [4, 4, 4]]
    assert run_layouts(3, 16, 4) == [[3]]
    assert run_layouts(0, 16, 4) == []


def test_streaming_decoder_fails_a_clip_whose_frame_count_is_off(short_vp9: list[tuple[Path, int]]) -> None:
    """A clip that says it holds more frames than DALI counts (as a hidden VP9 frame would) fails with a
    clear error instead of running the operator dry or reading the next clip's frames; the next clip decodes."""
    from dataclasses import replace

    from quadvault_dali.sampling._stream_decoder import StreamClipDecoder

    from quadvault_dali.errors import DecodeError

    path = short_vp9[0][0]
    fh = CountingFile(path)
    container = open_container(path, fh)
    info, index = probe_open(container, path)
    clips = list(plan_clips(plan_samples(info, index, fps=1.0, mode="keyframe"), container, fh))
    container.close(), fh.close()
    for clip in clips:
        clip.stream_cap = 512  # cut for the streaming decoder, as the sampler does when it streams
    decoder = StreamClipDecoder("cpu", None, SIZE, True, sequences_per_run=2, num_threads=1)
    bad = replace(clips[0], packets=clips[0].packets + 1)
    results = decoder.decode([bad, clips[0]])
    assert isinstance(results[0], DecodeError) and "streaming decoder returned" in str(results[0])
    assert isinstance(results[1], torch.Tensor) and results[1].shape[0] == len(clips[0])
    assert [s[0] for s in _stamps(results[1])] == pytest.approx(clips[0].times, abs=STAMP_TOL)


def test_stream_decode_in_the_config_reaches_the_decoder(short_vp9: list[tuple[Path, int]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``SamplerConfig.stream_decode`` (what scan_bench's ``s`` layouts set through ScanOptions) selects the
    streaming decoder, in this process and in decoding children alike (they get the config)."""
    import quadvault_dali.sampling._stream_decoder as streaming

    used: list[int] = []
    real = streaming.StreamClipDecoder._decode_one

    def counting(self, clip):  # type: ignore[no-untyped-def]
        used.append(len(clip))
        return real(self, clip)

    monkeypatch.setattr(streaming.StreamClipDecoder, "_decode_one", counting)
    videos = [p for p, _ in short_vp9[:2]]
    frames = sum(len(b) for b in DaliSampler(mode="keyframe", size=SIZE, stream_decode=True).iter_batches(videos))
    assert frames == 6 and sum(used) == 6
    used.clear()
    sum(len(b) for b in DaliSampler(mode="keyframe", size=SIZE).iter_batches(videos))
    assert used == []


def test_on_nvdec_only_h264_and_hevc_clips_are_streamed(short_vp9: list[tuple[Path, int]],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """DALI's streaming operator takes every picture NVDEC puts out as a frame of the clip: VP9's hidden frames
    would overrun the sample it sized from the packets. On NVDEC, VP9 clips are cut and decoded per sample."""
    import quadvault_dali.sampling._stream_decoder as streaming

    sampler = DaliSampler(mode="keyframe", size=SIZE, stream_decode=True)
    sampler._streaming = True
    assert all(sampler._streams(c) for c in ("vp9", "mjpeg", "h264"))  # DALI's CPU decoder: every codec
    monkeypatch.setattr(type(sampler), "decoder_device", "mixed")
    assert sampler._streams("h264") and sampler._streams("hevc") and not sampler._streams("vp9")
    sampler._streaming = False
    assert not sampler._streams("h264")
    # a streaming decoder hands clips cut without a stream cap to a per-sample decoder, in order
    streamed: list[int] = []
    per_sample: list[int] = []
    real_one, real_many = streaming.StreamClipDecoder._decode_one, streaming.ClipDecoder.decode
    monkeypatch.setattr(streaming.StreamClipDecoder, "_decode_one",
                        lambda self, clip: streamed.append(len(clip)) or real_one(self, clip))
    monkeypatch.setattr(streaming.ClipDecoder, "decode",
                        lambda self, clips: per_sample.extend(len(c) for c in clips) or real_many(self, clips))
    path, sid = short_vp9[0]
    fh = CountingFile(path)
    container = open_container(path, fh)
    info, index = probe_open(container, path)
    clips = list(plan_clips(plan_samples(info, index, fps=1.0, mode="keyframe"), container, fh, max_frames=1))
    container.close(), fh.close()
    clips[1].stream_cap = 512
    decoder = streaming.StreamClipDecoder("cpu", None, SIZE, True, sequences_per_run=2, num_threads=1)
    results = decoder.decode(clips)
    decoder.close()
    assert (streamed, per_sample) == ([1], [1, 1])
    assert [s for r in results for s in _stamps(r)] == [(pytest.approx(t, abs=STAMP_TOL), sid)
                                                        for c in clips for t in c.times]


@pytest.mark.gpu
@pytest.mark.parametrize("client", ["dali", "ffmpeg"])
def test_gpu_backend_hevc_clips_of_videos_alike_decode_back_to_back(make_clip: Callable[..., Path],
                                                                     client: str) -> None:
    """Four HEVC videos made alike: their keyframes after the first are CRAs, relabelled BLA, and the same second
    has the same picture order count in each. Clips of one keyframe each, prepared for several videos at once,
    reach the one stream interleaved, so BLAs with the same count from different videos can meet in one DALI
    sample or one FFmpeg decoder (whether they do depends on the prepare threads' timing). FFmpeg's HEVC decoder
    dropped such pictures as duplicates on the H100 (stop 21) until the client drained it between clips
    (``test_gpu_hevc_keyframes_of_two_videos_fed_in_turn_all_come_out_of_nvdec`` forces the case); whether
    NVIDIA's parser under DALI takes them is what this asks. Every second must be its own video's, with no CPU
    fallback."""
    videos = [make_clip(f"nvdec_hevc_alike_s{sid}.mp4", codec="hevc", width=256, height=160, fps=30, duration_s=6.0,
                        keyframe_interval_s=1.0, source_id=sid) for sid in (51, 52, 53, 54)]
    sampler = create_sampler("gpu", mode="keyframe", size=SIZE, streams=1, batch_size=64, decode_client=client)

    def small_clips() -> None:  # 1 keyframe per clip, several videos' clips per DALI sample
        sampler.clip_pixels, sampler.merge_pixels = 256 * 160, 64 * 256 * 160

    sampler._size_samples = small_clips  # type: ignore[method-assign]
    times, stamps, outcomes = _collect(list(sampler.iter_batches(videos)))
    assert [o.path for o in outcomes] == videos
    for path, sid, outcome in zip(videos, (51, 52, 53, 54), outcomes):
        assert outcome.ok and outcome.fallback_reason is None, (path.name, outcome.fallback_reason)
        assert times[path] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        _check_stamps(times[path], stamps[path], sid)


@pytest.mark.gpu
def test_gpu_dali_decodes_merged_runs_of_alike_hevc_videos(make_clip: Callable[..., Path]) -> None:
    """One DALI sample holding two alike HEVC videos' keyframe runs in turn (A 0 s, B 0 s, A 1 s, B 1 s, ...), built
    with ``merge_clips`` as the sampler merges short clips: each keyframe after the first is a CRA relabelled BLA,
    and the same second has the same picture order count in both videos, which FFmpeg 7.1+'s HEVC decoder drops
    as a duplicate (the FFmpeg client drains between clips for it; PyAV's FFmpeg 8 lost 3 of this very clip's 8
    pictures). Whether NVIDIA's parser under DALI keeps every
    picture, independent of the prepare threads' timing that
    ``test_gpu_backend_hevc_clips_of_videos_alike_decode_back_to_back`` depends on: each frame must be its own
    video's second."""
    from quadvault_dali.sampling._clip_decoder import ClipDecoder
    from quadvault_dali.sampling._remux import can_follow, merge_clips

    ids = (57, 58)
    per_video = []
    for sid in ids:
        path = make_clip(f"nvdec_hevc_merged_s{sid}.mp4", codec="hevc", width=256, height=160, fps=30, duration_s=4.0,
                         keyframe_interval_s=1.0, source_id=sid)
        fh = CountingFile(path)
        container = open_container(path, fh, quick=True)
        info, index = probe_open(container, path)
        per_video.append(list(plan_clips(plan_samples(info, index, fps=1.0, mode="keyframe"), container, fh,
                                         max_frames=1)))
        container.close()
        fh.close()
    interleaved = [clip for pair in zip(*per_video) for clip in pair]
    assert len(interleaved) == 8 and all(can_follow(b, a) for a, b in zip(interleaved, interleaved[1:]))
    merged = merge_clips(interleaved)
    decoder = ClipDecoder("mixed", 0, SIZE, True, clips_per_run=1)
    try:
        (frames,) = decoder.decode([merged])
    finally:
        decoder.close()
    assert not isinstance(frames, Exception), frames
    assert _stamps(frames) == [pytest.approx((float(t), sid), abs=STAMP_TOL) for t in range(4) for sid in ids]
