"""The gpu backend's FFmpeg decode client (``_ffmpeg_decoder``): decoders kept open across videos, fed packets.

(a) Without a GPU: the same client and sampler machinery on FFmpeg's CPU decoders (swscale standing in for
    NVDEC's scaler), on H.264 and HEVC: every frame's stamp is checked against its timestamp, and against
    the cpu backend's times and pixels.
(b) ``@pytest.mark.gpu``: ``h264_cuvid``/``hevc_cuvid`` on NVDEC.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from quadvault_dali.sampling import _ffmpeg_decoder, create_sampler
from quadvault_dali.sampling._clip_decoder import DecodeStats
from quadvault_dali.sampling._colour import MATRIX_WEIGHTS, ycbcr_to_rgb
from quadvault_dali.sampling._ffmpeg_decoder import FfmpegDecoder, _as_levels, output_sizes, planes_to_rgb
from quadvault_dali.sampling._gpu import DaliSampler
from quadvault_dali.errors import DecodeError
from quadvault_dali.probe import probe_video

from test_gpu_sampling import SIZE, _check_stamps, _collect

CLIPS = {
    "h264_30_k1": dict(codec="h264", fps=30, keyframe_interval_s=1.0),
    "h264_25_k2": dict(codec="h264", fps=25, keyframe_interval_s=2.0),  # veryfast x264: with B-frames
    "hevc_30_k1": dict(codec="hevc", fps=30, keyframe_interval_s=1.0),
    "h264_rot90": dict(codec="h264", fps=30, keyframe_interval_s=1.0, rotation=90),
    "h264_vfr": dict(codec="h264", fps=30, vfr=True),
}


@pytest.fixture(scope="module")
def ffmpeg_clips(make_clip: Callable[..., Path]) -> list[tuple[Path, int]]:
    """H.264 (B-frames, rotation, VFR included) and HEVC, with their source ids."""
    return [(make_clip(f"ffclient_{name}_s{sid}.mp4", width=160, height=96, duration_s=4.0, source_id=sid, **spec), sid)
            for sid, (name, spec) in enumerate(CLIPS.items(), start=21)]


def _packet_clips(path: Path, fps: float, mode: str, max_frames: int):  # type: ignore[no-untyped-def]
    """``path``'s probe and its clips of packets (no MP4), as the sampler cuts them for the FFmpeg client."""
    from quadvault_dali.probe import open_container, probe_open
    from quadvault_dali.sampling._plan import plan_samples
    from quadvault_dali.sampling._reader import CountingFile
    from quadvault_dali.sampling._remux import plan_clips

    with CountingFile(path) as fh, open_container(path, fh) as container:
        info, index = probe_open(container, path)
        plan = plan_samples(info, index, fps=fps, mode=mode)  # type: ignore[arg-type]
        return info, list(plan_clips(plan, container, fh, max_frames=max_frames, mux=False))


@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_ffmpeg_client_gives_every_second_like_the_cpu_backend(ffmpeg_clips: list[tuple[Path, int]],
                                                               broken_clips: dict[str, Path], mode: str) -> None:
    """Two streams, each with decoders kept open across videos of several set-ups; broken files in between."""
    videos = [p for p, _ in ffmpeg_clips]
    videos.insert(1, broken_clips["text"])
    videos.insert(4, broken_clips["truncated"])
    sampler = DaliSampler(fps=1.0, mode=mode, size=SIZE, batch_size=5, streams=2, decode_client="ffmpeg")
    batches = list(sampler.iter_batches(videos))
    times, stamps, outcomes = _collect(batches)
    assert [o.path for o in outcomes] == videos
    assert [o.ok for o in outcomes] == [p not in broken_clips.values() for p in videos]
    cpu = create_sampler("cpu", fps=1.0, mode=mode, size=SIZE)
    for path, sid in ffmpeg_clips:
        _check_stamps(times[path], stamps[path], sid)
        _, cpu_times, cpu_outcome = cpu.sample_video(path)
        assert times[path] == pytest.approx(cpu_times, abs=1e-6), path.name
        outcome = next(o for o in outcomes if o.path == path)
        assert outcome.decoder == "dali-cpu" and outcome.fallback_reason is None, (path.name, outcome.fallback_reason)
        assert outcome.frames == outcome.frames_expected == len(times[path])
    stats = sampler.decode_stats
    assert stats.decoder_opens <= 2 * 3  # per stream at most one per set-up (H.264 160x96, 96x160, HEVC...)
    assert stats.frames == sum(len(t) for p, t in times.items() if p not in broken_clips.values())


def test_ffmpeg_client_pixels_match_the_cpu_backend(ffmpeg_clips: list[tuple[Path, int]]) -> None:
    """Same frames, same colours and geometry (rotation included), up to resampling noise."""
    for path, _ in ffmpeg_clips[:4]:
        ours, our_times, _ = DaliSampler(mode="keyframe", size=SIZE, decode_client="ffmpeg").sample_video(path)
        cpu, cpu_times, _ = create_sampler("cpu", mode="keyframe", size=SIZE).sample_video(path)
        assert our_times == cpu_times and ours.shape == cpu.shape
        diff = (ours.float() - cpu.float()).abs().mean().item()
        assert diff < 6.0, f"{path.name}: mean absolute difference {diff:.1f}"


def test_a_clip_is_converted_the_same_in_chunks(ffmpeg_clips: list[tuple[Path, int]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A clip's pictures are converted in batches of ``CONVERT_CHUNK``: chunked or whole, the same pixels."""
    path = ffmpeg_clips[2][0]  # HEVC, 4 keyframes in one clip
    whole, times, _ = DaliSampler(mode="keyframe", size=SIZE, decode_client="ffmpeg").sample_video(path)
    monkeypatch.setattr(_ffmpeg_decoder, "CONVERT_CHUNK", 3)
    chunked, chunked_times, _ = DaliSampler(mode="keyframe", size=SIZE, decode_client="ffmpeg").sample_video(path)
    assert len(times) == 4 and chunked_times == times and torch.equal(chunked, whole)


def test_ffmpeg_client_keeps_display_orientation_without_square(ffmpeg_clips: list[tuple[Path, int]]) -> None:
    path = dict((sid, p) for p, sid in ffmpeg_clips)[24]  # shown 160x96, stored turned by 90 degrees
    frames, _, _ = DaliSampler(mode="keyframe", size=SIZE, square=False, decode_client="ffmpeg").sample_video(path)
    cpu, _, _ = create_sampler("cpu", mode="keyframe", size=SIZE, square=False).sample_video(path)
    assert frames.shape == cpu.shape and frames.shape[3] > frames.shape[2]
    assert (frames.float() - cpu.float()).abs().mean().item() < 6.0


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_turned_pictures_are_cropped_like_the_cpu_backend(make_clip: Callable[..., Path], rotation: int) -> None:
    """Turned, then cropped square, as the cpu backend does: with an odd margin (84 - 63 = 21 columns) cropping
    before turning would put the picture one pixel off."""
    path = make_clip(f"ffclient_odd_rot{rotation}_s{60 + rotation // 90}.mp4", width=320, height=240, duration_s=3.0,
                     rotation=rotation, source_id=60 + rotation // 90, style="highlight")
    ours, times, _ = DaliSampler(mode="keyframe", size=63, decode_client="ffmpeg").sample_video(path)
    cpu, cpu_times, _ = create_sampler("cpu", mode="keyframe", size=63).sample_video(path)
    assert times == cpu_times and ours.shape == cpu.shape == (len(times), 3, 63, 63)
    assert (ours.float() - cpu.float()).abs().mean().item() < 3.0


def test_a_stream_with_more_set_ups_than_it_keeps_decodes_them_all(make_clip: Callable[..., Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """One decoder kept: a change of set-up lets the last one go and opens the next; every video still decodes
    on the client, each frame its own second (in PyAV 14+ a codec context has no ``close``: letting it go must
    not fail the clip)."""
    monkeypatch.setattr(_ffmpeg_decoder, "KEPT_DECODERS", 1)
    sizes = [(128, 80), (160, 96), (128, 80), (192, 112)]
    paths = [make_clip(f"ffclient_setup_{w}x{h}_s{70 + i}.mp4", width=w, height=h, duration_s=3.0, source_id=70 + i)
             for i, (w, h) in enumerate(sizes)]
    sampler = DaliSampler(mode="keyframe", size=SIZE, streams=1, decode_client="ffmpeg")
    times, stamps, outcomes = _collect(list(sampler.iter_batches(paths)))
    assert all(o.ok and o.decoder == "dali-cpu" and o.fallback_reason is None for o in outcomes), \
        [(o.path.name, o.fallback_reason) for o in outcomes]
    for i, path in enumerate(paths):
        _check_stamps(times[path], stamps[path], 70 + i)
    # 3 set-ups; the two 128x80 videos share one unless the other set-up was fed between them (the prepare
    # threads queue the videos in either order)
    assert 3 <= sampler.decode_stats.decoder_opens <= len(sizes)


def test_videos_the_client_cannot_take_go_to_the_cpu_decoder(make_clip: Callable[..., Path]) -> None:
    vp9 = make_clip("ffclient_vp9_s31.mp4", codec="vp9", width=128, height=80, duration_s=3.0, source_id=31)
    sampler = DaliSampler(mode="keyframe", size=SIZE, decode_client="ffmpeg")
    frames, times, outcome = sampler.sample_video(vp9)
    assert outcome.decoder == "pyav" and "h264 and hevc only" in (outcome.fallback_reason or "")
    _check_stamps(times, [(s.time_s, s.source_id) for s in map(_stamp, frames)], 31)


def _stamp(frame: torch.Tensor):  # type: ignore[no-untyped-def]
    from quadvault_dali.synth import read_stamp

    return read_stamp(frame.cpu().numpy())


def test_a_clip_held_back_comes_out_on_a_later_feed_or_the_drain(ffmpeg_clips: list[tuple[Path, int]]) -> None:
    """Fed one after another into one decoder (never reopened), clips complete in feed order, each with its own
    seconds; what the decoder still holds comes out in ``drain``."""
    path = ffmpeg_clips[1][0]  # H.264 with B-frames: the software decoder holds pictures back
    info, clips = _packet_clips(path, 2.0, "exact", max_frames=2)
    assert len(clips) >= 3 and all(c.data == b"" and c.runs for c in clips)
    stats = DecodeStats()
    decoder = FfmpegDecoder(torch.device("cpu"), SIZE, True, hardware=False, stats=stats)
    done = []
    for i, clip in enumerate(clips):
        done += decoder.feed(i, clip, info)
    held = decoder.holding
    done += decoder.drain()
    assert decoder.holding == 0 and stats.drains == (1 if held else 0)
    decoder.close()
    assert [k for k, _ in done] == list(range(len(clips)))
    for (i, frames), clip in zip(done, clips):
        assert isinstance(frames, torch.Tensor) and frames.shape[0] == len(clip.times)
        _check_stamps(clip.times, [(s.time_s, s.source_id) for s in map(_stamp, frames)], ffmpeg_clips[1][1])
    assert stats.decoder_opens == 1  # one set-up: never reopened between clips


def test_hevc_keyframes_of_two_videos_fed_in_turn_all_come_out(make_clip: Callable[..., Path]) -> None:
    """x265's keyframes after the first are CRAs, relabelled BLA: a BLA's picture order count is its low bits
    only, so the same second of two videos has the same count. Fed in turn into one decoder, FFmpeg refused
    the second video's picture while it still held the first's ("Duplicate POC in a sequence", not raised):
    on the H100 the 39-s keyframe of 70 joined 4K videos fell back to the CPU. Each must come out, showing
    its own video and second, and the decoder is drained between such clips only."""
    videos = [(make_clip(f"ffclient_hevc_pair_s{sid}.mp4", codec="hevc", fps=30, keyframe_interval_s=1.0, width=160,
                         height=96, duration_s=4.0, source_id=sid), sid) for sid in (41, 42)]
    cuts = [(_packet_clips(path, 1.0, "keyframe", max_frames=1), sid) for path, sid in videos]
    stats = DecodeStats()
    decoder = FfmpegDecoder(torch.device("cpu"), SIZE, True, hardware=False, stats=stats)
    fed, results = [], []
    for second in (3, 2, 1):  # CRAs: the IDR at 0 would start a new sequence anyway
        for (info, clips), sid in cuts:
            fed.append((sid, second))
            results += decoder.feed((sid, second), clips[second], info)
    results += decoder.drain()
    assert sorted(key for key, _ in results) == sorted(fed)
    for (sid, second), frames in results:
        assert isinstance(frames, torch.Tensor), (sid, second, frames)
        _check_stamps([float(second)], [(s.time_s, s.source_id) for s in map(_stamp, frames)], sid)
    assert stats.drains == len(fed)  # before each clip after the first, and at the end
    assert stats.decoder_opens == 1


def test_hevc_keyframes_of_one_clip_with_the_same_order_count_all_come_out(make_clip: Callable[..., Path]) -> None:
    """Keyframes 256 frames apart (8-s GOPs at 32 frames/s) all have order count 0 in x265's 8 bits: in one
    clip FFmpeg kept one of five (a review helper's case). The decoder gives up what it holds between runs."""
    path = make_clip("ffclient_hevc_gop256_s61.mp4", codec="hevc", fps=32, keyframe_interval_s=8.0, width=160,
                     height=96, duration_s=33.0, source_id=61)
    info, clips = _packet_clips(path, 1.0, "keyframe", max_frames=40)
    assert len(clips) == 1 and clips[0].times == [0.0, 8.0, 16.0, 24.0, 32.0]
    decoder = FfmpegDecoder(torch.device("cpu"), SIZE, True, hardware=False)
    results = decoder.feed("clip", clips[0], info) + decoder.drain()
    assert [key for key, _ in results] == ["clip"]
    frames = results[0][1]
    assert isinstance(frames, torch.Tensor), frames
    _check_stamps(clips[0].times, [(s.time_s, s.source_id) for s in map(_stamp, frames)], 61)


def test_a_clip_whose_picture_never_comes_fails_without_waiting_for_the_drain(
        ffmpeg_clips: list[tuple[Path, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A picture the decoder dropped without an error (here: a wanted time no packet has) must not keep its clip,
    and so its video, waiting until the stream's queue runs dry: after ``HELD_PACKETS`` more packets the decoder
    is drained and the clip fails (to the CPU decoder), the others complete."""
    monkeypatch.setattr(_ffmpeg_decoder, "HELD_PACKETS", 6)
    path, sid = ffmpeg_clips[0]
    cuts = [_packet_clips(path, 1.0, "keyframe", max_frames=2) for _ in range(4)]  # fresh clips to feed each time
    info, clips = cuts[0][0], [c for _, c in cuts]
    broken = clips[0][0]
    broken.times = broken.times + [99.0]  # a second no packet carries
    decoder = FfmpegDecoder(torch.device("cpu"), SIZE, True, hardware=False)
    results = decoder.feed("broken", broken, info)
    fed = ["broken"]
    for i, clip in enumerate(c for copy in clips[1:] for c in copy):
        fed.append(i)
        results += decoder.feed(i, clip, info)
        if any(key == "broken" for key, _ in results):
            break
    failed = dict(results)["broken"]
    assert isinstance(failed, DecodeError) and "did not come out" in str(failed)
    assert len(fed) < 1 + 3 * len(clips[0])  # it came back before the last feed
    results += decoder.drain()
    assert sorted(map(str, (k for k, _ in results))) == sorted(map(str, fed))
    for key, frames in results:
        if key != "broken":
            assert isinstance(frames, torch.Tensor)


def test_a_set_up_no_decoder_opens_for_is_not_tried_for_every_clip(ffmpeg_clips: list[tuple[Path, int]],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening failed (no NVDEC for it, CUDA out of memory): the stream's next clips of that set-up fail at once
    with the same error (to the CPU decoder), and it is tried again after the next drain."""
    info, clips = _packet_clips(ffmpeg_clips[0][0], 1.0, "keyframe", max_frames=1)
    assert len(clips) >= 3
    opened = []
    real = _ffmpeg_decoder._Decoder.__init__

    def refusing(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(1)
        if len(opened) == 1:
            raise RuntimeError("no decoder for you")
        real(self, *args, **kwargs)

    monkeypatch.setattr(_ffmpeg_decoder._Decoder, "__init__", refusing)
    decoder = FfmpegDecoder(torch.device("cpu"), SIZE, True, hardware=False)
    results = [r for i, clip in enumerate(clips[:2]) for r in decoder.feed(i, clip, info)]
    assert [str(res) for _, res in results] == [
        "no decoder for you", "no FFmpeg decoder opens for this set-up: RuntimeError: no decoder for you"]
    assert len(opened) == 1
    decoder.drain()  # a drain in between (the queue ran dry): still not tried again
    assert [str(res) for _, res in decoder.feed("between", clips[2], info)] == [
        "no FFmpeg decoder opens for this set-up: RuntimeError: no decoder for you"] and len(opened) == 1
    decoder.drain(end=True)  # the run's end: tried again
    later = decoder.feed("again", clips[2], info) + decoder.drain()
    assert len(opened) == 2 and isinstance(later[0][1], torch.Tensor)


def test_a_packet_the_decoder_raises_on_fails_its_clip_alone(ffmpeg_clips: list[tuple[Path, int]],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """FFmpeg raises on one clip's packet: that clip fails (to the CPU decoder); the clip the decoder still held
    comes out of it whole, and the set-up is opened afresh for the clips after."""
    path, sid = ffmpeg_clips[1]  # H.264 with B-frames, 2-s GOPs: the decoder holds a clip back after each feed
    info, clips = _packet_clips(path, 2.0, "exact", max_frames=1)
    bad = 3
    fail_at = sum(len(run.packets) for clip in clips[:bad] for run in clip.runs) + 1  # the bad clip's first packet

    class Flaky:
        def __init__(self, ctx: object) -> None:
            self.ctx, self.calls = ctx, 0

        def decode(self, packet=None):  # type: ignore[no-untyped-def]
            if packet is not None:
                self.calls += 1
                if self.calls == fail_at:
                    raise ValueError("Invalid data found when processing input")
            return self.ctx.decode(packet)

        def flush_buffers(self) -> None:
            self.ctx.flush_buffers()

    real = _ffmpeg_decoder._Decoder.__init__
    made = []

    def flaky_first(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        real(self, *args, **kwargs)
        if not made:
            self.ctx = Flaky(self.ctx)
        made.append(self)

    monkeypatch.setattr(_ffmpeg_decoder._Decoder, "__init__", flaky_first)
    decoder = FfmpegDecoder(torch.device("cpu"), SIZE, True, hardware=False)
    results: dict = {}
    for i, clip in enumerate(clips):
        held = decoder.holding
        results.update(decoder.feed(i, clip, info))
        if i == bad:
            assert held >= 1  # the clip before it was still inside the failing decoder
    results.update(decoder.drain())
    assert sorted(results) == list(range(len(clips))) and len(made) == 2
    assert str(results.pop(bad)) == "Invalid data found when processing input"
    for i, frames in results.items():
        assert isinstance(frames, torch.Tensor), (i, frames)
        _check_stamps(clips[i].times, [(st.time_s, st.source_id) for st in map(_stamp, frames)], sid)


def _run_briefly(sampler: DaliSampler, videos: list[Path], timeout: float = 60) -> dict[str, object]:
    """``iter_batches`` in a thread: its batches or its error, and a failure if it does not end in time."""
    import threading

    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["batches"] = list(sampler.iter_batches(videos))
        except Exception as exc:  # noqa: BLE001 - what the tests look at
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=timeout)
    assert not thread.is_alive(), "the run hung after a decode stream died"
    return result


def _stopped_by(result: dict[str, object], message: str) -> None:
    from quadvault_dali.errors import BackendUnavailableError

    error = result.get("error")
    assert isinstance(error, BackendUnavailableError), result  # never a finished run with error rows
    assert f"a decode stream stopped: {message}" in str(error) and error.__cause__ is not None


def test_a_decode_stream_that_dies_stops_the_run_instead_of_hanging(ffmpeg_clips: list[tuple[Path, int]],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Each decode loop guards its clips, so an exception out of one is a bug; the clips that stream held would
    never come. The run must stop with that error (a scan would otherwise wait all night), not hang."""
    def broken_drain(self, end=False):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom in drain")

    monkeypatch.setattr(FfmpegDecoder, "drain", broken_drain)
    sampler = DaliSampler(fps=1.0, mode="keyframe", size=SIZE, batch_size=2, streams=2, decode_client="ffmpeg")
    _stopped_by(_run_briefly(sampler, [p for p, _ in ffmpeg_clips]), "RuntimeError: boom in drain")


def test_a_stream_that_dies_holding_the_last_video_stops_the_run(ffmpeg_clips: list[tuple[Path, int]],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumer waits on the only video left when its stream dies: the video must not come out as a
    finished error row (a resumed scan would skip it for good), the run stops."""
    import threading

    fed = threading.Event()

    def holds(self, key, clip, info):  # type: ignore[no-untyped-def]
        fed.set()
        return []  # held back, as a decoder with reordering delay holds pictures

    def broken_drain(self, end=False):  # type: ignore[no-untyped-def]
        if fed.is_set():
            raise RuntimeError("boom in drain")
        return []

    monkeypatch.setattr(FfmpegDecoder, "feed", holds)
    monkeypatch.setattr(FfmpegDecoder, "drain", broken_drain)
    sampler = DaliSampler(fps=1.0, mode="keyframe", size=SIZE, batch_size=2, streams=1, decode_client="ffmpeg")
    _stopped_by(_run_briefly(sampler, [ffmpeg_clips[0][0]]), "RuntimeError: boom in drain")


def test_every_stream_dying_with_the_queue_full_stops_the_run(make_clip: Callable[..., Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The only stream dies while preparers wait to queue clips no stream will take: they must give up, or the
    run's end waits for them forever."""
    import time

    videos = [make_clip(f"ffclient_full_queue_{i}.mp4", width=160, height=96, duration_s=4.0, source_id=40 + i,
                        codec="h264", fps=30, keyframe_interval_s=1.0) for i in range(6)]

    def slow_bug(self, w, result, *, displayed=False):  # type: ignore[no-untyped-def]
        time.sleep(1.0)  # the queue fills meanwhile
        raise RuntimeError("bug in hand-over")

    monkeypatch.setattr(DaliSampler, "_hand_over", slow_bug)
    sampler = DaliSampler(fps=2.0, mode="keyframe", size=SIZE, batch_size=2, streams=1, decode_client="ffmpeg")
    sampler.clips_per_run = 1  # a queue of a few clips
    sampler.clip_pixels = 160 * 96 * 2  # clips of two frames: several per video
    _stopped_by(_run_briefly(sampler, videos), "RuntimeError: bug in hand-over")


def test_output_sizes_oversample_and_never_upscale(ffmpeg_clips: list[tuple[Path, int]]) -> None:
    info = probe_video(ffmpeg_clips[0][0])
    hd = dataclasses.replace(info, width=1920, height=1080, rotation=0)
    assert output_sizes(hd, 224) == ((796, 448), (398, 224))
    turned = dataclasses.replace(info, width=160, height=96, rotation=90)  # shown 160x96, coded 96x160
    assert output_sizes(turned, 64) == ((96, 160), (64, 107))


@pytest.mark.parametrize(("matrix", "full"), [("bt709", False), ("bt470bg", False), ("bt709", True)])
def test_nv12_conversion_is_the_tagged_matrix(matrix: str, full: bool) -> None:
    """Flat NV12 planes come out as the matrix and range say (checked against the formula in numpy)."""
    y, cb, cr = 120, 90, 170
    luma = torch.full((1, 8, 8), float(y))
    chroma = torch.tensor([float(cb), float(cr)]).expand(1, 4, 4, 2)
    rgb = planes_to_rgb(luma, chroma, matrix, full, (8, 8), 0, None)[0, :, 4, 4].numpy().astype(float)
    scale_y, scale_c, off = (1.0, 1.0, 0.0) if full else (255 / 219, 255 / 224, 16.0)
    want = ycbcr_to_rgb(*MATRIX_WEIGHTS[matrix]) @ np.array([(y - off) * scale_y, (cb - 128) * scale_c,
                                                               (cr - 128) * scale_c])
    assert np.abs(rgb - np.clip(np.round(want), 0, 255)).max() <= 1


def test_p010_planes_are_read_on_the_8_bit_scale() -> None:
    """10-bit pictures (drones' D-Log HEVC) come as P010: 10 bits in the top of 16, read as 0-255 levels."""
    levels = torch.tensor([0, 16 * 4, 120 * 4, 235 * 4, 1023], dtype=torch.int32)
    p010 = (levels << 6).to(torch.int16)  # what a uint16 plane holds, bit for bit (the top values wrap)
    got = _as_levels(p010.view(torch.uint16))
    assert got.tolist() == pytest.approx([0.0, 16.0, 120.0, 235.0, 1023 / 4], abs=1e-6)
    assert _as_levels(torch.tensor([7, 250], dtype=torch.uint8)).tolist() == [7.0, 250.0]


# --- (b) on NVDEC ----------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("nvdec_path", ["hwaccel", "cuvid"])
@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_gpu_ffmpeg_client_every_frame_is_the_right_second(make_clip: Callable[..., Path], mode: str, nvdec_path: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """FFmpeg's decoders with NVDEC (its hwaccel, or h264_cuvid / hevc_cuvid) through PyAV: the right second in
    every frame, the cpu backend's times, on CUDA."""
    monkeypatch.setattr(_ffmpeg_decoder, "NVDEC_PATH", nvdec_path)
    torch.zeros(1, device="cuda")  # PyTorch's context already running, as in a scan: FFmpeg must share it
    specs = {**CLIPS, "hevc_25_k2": dict(codec="hevc", fps=25, keyframe_interval_s=2.0)}
    paths = [make_clip(f"nvffclient_{name}_s{sid}.mp4", width=256, height=160, duration_s=5.0, source_id=sid, **spec)
             for sid, (name, spec) in enumerate(specs.items(), start=41)]
    sampler = create_sampler("gpu", fps=1.0, mode=mode, size=SIZE, batch_size=16, streams=2, decode_client="ffmpeg")
    batches = list(sampler.iter_batches(paths))
    assert all(b.frames.device.type == "cuda" for b in batches if len(b))
    on_device = sum(d.frames_on_device for d in sampler._idle_decoders)  # type: ignore[attr-defined]
    assert (on_device > 0) == (nvdec_path == "hwaccel")  # NVDEC's pictures, never a quiet CPU decode
    assert sampler.decode_stats.as_dict()["frames_on_device"] == on_device  # what benchmark rows report
    times, stamps, outcomes = _collect(batches)
    assert all(o.ok and o.decoder == "nvdec" and o.fallback_reason is None for o in outcomes), \
        [(o.path.name, str(o.error), o.decoder, o.fallback_reason) for o in outcomes]
    cpu = create_sampler("cpu", fps=1.0, mode=mode, size=SIZE)
    for sid, path in enumerate(paths, start=41):
        _check_stamps(times[path], stamps[path], sid)
        assert times[path] == pytest.approx(cpu.sample_video(path)[1], abs=1e-6), path.name


@pytest.mark.gpu
@pytest.mark.parametrize("nvdec_path", ["hwaccel", "cuvid"])
def test_gpu_ffmpeg_client_pixels_match_the_cpu_backend(make_clip: Callable[..., Path], nvdec_path: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ffmpeg_decoder, "NVDEC_PATH", nvdec_path)
    path = make_clip("nvffclient_h264_pixels_s51.mp4", codec="h264", width=640, height=360, duration_s=4.0,
                     source_id=51, keyframe_interval_s=1.0)
    ours, times, _ = create_sampler("gpu", mode="keyframe", size=SIZE, decode_client="ffmpeg").sample_video(path)
    cpu, cpu_times, _ = create_sampler("cpu", mode="keyframe", size=SIZE).sample_video(path)
    assert times == cpu_times and ours.shape == cpu.shape
    diff = (ours.cpu().float() - cpu.float()).abs().mean().item()
    assert diff < 8.0, f"mean absolute difference {diff:.1f}"


@pytest.mark.gpu
def test_gpu_hevc_keyframes_of_two_videos_fed_in_turn_all_come_out_of_nvdec(make_clip: Callable[..., Path]) -> None:
    """The duplicate-POC case of ``test_hevc_keyframes_of_two_videos_fed_in_turn_all_come_out`` on NVDEC through
    FFmpeg's hwaccel (the path where the H100 lost 4K keyframes in stop 21): every picture from NVDEC, each
    showing its own video and second."""
    videos = [(make_clip(f"nvffclient_hevc_pair_s{sid}.mp4", codec="hevc", fps=30, keyframe_interval_s=1.0,
                         width=256, height=160, duration_s=4.0, source_id=sid), sid) for sid in (43, 44)]
    cuts = [(_packet_clips(path, 1.0, "keyframe", max_frames=1), sid) for path, sid in videos]
    decoder = FfmpegDecoder(torch.device("cuda"), SIZE, True, hardware=True)
    fed, results = [], []
    for second in (3, 2, 1):
        for (info, clips), sid in cuts:
            fed.append((sid, second))
            results += decoder.feed((sid, second), clips[second], info)
    results += decoder.drain()
    assert sorted(key for key, _ in results) == sorted(fed)
    assert decoder.frames_on_device == len(fed)
    for (sid, second), frames in results:
        assert isinstance(frames, torch.Tensor), (sid, second, frames)
        _check_stamps([float(second)], [(s.time_s, s.source_id) for s in map(_stamp, frames)], sid)
