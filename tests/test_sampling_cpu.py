"""The cpu backend samples the right frame from the right second, for every kind of file.

Every generated frame carries its presentation time in its pixels (quadvault_dali.synth), so each
check reads the frame back and compares it with the timestamp the sampler reported and the second it
stands for.
"""

from __future__ import annotations

import logging

from pathlib import Path

import numpy as np
import pytest

from quadvault_dali.errors import DecodeError, VideoOpenError
from quadvault_dali.probe import probe_video
from quadvault_dali.sampling import create_sampler, plan_samples
from quadvault_dali.synth import read_stamp

CASES = {
    "h264_30_k1": dict(codec="h264", fps=30, keyframe_interval_s=1.0),
    "h264_24_k5": dict(codec="h264", fps=24, keyframe_interval_s=5.0),
    "hevc_25_k1": dict(codec="hevc", fps=25, keyframe_interval_s=1.0),
    "hevc_60_k2": dict(codec="hevc", fps=60, keyframe_interval_s=2.0),
    "vp9_30": dict(codec="vp9", fps=30, keyframe_interval_s=1.0),
    "mjpeg_25": dict(codec="mjpeg", fps=25),
    "vfr": dict(codec="h264", fps=30, vfr=True),
    "rot90": dict(codec="h264", fps=30, rotation=90),
    "rot270_hevc": dict(codec="hevc", fps=30, rotation=270),
    "audio": dict(codec="h264", fps=30, audio=True),
}
SUFFIX = {"vp9": ".webm", "mjpeg": ".mkv"}


def _clip(make_clip, name: str) -> Path:
    spec = CASES[name]
    return make_clip(f"samp_{name}{SUFFIX.get(str(spec['codec']), '.mp4')}", duration_s=5.0, **spec)


def _check_stamps(frames, timestamps, tolerance: float = 0.011) -> list[float]:
    stamped = []
    for frame, t in zip(frames, timestamps):
        stamp = read_stamp(frame.numpy())
        assert stamp is not None, f"frame reported at {t}s has no readable stamp"
        assert stamp.time_s == pytest.approx(t, abs=tolerance), "reported timestamp is not the frame's own time"
        stamped.append(stamp.time_s)
    return stamped


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("mode", ["exact", "keyframe"])
def test_every_frame_is_from_its_second(make_clip, name: str, mode: str) -> None:
    clip = _clip(make_clip, name)
    info, index = probe_video(clip, with_index=True)
    plan = plan_samples(info, index, fps=1.0, mode=mode)
    frames, times, outcome = create_sampler("cpu", mode=mode, size=64).sample_video(clip)
    assert outcome.ok and outcome.mode == mode
    assert frames.shape[1:] == (3, 64, 64) and str(frames.dtype) == "torch.uint8"
    stamped = _check_stamps(frames, times)
    assert times == sorted(times) and len(set(times)) == len(times)
    assert len(times) == plan.expected_frames
    if mode == "exact":
        # one frame per second, each the frame nearest that second
        assert len(times) == 5
        for second, t in zip(range(5), stamped):
            assert abs(t - second) <= plan.max_error_s + 1e-6
    else:
        key_times = np.array(info.keyframe_times)
        assert all(np.min(np.abs(key_times - t)) < 0.006 for t in stamped), "keyframe mode returned a non-keyframe"
        for second in range(5):  # every second is covered by a frame within the bound
            assert min(abs(t - second) for t in stamped) <= plan.max_error_s + 1e-6


def test_auto_mode_picks_per_video(make_clip) -> None:
    dense = _clip(make_clip, "h264_30_k1")
    sparse = _clip(make_clip, "h264_24_k5")
    sampler = create_sampler("cpu", mode="auto", size=32)
    outcomes = {o.path: o for b in sampler.iter_batches([dense, sparse]) for o in b.completed}
    assert outcomes[dense].mode == "keyframe"
    assert outcomes[sparse].mode == "exact"


def test_keyframe_mode_reads_a_fraction_of_the_file(make_clip) -> None:
    clip = make_clip("samp_big.mp4", width=640, height=360, duration_s=10.0, keyframe_interval_s=1.0,
                     bit_rate=4_000_000)
    _, _, key = create_sampler("cpu", mode="keyframe", size=32).sample_video(clip)
    _, _, exact = create_sampler("cpu", mode="exact", size=32).sample_video(clip)
    size = clip.stat().st_size
    assert key.bytes_read < 0.35 * size
    assert exact.bytes_read < 0.35 * size  # 1 s keyframes: every wanted frame is a keyframe, a run of one


def test_exact_mode_reads_and_decodes_only_gop_prefixes(make_clip) -> None:
    """2 s keyframes: the odd seconds need their GOP up to the middle, the rest of each GOP is never read."""
    clip = make_clip("samp_gop2.mp4", width=640, height=360, duration_s=10.0, keyframe_interval_s=2.0,
                     bit_rate=4_000_000, style="highlight")
    frames, times, exact = create_sampler("cpu", mode="exact", size=64).sample_video(clip)
    assert times == pytest.approx(list(range(10)), abs=1e-6)
    _check_stamps(frames, times)
    assert 0.3 * clip.stat().st_size < exact.bytes_read < 0.75 * clip.stat().st_size


def test_exact_mode_cuts_av1_gop_prefixes_too(make_clip, caplog: pytest.LogCaptureFixture) -> None:
    """AV1's runs could not be cut (PyAV looked an encoder up by the decoder's name, libdav1d): every AV1 video
    in exact mode decoded its whole stream in order, reading several times the file (a corpus review's find)."""
    clip = make_clip("samp_av1_gop2.mp4", codec="av1", width=640, height=360, duration_s=6.0,
                     keyframe_interval_s=2.0, bit_rate=4_000_000, style="highlight")
    with caplog.at_level(logging.INFO, logger="quadvault_dali"):
        frames, times, exact = create_sampler("cpu", mode="exact", size=64).sample_video(clip)
    assert times == pytest.approx(list(range(6)), abs=1e-6)
    _check_stamps(frames, times)
    assert not [r for r in caplog.records if "did not decode on their own" in r.getMessage()], caplog.text
    assert exact.bytes_read < 0.8 * clip.stat().st_size


def test_half_frame_rate_and_two_fps(make_clip) -> None:
    clip = _clip(make_clip, "h264_30_k1")
    frames, times, _ = create_sampler("cpu", mode="exact", fps=2.0, size=32).sample_video(clip)
    assert times == pytest.approx([i / 2 for i in range(10)], abs=1e-6)
    _check_stamps(frames, times)


def test_aspect_kept_without_square(make_clip) -> None:
    rotated = _clip(make_clip, "rot90")  # displayed 320x240
    frames, times, _ = create_sampler("cpu", size=120, square=False).sample_video(rotated)
    assert frames.shape[1:] == (3, 120, 160)
    _check_stamps(frames, times)


def test_batches_mix_videos_and_report_each_once(make_clip, broken_clips) -> None:
    clips = [_clip(make_clip, n) for n in ("h264_30_k1", "hevc_25_k1", "vp9_30")]
    videos = [clips[0], broken_clips["empty"], clips[1], broken_clips["truncated"], clips[2], broken_clips["text"]]
    sampler = create_sampler("cpu", size=32, batch_size=4, streams=3)
    outcomes, per_video = [], {}
    for batch in sampler.iter_batches(videos):
        assert len(batch) <= 4
        for path, t in zip(batch.paths, batch.timestamps):
            per_video.setdefault(path, []).append(t)
        outcomes.extend(batch.completed)
    assert [o.path for o in outcomes] == [Path(v) for v in videos]  # one outcome each, in input order
    assert [o.ok for o in outcomes] == [True, False, True, False, True, False]
    assert isinstance(outcomes[1].error, VideoOpenError) and "empty" in str(outcomes[1].error)
    assert "truncated" in str(outcomes[3].error)
    for clip in clips:
        assert per_video[clip] == pytest.approx([0, 1, 2, 3, 4], abs=1e-6)


def test_sample_video_raises_the_videos_error(broken_clips) -> None:
    with pytest.raises(VideoOpenError, match="not a readable video container"):
        create_sampler("cpu").sample_video(broken_clips["no_index"])


def test_corpus_drone_clips(corpus: Path) -> None:
    """Real drone footage: one frame per second, in order, of the asked size."""
    for name, seconds in [("gopro+gpmf-parser/samples/karma.mp4", 12), ("AtomScott+SportsLabKit/drone.mp4", 21)]:
        frames, times, outcome = create_sampler("cpu", size=96).sample_video(corpus / name)
        assert frames.shape[1:] == (3, 96, 96)
        assert len(times) >= seconds - 1 and times == sorted(times)
        assert float(frames.float().std()) > 10  # real picture content, not blank frames


def test_corpus_rotated_and_damaged(corpus: Path) -> None:
    mp4 = corpus / "androidx+media/libraries/test_data/src/test/assets/media/mp4"
    frames, _, outcome = create_sampler("cpu", size=64, square=False).sample_video(mp4 / "portrait_4k60.mp4")
    assert outcome.info.rotation == 90 and frames.shape[2:] == (114, 64)  # portrait after rotation
    damaged = corpus / "dmlc+decord/tests/test_data/corrupted.mp4"
    sampler = create_sampler("cpu", size=32)
    outcome = [o for b in sampler.iter_batches([damaged]) for o in b.completed][0]
    assert outcome.ok or isinstance(outcome.error, DecodeError)


def test_samples_the_footage_stream_of_a_multi_stream_file(motion_photo: Path) -> None:
    frames, times, _ = create_sampler("cpu", size=96).sample_video(motion_photo)
    assert times == pytest.approx([0.0, 1.0, 2.0])
    stamps = [read_stamp(f.numpy()) for f in frames]
    assert [(s.source_id, s.time_s) for s in stamps] == [(7, 0.0), (7, 1.0), (7, 2.0)]  # type: ignore[union-attr]


def test_exact_mode_falls_back_to_decoding_in_order(make_clip, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose GOP runs cannot be cut after the first clip: the rest is decoded in order, no second
    lost or repeated."""
    import quadvault_dali.sampling._cpu as cpu

    real = cpu.exact_clips

    def one_then_fail(plan, container, stream, max_frames, **kw):  # type: ignore[no-untyped-def]
        clips = real(plan, container, stream, 3, **kw)
        yield next(iter(clips))
        raise DecodeError("no keyframe found for the frames at 3.00s", path=plan.info.path)

    monkeypatch.setattr(cpu, "exact_clips", one_then_fail)
    clip = make_clip("samp_gop2.mp4", width=640, height=360, duration_s=10.0, keyframe_interval_s=2.0,
                     bit_rate=4_000_000, style="highlight")
    frames, times, _ = create_sampler("cpu", mode="exact", size=64).sample_video(clip)
    assert times == pytest.approx(list(range(10)), abs=1e-6)
    _check_stamps(frames, times)


def test_exact_mode_decodes_huge_gops_in_order(make_clip, monkeypatch: pytest.MonkeyPatch) -> None:
    """GOPs too large to hold (a single-keyframe recording) are decoded in order, never cut into runs."""
    import quadvault_dali.sampling._cpu as cpu
    from quadvault_dali.sampling._remux import largest_gop_bytes

    clip = make_clip("samp_gop2.mp4", width=640, height=360, duration_s=10.0, keyframe_interval_s=2.0,
                     bit_rate=4_000_000, style="highlight")
    _, index = probe_video(clip, with_index=True)
    keys = np.flatnonzero(index.is_key)
    gops = [int(index.size[a:b].sum()) for a, b in zip(keys, list(keys[1:]) + [len(index)])]
    assert len(gops) == 5 and largest_gop_bytes(index) == max(gops)
    monkeypatch.setattr(cpu, "MAX_GOP_BYTES_IN_MEMORY", max(gops) - 1)
    monkeypatch.setattr(cpu, "exact_clips", lambda *a, **k: pytest.fail("a huge GOP must not be cut into runs"))
    frames, times, outcome = create_sampler("cpu", mode="exact", size=64).sample_video(clip)
    assert times == pytest.approx(list(range(10)), abs=1e-6)
    _check_stamps(frames, times)
    assert outcome.bytes_read > 0.85 * clip.stat().st_size  # in order: the whole stream is read


@pytest.mark.parametrize("name,spec", [
    ("samp_hevc_k07.mkv", dict(codec="hevc", width=160, height=160, fps=30, keyframe_interval_s=0.7)),
    ("samp_h264_k3.ts", dict(codec="h264", width=128, height=96, fps=30, keyframe_interval_s=3.0)),
])
@pytest.mark.parametrize("fps", [1.0, 3.0])
def test_exact_mode_in_containers_without_raw_positions(make_clip, name: str, spec: dict, fps: float) -> None:
    clip = make_clip(name, duration_s=8.0, source_id=0, **spec)
    frames, times, outcome = create_sampler("cpu", mode="exact", fps=fps, size=64).sample_video(clip)
    assert outcome.mode == "exact" and times == pytest.approx([i / fps for i in range(int(8 * fps))], abs=0.02)
    _check_stamps(frames, times)


@pytest.mark.parametrize("name,spec", [
    ("samp_h264_bf_k2.mkv", dict(codec="h264", width=160, height=96, fps=30, keyframe_interval_s=2.0)),
    ("samp_hevc_k2.ts", dict(codec="hevc", width=160, height=96, fps=25, keyframe_interval_s=2.0)),
])
def test_in_order_exact_decoding_skips_unreferenced_pictures_for_the_same_frames(
        make_clip, monkeypatch: pytest.MonkeyPatch, name: str, spec: dict) -> None:
    """MKV/TS (no raw positions) decode in order: pictures nothing references that are not the nearest to a
    grid time are not decoded (x264's B-frames here; HEVC in Annex B is not known to be one-layer, so none),
    and the frames are the same, bit for bit, as when every picture is decoded."""
    import quadvault_dali.sampling._cpu as cpu
    import quadvault_dali.sampling._remux as _remux

    clip = make_clip(name, duration_s=6.0, source_id=0, **spec)
    skipped: list[float] = []
    real_call = cpu._Skippable.__call__

    def counting(self, packet, start, tb):  # type: ignore[no-untyped-def]
        skip = real_call(self, packet, start, tb)
        if skip:
            skipped.append(round((packet.pts - start) * tb, 6))
        return skip

    monkeypatch.setattr(cpu._Skippable, "__call__", counting)
    lean, times, _ = create_sampler("cpu", mode="exact", fps=3.0, size=64).sample_video(clip)
    monkeypatch.setattr(_remux, "unreferenced", lambda *a, **k: False)
    full, full_times, _ = create_sampler("cpu", mode="exact", fps=3.0, size=64).sample_video(clip)
    assert times == full_times and np.array_equal(lean.numpy(), full.numpy())
    _check_stamps(lean, times)
    assert not set(skipped) & set(times)
    if spec["codec"] == "h264":
        assert len(skipped) > 0.2 * 6.0 * 30
    else:
        assert not skipped


def test_in_order_skipping_stays_off_where_packet_times_do_not_run_forward(make_clip, tmp_path: Path) -> None:
    """AVI stores decode-order times; two recordings joined with ``cat`` repeat and jump back: the packet
    index cannot say which frame is nearest there, so nothing is skipped (found by review: other frames)."""
    import av

    import quadvault_dali.sampling._cpu as cpu
    from quadvault_dali.probe import open_container, probe_open

    def skippable(path: Path) -> cpu._Skippable:
        with open_container(path) as container:
            info, index = probe_open(container, path)
            plan = plan_samples(info, index, fps=2.0, mode="exact")
            return cpu._Skippable(plan, container.streams[info.stream_index], container.format.name)

    spec = dict(codec="h264", width=160, height=96, fps=24, keyframe_interval_s=2.0, duration_s=4.0, source_id=0)
    ts = make_clip("skip_h264.ts", **spec)
    assert skippable(ts).checked is None, "a plain TS may skip (checked at its first packet)"
    joined = tmp_path / "joined.ts"
    joined.write_bytes(ts.read_bytes() * 2)
    assert skippable(joined).checked is False
    avi = make_clip("skip_h264.avi", **spec)
    with av.open(str(avi)) as c:
        assert c.format.name == "avi" and c.streams.video[0].codec_context.has_b_frames
    assert skippable(avi).checked is False


def test_a_recording_cut_mid_gop_expects_only_frames_it_can_decode(make_clip, tmp_path: Path) -> None:
    """An MPEG-TS copy cut inside a GOP (a loop recorder's segment, a partial copy) starts with pictures that
    refer to a lost keyframe: FFmpeg drops them, yet the plan counted the seconds they stood nearest to as
    frames to expect (8 against the 6 decoded). Times still count from the first packet, as FFmpeg's do."""
    source = make_clip("midgop_src.ts", codec="h264", width=160, height=96, fps=30, keyframe_interval_s=3.0,
                       duration_s=8.0, source_id=5)
    data = source.read_bytes()
    cut = tmp_path / "midgop.ts"
    cut.write_bytes(data[len(data) * 5 // 100 // 188 * 188:])
    info, index = probe_video(cut, with_index=True)
    first_key = float(index.pts[int(np.argmax(index.is_key))])
    assert not index.is_key[0] and first_key > 2.0
    plan = plan_samples(info, index, fps=1.0, mode="exact")
    frames, times, outcome = create_sampler("cpu", mode="exact", size=64).sample_video(cut)
    assert outcome.frames == outcome.frames_expected == plan.expected_frames == len(times) == 6
    assert times[0] == pytest.approx(first_key) and times[1:] == pytest.approx([3, 4, 5, 6, 7], abs=1e-6)
    offset = read_stamp(frames[0].numpy()).time_s - times[0]
    _check_stamps(frames, [t + offset for t in times])


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_intra_refresh_recovery_points_are_not_keyframes_to_start_at(tmp_path: Path, suffix: str) -> None:
    """Periodic intra refresh (x264 ``intra-refresh``, low-latency links): no IDR after the first picture, and
    the encoder flags its recovery-point P pictures as keyframes. Keyframe mode (what ``auto`` picked) failed
    the whole video ("decoded only 1 of 4"), and exact runs for the GPU started at pictures that decode to
    nothing. Only pictures decoding can start at are keyframes now; such a video is sampled exactly."""
    from fractions import Fraction

    import av

    from quadvault_dali.probe import open_container, probe_open
    from quadvault_dali.sampling._remux import decode_clip, exact_clips
    from quadvault_dali.synth import draw_stamp

    path = tmp_path / f"refresh{suffix}"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.options = {"bf": "0", "x264-params": "intra-refresh=1:keyint=30"}
        for i in range(120):
            image = np.full((96, 160, 3), 60, np.uint8)
            image[:, : (i * 4) % 160] = 200
            draw_stamp(image, i / 30, 6)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(path)) as c:
        assert sum(p.is_keyframe for p in c.demux(video=0) if p.size) == 4  # what the container flags
    info = probe_video(path)
    assert info.keyframe_times == (0.0,)
    frames, times, outcome = create_sampler("cpu", size=64).sample_video(path)
    assert outcome.mode == "exact" and times == pytest.approx([0, 1, 2, 3], abs=1e-6)
    _check_stamps(frames, times)
    with open_container(path) as container:  # the GPU backend's runs: every wanted picture decodes from them
        info, index = probe_open(container, path)
        plan = plan_samples(info, index, fps=3.0, mode="exact")
        clips = list(exact_clips(plan, container, container.streams[info.stream_index], 5))
    decoded = [t for clip in clips for _, t in decode_clip(clip)]
    assert decoded == pytest.approx([k / 3 for k in range(12)], abs=0.02)


@pytest.mark.parametrize(("name", "codec", "keyframes"), [
    ("dvd.mpg", "mpeg2video", [0.0, 2.04, 3.96, 5.88]),  # MPEG-PS: a seek lands past a reordered keyframe
    ("camera.wmv", "wmv2", [0.0, 2.0, 4.0]),  # ASF: a seek lands on the keyframe before
])
def test_keyframes_sought_by_time_are_the_planned_ones(make_clip, name: str, codec: str,
                                                       keyframes: list[float]) -> None:
    """Containers without raw packet positions are sought by time; the first keyframe after the seek was taken
    for the planned one: an MPEG-PS file sampled every keyframe's successor (second 0 showed 2.04 s) and an ASF
    file each keyframe's predecessor (0.0 twice, the last never). Exact mode keeps every second, the last one
    too (MPEG-PS's duration was FFmpeg's estimate, ending at the last picture's start)."""
    path = make_clip(f"sought_{name}", codec=codec, width=160, height=96, fps=25, keyframe_interval_s=2.0,
                     duration_s=6.0, source_id=4)
    info, index = probe_video(path, with_index=True)
    assert not index.raw_positions and info.duration_s == pytest.approx(6.0)
    plan = plan_samples(info, index, fps=1.0, mode="keyframe")
    assert np.round(index.pts[plan.key_packets], 3).tolist() == keyframes
    frames, times, _ = create_sampler("cpu", mode="keyframe", size=64).sample_video(path)
    assert times == pytest.approx(keyframes, abs=1e-6)
    _check_stamps(frames, times)
    frames, times, _ = create_sampler("cpu", mode="exact", size=64).sample_video(path)
    assert times == pytest.approx([0, 1, 2, 3, 4, 5], abs=1e-6)
    _check_stamps(frames, times)


def test_h264_in_mpeg_ps_reaches_its_first_keyframe(make_clip) -> None:
    """An MPEG-PS stream's top is found by a byte seek to 0: even a seek by time to a tick before its start
    landed past an H.264 keyframe whose decode time precedes its time, so keyframe mode failed the video on
    both backends ("seeking cannot reach the keyframe at 0.00s") and exact runs for the GPU could not be cut."""
    path = make_clip("camcorder.mpg", codec="h264", width=320, height=240, fps=25, keyframe_interval_s=1.0,
                     duration_s=5.0, bit_rate=6_000_000, source_id=4)
    for mode in ("keyframe", "exact"):
        frames, times, _ = create_sampler("cpu", mode=mode, size=64).sample_video(path)
        assert times == pytest.approx([0, 1, 2, 3, 4], abs=1e-6), mode
        _check_stamps(frames, times)


@pytest.mark.parametrize("fps", [24, 30])
def test_an_avi_with_b_frames_samples_the_frame_nearest_each_second(make_clip, fps: int) -> None:
    """AVI numbers its chunks in decode order: with B-frames the decoder's frames carried shuffled times, so
    exact mode took frames 1-3 off the second (stamps 0.96, 1.96, 2.96, 3.92, 4.88, 5.92 at 24 fps). FFmpeg's
    times run one frame late here (x264's first decode time is a frame before its first picture); every frame
    must be that one frame behind its time, keyframes and exact frames alike."""
    spec = dict(codec="h264", width=160, height=96, fps=fps, keyframe_interval_s=2.0, duration_s=6.0, source_id=3)
    avi = make_clip(f"bframes_{fps}.avi", **spec)
    info, index = probe_video(avi, with_index=True)
    assert info.container == "avi" and index.decode_order_times and info.frame_count == 6 * fps
    assert not probe_video(make_clip(f"bframes_{fps}.mp4", **spec), with_index=True)[1].decode_order_times
    frame = 1.0 / fps
    exact, times, outcome = create_sampler("cpu", mode="exact", size=64).sample_video(avi)
    assert outcome.ok and outcome.mode == "exact"
    assert times == pytest.approx([frame, 1, 2, 3, 4, 5, 6], abs=1e-6)
    assert _check_stamps(exact, [t - frame for t in times]) == pytest.approx([t - frame for t in times], abs=0.011)
    keys, key_times, _ = create_sampler("cpu", mode="keyframe", size=64).sample_video(avi)
    assert key_times == pytest.approx([frame, 2 + frame, 4 + frame], abs=1e-6)
    _check_stamps(keys, [t - frame for t in key_times])


@pytest.mark.parametrize(("matrix", "size"), [(None, 64), ("bt709", 64), ("bt709", 360)])
def test_frames_have_the_colours_of_an_exact_conversion(make_clip, matrix: str | None, size: int) -> None:
    """Per channel, the sampled frames average what an exact (float) YCbCr->RGB conversion of the decoded
    pictures averages. swscale's fast path truncates: it made frames 1-2 levels darker, which the GPU
    backend (exact) then showed as a difference between the two."""
    import av

    from quadvault_dali.sampling._colour import MATRIX_WEIGHTS, ycbcr_to_rgb

    kw = {"color_matrix": matrix} if matrix else {}
    path = make_clip(f"exact_colours_{matrix}.webm", codec="vp9", width=640, height=360, fps=30, duration_s=2.0,
                     style="highlight", source_id=5, **kw)
    frames, times, _ = create_sampler("cpu", mode="keyframe", size=size, square=False).sample_video(path)
    exact = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if not any(abs(frame.time - t) < 1e-3 for t in times):
                continue
            yuv = frame.to_ndarray(format="yuv420p").astype(np.float64)
            h = frame.height
            y, u, v = yuv[:h], yuv[h:h + h // 4].reshape(h // 2, -1), yuv[h + h // 4:].reshape(h // 2, -1)
            u, v = (c.repeat(2, 0).repeat(2, 1) for c in (u, v))
            ycc = np.stack([(y - 16) * 255 / 219, (u - 128) * 255 / 224, (v - 128) * 255 / 224], -1)
            rgb = np.clip(ycc @ ycbcr_to_rgb(*MATRIX_WEIGHTS[matrix or "bt470bg"]).T, 0, 255)
            exact.append(rgb.mean(axis=(0, 1)))
    assert len(exact) == len(times) == 2
    bias = frames.float().mean(dim=(0, 2, 3)).numpy() - np.mean(exact, axis=0)
    assert np.abs(bias).max() < 0.3, f"per-channel bias {bias.round(2).tolist()}"


def test_a_variable_rate_matroska_file_keeps_its_last_second(make_clip) -> None:
    """Matroska gives a variable-rate stream its nominal rate (30): the grid ended half a nominal frame after
    the last picture (5.983 s + 0.0167), dropping t=6.0 although that picture is on screen until 6.016 s."""
    path = make_clip("samp_vfr6.mkv", codec="h264", fps=30, vfr=True, duration_s=6.0, width=128, height=96)
    info, index = probe_video(path, with_index=True)
    last = float(index.pts.max())
    assert info.duration_s > 6.0 + 1e-3 and last < 6.0 - 0.5 / info.avg_fps
    frames, times, _ = create_sampler("cpu", mode="exact", size=64).sample_video(path)
    assert times[-1] == pytest.approx(last) and len(times) == 7
    _check_stamps(frames, times)


def test_a_video_whose_keyframes_never_decode_is_given_up_in_one_warning_block(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An index claiming 2,000,000 keyframes over 16 bytes was tried keyframe by keyframe (133,334 of them, for a
    minute, 24 MB of warnings) while the videos behind it waited. Three failures are named, and a video none of
    whose first 50 keyframes decode is given up."""
    import logging

    from quadvault_dali.synth import SynthSpec, make_video

    src = make_video(tmp_path / "allkey.mp4", SynthSpec(width=64, height=48, fps=10, duration_s=8,
                                                        keyframe_interval_s=0.1))
    _, index = probe_video(src, with_index=True)
    data = bytearray(src.read_bytes())
    for pos, size in zip(index.pos[index.is_key], index.size[index.is_key]):
        data[pos:pos + size] = b"\xab" * size  # every keyframe's bytes destroyed, the index intact
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING), pytest.raises(DecodeError, match="none of its first 50 keyframes decode "
                                                                            r"\(h264\); given up on its 80"):
        create_sampler("cpu", fps=10.0, mode="keyframe", size=32).sample_video(broken)
    assert caplog.text.count("cannot decode the keyframe") == 3


def test_a_videos_kept_error_holds_no_decoder_state(broken_clips) -> None:
    """A failed video's error kept its traceback's frames alive: the last decoded picture (12 MB at 4K), the
    container, and the catching frame whose outcome held the error, a cycle only the cycle collector freed (a
    memory audit: 0.9 -> 2.2 GB over 100 damaged 4K videos in a scan). The traceback goes; where it was raised
    is kept as text."""
    sampler = create_sampler("cpu", size=32)
    outcome = next(o for b in sampler.iter_batches([broken_clips["truncated"]]) for o in b.completed)
    assert outcome.error is not None and outcome.error.__traceback__ is None
    assert "in decode_video" in outcome.error.__notes__[0]  # where it was raised, as text
    assert "truncated" in str(outcome.error)  # the message itself is unchanged


def test_detached_frees_what_the_raising_frames_held_without_the_cycle_collector() -> None:
    import gc
    import weakref

    from quadvault_dali.errors import DecodeError, detached

    class Picture:
        pass

    class Outcome:
        error: Exception | None = None

    held: list[weakref.ref] = []

    def decode() -> None:
        picture = Picture()
        held.append(weakref.ref(picture))
        raise DecodeError("decoding failed", path="clip.mp4")

    def run() -> Outcome:
        outcome = Outcome()
        try:
            decode()
        except DecodeError as exc:
            outcome.error = detached(exc)
        return outcome

    gc.disable()
    try:
        outcome = run()
        assert held[0]() is None  # the raising frame let go of its picture
        assert "in decode" in outcome.error.__notes__[0] and 'raise DecodeError("decoding failed"' in \
            outcome.error.__notes__[0]
        kept = weakref.ref(outcome)
        del outcome
        assert kept() is None  # no cycle through the catching frame
    finally:
        gc.enable()
