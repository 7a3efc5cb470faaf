"""The in-memory clips the gpu backend decodes: decoded with PyAV, every wanted frame must be the planned one.

No GPU needed: FFmpeg decodes the clips here exactly as DALI's demuxer/decoder would receive them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import av
import numpy as np
import pytest

from quadvault_dali.probe import open_container, probe_open, rewound
from quadvault_dali.sampling import create_sampler
from quadvault_dali.sampling._plan import plan_samples
from quadvault_dali.sampling._reader import CountingFile
from quadvault_dali.sampling._remux import Clip, frame_budget, plan_clips
from quadvault_dali.synth import read_stamp

STAMP_TOL = 0.006  # stamps are centiseconds; timestamps are exact presentation times

CLIPS = {
    "h264_bframes": dict(codec="h264", fps=30, keyframe_interval_s=1.0),
    "hevc_gop2": dict(codec="hevc", fps=25, keyframe_interval_s=2.0),
    "hevc_gop5": dict(codec="hevc", fps=24, keyframe_interval_s=5.0, duration_s=11.0),
    "vp9": dict(codec="vp9", fps=30, keyframe_interval_s=1.0),
    "vfr": dict(codec="h264", fps=30, vfr=True),
    "rotated": dict(codec="h264", fps=30, rotation=90),
    "vp9_webm": dict(codec="vp9", fps=25, keyframe_interval_s=1.0),
}


def _clip_path(make_clip: Callable[..., Path], name: str) -> Path:
    spec = {"width": 128, "height": 96, "duration_s": 6.0, "source_id": 7, **CLIPS[name]}
    suffix = ".webm" if name.endswith("webm") else ".mp4"
    return make_clip(f"remux_{name}{suffix}", **spec)


def _build(path: Path, mode: str, max_frames: int | None = None,
           fps: float = 1.0) -> tuple[list[Clip], object, CountingFile, int]:
    fh = CountingFile(path)
    container = open_container(path, fh)
    try:
        info, index = probe_open(container, path)
        plan = plan_samples(info, index, fps=fps, mode=mode)  # type: ignore[arg-type]
        container = rewound(container, path, fh, index)
        before = fh.bytes_read
        clips = list(plan_clips(plan, container, fh, max_frames))
        return clips, plan, fh, fh.bytes_read - before
    finally:
        container.close()
        fh.close()


def _decoded_stamps(clip: Clip, rotation: int) -> list[float | None]:
    """Decodes the whole clip with PyAV; returns the stamp of each wanted frame (by clip frame index)."""
    with av.open(io.BytesIO(clip.data)) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    assert len(frames) == clip.packets, "every packet of a clip must decode to exactly one frame"
    out = []
    for i in clip.frames:
        image = np.rot90(frames[i], k=-rotation // 90) if rotation else frames[i]
        stamp = read_stamp(image)
        out.append(stamp.time_s if stamp else None)
    return out


@pytest.mark.parametrize("name", sorted(CLIPS))
@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_clip_frames_are_the_planned_frames(make_clip: Callable[..., Path], name: str, mode: str) -> None:
    path = _clip_path(make_clip, name)
    clips, plan, _, _ = _build(path, mode)
    times = [t for c in clips for t in c.times]
    stamps = [s for c in clips for s in _decoded_stamps(c, plan.info.rotation)]  # type: ignore[attr-defined]
    assert len(times) == plan.expected_frames  # type: ignore[attr-defined]
    for t, s in zip(times, stamps):
        assert s is not None and abs(s - t) <= STAMP_TOL, f"{name} {mode}: frame for {t}s shows {s}"
    if mode == "keyframe":
        index = plan.index  # type: ignore[attr-defined]
        assert times == [round(float(index.pts[r]), 6) for r in plan.key_packets]  # type: ignore[attr-defined]
    # Whatever the clip layout, the times are those the cpu backend reports for the same video.
    _, cpu_times, _ = create_sampler("cpu", fps=1.0, mode=mode, size=32).sample_video(path)
    assert times == pytest.approx(cpu_times, abs=1e-6)
    grid = plan.grid  # type: ignore[attr-defined]
    worst = max(min(abs(t - g) for t in times) for g in grid)  # each grid time is served within the bound
    assert worst <= plan.max_error_s + 1e-6  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_small_frame_budget_splits_clips_without_changing_frames(make_clip: Callable[..., Path], mode: str) -> None:
    # keyframe mode: IDR keyframes share clips; exact mode: a 5 s GOP's run is cut by the budget
    path = _clip_path(make_clip, "h264_bframes" if mode == "keyframe" else "hevc_gop5")
    whole, _, _, _ = _build(path, mode)
    split, plan, _, _ = _build(path, mode, max_frames=2)
    assert len(split) > len(whole)
    assert all(len(c) <= 2 for c in split)
    assert [t for c in split for t in c.times] == [t for c in whole for t in c.times]
    for clip in split:
        for t, s in zip(clip.times, _decoded_stamps(clip, 0)):
            assert s is not None and abs(s - t) <= STAMP_TOL


def test_keyframe_mode_reads_only_the_chosen_keyframes(make_clip: Callable[..., Path]) -> None:
    path = make_clip("remux_bytes.mp4", codec="h264", width=320, height=240, fps=30, duration_s=8.0,
                     keyframe_interval_s=1.0, style="highlight", bit_rate=3_000_000)
    clips, plan, fh, clip_bytes = _build(path, "keyframe")
    index = plan.index  # type: ignore[attr-defined]
    chosen = int(index.size[plan.key_packets].sum())  # type: ignore[attr-defined]
    assert clip_bytes == chosen  # exactly the keyframes' bytes, nothing in between
    size = path.stat().st_size
    assert fh.bytes_read < 0.5 * size, f"read {fh.bytes_read} of {size} bytes"
    assert sum(c.packets for c in clips) == len(plan.key_packets)  # type: ignore[attr-defined]


def test_exact_runs_stop_at_the_last_needed_packet(make_clip: Callable[..., Path]) -> None:
    """With 1 s GOPs and 1 fps the wanted frames are the keyframes: each run is a handful of packets."""
    path = _clip_path(make_clip, "h264_bframes")
    clips, plan, _, _ = _build(path, "exact")
    packets = sum(c.packets for c in clips)
    assert packets <= 4 * len(plan.grid)  # type: ignore[attr-defined]
    assert packets < len(plan.index) / 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["h264_bframes", "hevc_gop2", "hevc_gop5", "vfr", "rotated", "scene_cuts"])
@pytest.mark.parametrize("fps", [1.0, 3.0])
def test_exact_runs_read_at_index_positions_are_the_demuxed_runs(make_clip: Callable[..., Path], media_dir: Path,
                                                                 name: str, fps: float) -> None:
    """MP4 runs are read straight from the index positions (``_run_rows``/``read_rows``) by the same rule the
    demux after a seek follows (``_RunBuilder``): the same packets, bytes and wanted frames."""
    from quadvault_dali.sampling._remux import exact_clips

    path = (_scene_cut_hevc(media_dir / "remux_hevc_scene_cuts.mp4") if name == "scene_cuts"
            else _clip_path(make_clip, name))
    cut = {}
    for direct in (False, True):
        fh = CountingFile(path)
        container = open_container(path, fh)
        try:
            info, index = probe_open(container, path)
            plan = plan_samples(info, index, fps=fps, mode="exact")
            stream = container.streams[info.stream_index]
            clips = list(exact_clips(plan, container, stream, 12, fh=fh if direct else None))
            cut[direct] = ([[(p.pts_s, p.data) for p in run.packets] for c in clips for run in c.runs],
                           [run.wanted for c in clips for run in c.runs])
        finally:
            container.close()
            fh.close()
    assert cut[True] == cut[False] and cut[True][1]


def test_runs_sought_by_time_in_mpeg_ps_start_at_their_keyframes(make_clip: Callable[..., Path]) -> None:
    """MPEG-PS seeks by decode time and lands past a reordered keyframe, even seeking to the stream's start:
    keyframe clips took each keyframe's successor, and exact runs from the first keyframe could not be cut."""
    from quadvault_dali.sampling._remux import demuxed_keyframe_clips, exact_clips

    path = make_clip("remux_dvd.mpg", codec="mpeg2video", width=128, height=96, fps=25, duration_s=6.0,
                     keyframe_interval_s=2.0, source_id=2)
    with open_container(path) as container:
        info, index = probe_open(container, path)
        stream = container.streams[info.stream_index]
        keys = list(demuxed_keyframe_clips(plan_samples(info, index, mode="keyframe"), container, stream, 12))
        assert [t for c in keys for t in c.times] == pytest.approx([0.0, 2.04, 3.96, 5.88], abs=1e-6)
        assert [run.packets[0].is_key for c in keys for run in c.runs] == [True] * 4
        runs = list(exact_clips(plan_samples(info, index, mode="exact"), container, stream, 12))
        assert [t for c in runs for t in c.times] == pytest.approx([0, 1, 2, 3, 4, 5], abs=1e-6)
    h264 = make_clip("remux_camcorder.mpg", codec="h264", width=320, height=240, fps=25, duration_s=4.0,
                     keyframe_interval_s=1.0, bit_rate=6_000_000, source_id=2)
    for mode in ("keyframe", "exact"):  # an H.264 keyframe at the top is reached by a byte seek to 0 only
        clips, _, _, _ = _build(h264, mode)
        assert [t for c in clips for t in c.times] == pytest.approx([0, 1, 2, 3], abs=1e-6), mode


def test_keyframes_of_two_joined_recordings_at_equal_times_go_in_separate_clips(make_clip: Callable[..., Path],
                                                                                 tmp_path: Path) -> None:
    """Two TS recordings joined with ``cat`` repeat their times; at 3 fps keyframe mode samples both recordings'
    keyframes at 0.0 and 1.0. In one clip a frame is found by its time, so the second recording's frames were
    the first's pictures (frames [0, 0, 2, 2, ...]): a clip now ends before a packet time it already holds."""
    spec = dict(codec="h264", width=128, height=96, fps=30, keyframe_interval_s=1.0)
    first = make_clip("join_a.ts", duration_s=3.0, source_id=1, **spec)
    second = make_clip("join_b.ts", duration_s=4.0, source_id=2, **spec)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    clips, _, _, _ = _build(joined, "keyframe", fps=3.0)
    frames, times, _ = create_sampler("cpu", mode="keyframe", fps=3.0, size=32, square=False).sample_video(joined)
    assert [t for c in clips for t in c.times] == pytest.approx(times, abs=1e-6) and times.count(0.0) == 2
    assert all(len(set(c.frames.tolist())) == len(c.frames) for c in clips)
    ids = []
    for clip in clips:
        with av.open(io.BytesIO(clip.data)) as src:
            pictures = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
        ids += [read_stamp(pictures[i]).source_id for i in clip.frames]
    assert ids == [read_stamp(f.permute(1, 2, 0).numpy()).source_id for f in frames]


def test_exact_runs_are_not_cut_from_an_avi_with_b_frames(make_clip: Callable[..., Path]) -> None:
    """AVI's packet times are in decode order: which packet is the frame nearest a second is not known from
    them, so the hardware decoders' cutter refuses (the GPU backend then samples the video on the CPU, which
    gives frames their presentation times, ``_frame_times``). Keyframe runs, one packet each, are still cut."""
    from quadvault_dali.errors import DecodeError
    from quadvault_dali.sampling._remux import exact_clips

    path = make_clip("remux_bframes.avi", codec="h264", width=128, height=96, fps=24, duration_s=4.0,
                     keyframe_interval_s=1.0, source_id=2)
    with open_container(path) as container:
        info, index = probe_open(container, path)
        stream = container.streams[info.stream_index]
        with pytest.raises(DecodeError, match="stores decode times .* exact runs cannot be cut"):
            next(exact_clips(plan_samples(info, index, mode="exact"), container, stream, 12))
    clips, _, _, _ = _build(path, "keyframe")
    assert [t for c in clips for t in c.times] == pytest.approx([1 / 24, 1 + 1 / 24, 2 + 1 / 24, 3 + 1 / 24], abs=1e-6)


def test_matroska_keyframes_at_millisecond_times_are_sought_exactly(make_clip: Callable[..., Path]) -> None:
    """Matroska times are milliseconds: 2.667 s is 2666.9999 ticks, and seeking to its floor landed on the
    keyframe before, which came twice (the open-GOP copy then dropped by the decoder) and 2.667 s never."""
    path = make_clip("remux_hevc_k1.333.mkv", codec="hevc", width=128, height=96, fps=30, duration_s=6.0,
                     keyframe_interval_s=4 / 3, source_id=8)
    clips, plan, _, _ = _build(path, "keyframe")
    times = [t for c in clips for t in c.times]
    assert times == [round(float(plan.index.pts[r]), 6) for r in plan.key_packets]  # type: ignore[attr-defined]
    assert times == pytest.approx([0.0, 1.333, 2.667, 4.0, 5.333], abs=1e-6)
    for t, s in zip(times, [s for c in clips for s in _decoded_stamps(c, 0)]):
        assert s is not None and abs(s - t) <= STAMP_TOL, (t, s)
    _, cpu_times, _ = create_sampler("cpu", mode="keyframe", size=32).sample_video(path)
    assert cpu_times == times


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_runs_from_one_keyframe_never_share_a_stream(make_clip: Callable[..., Path], container: str) -> None:
    """23.976 fps sampled at 30 fps with a 26-frame budget: a GOP's times are cut into chunks whose runs start
    at the same keyframe; in one clip its second copy was dropped as a duplicate and the frames shifted."""
    path = make_clip(f"remux_hevc_23976.{container}", codec="hevc", width=128, height=96, fps=24000 / 1001,
                     duration_s=4.0, keyframe_interval_s=2.0, source_id=9)
    clips, plan, _, _ = _build(path, "exact", max_frames=26, fps=30.0)
    times = [t for c in clips for t in c.times]
    assert len(times) == plan.expected_frames  # type: ignore[attr-defined]
    for t, s in zip(times, [s for c in clips for s in _decoded_stamps(c, 0)]):
        assert s is not None and abs(s - t) <= STAMP_TOL, (t, s)


def test_runs_read_from_the_index_leave_out_empty_samples_and_keep_the_size_limit(
        make_clip: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """As the demuxer does: an empty sample is no picture (taken as a wanted frame, it shifted the frames after
    it), and a keyframe gap past ``MAX_RUN_BYTES`` is refused, not read whole into memory."""
    from quadvault_dali.errors import DecodeError
    from quadvault_dali.probe import PacketIndex
    from quadvault_dali.sampling import _remux

    pts = np.array([0.0, 0.1, 0.033333, 0.066667, 0.2, 0.133333])
    index = PacketIndex(pts, np.arange(6) * 10, np.array([10, 10, 0, 10, 10, 10]), np.array([1, 0, 0, 0, 0, 0], bool),
                        True)
    later_min = np.minimum.accumulate(pts[::-1])[::-1]
    assert _remux._run_rows(index, later_min, np.array([0]), 0, 0.2).tolist() == [0, 1, 3, 4, 5]
    monkeypatch.setattr(_remux, "MAX_RUN_BYTES", 1000)
    with pytest.raises(DecodeError, match="keyframe gap at 0.0s holds more than"):
        _build(_clip_path(make_clip, "hevc_gop5"), "exact")


def _lean_and_full(path: Path, monkeypatch: pytest.MonkeyPatch, **build: object) -> tuple[list[Clip], list[Clip]]:
    """``path``'s exact clips as cut, and as cut with every picture kept; both for the same times."""
    import quadvault_dali.sampling._remux as remux

    lean = _build(path, "exact", **build)[0]  # type: ignore[arg-type]
    with monkeypatch.context() as m:
        m.setattr(remux, "SKIP_UNREFERENCED", False)
        full = _build(path, "exact", **build)[0]  # type: ignore[arg-type]
    assert [c.times for c in lean] == [c.times for c in full]
    return lean, full


def _wanted_pictures(clips: list[Clip]) -> list[np.ndarray]:
    """The wanted frames of ``clips`` as FFmpeg decodes them (one frame for every packet of a clip)."""
    out = []
    for clip in clips:
        with av.open(io.BytesIO(clip.data)) as src:
            frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
        assert len(frames) == clip.packets
        out += [frames[i] for i in clip.frames]
    return out


@pytest.mark.parametrize("name", ["h264_bframes", "hevc_gop2", "hevc_gop5"])
def test_exact_runs_leave_out_unreferenced_pictures_and_decode_the_same_frames(
        make_clip: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """B-frames (x264) and TRAIL_N pictures (x265) between a keyframe and a wanted frame are never decoded:
    the clips hold fewer packets and decode to the same pixels, bit for bit."""
    lean, full = _lean_and_full(_clip_path(make_clip, name), monkeypatch, fps=2.0)
    assert sum(c.packets for c in lean) < 0.8 * sum(c.packets for c in full)
    for a, b in zip(_wanted_pictures(lean), _wanted_pictures(full), strict=True):
        np.testing.assert_array_equal(a, b)
    stamps = [s for c in lean for s in _decoded_stamps(c, 0)]
    assert all(s is not None and abs(s - t) <= STAMP_TOL for s, t in zip(stamps, [t for c in lean for t in c.times]))


def test_real_drone_footage_decodes_half_the_pictures_for_the_same_exact_frames(
        corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real drone clip (1260x708 H.264 High, 60 fps, 4-s GOPs with B-frames) in exact mode."""
    lean, full = _lean_and_full(next(corpus.rglob("drone.mp4")), monkeypatch, max_frames=64)
    assert sum(c.packets for c in lean) < 0.6 * sum(c.packets for c in full)
    for a, b in zip(_wanted_pictures(lean), _wanted_pictures(full), strict=True):
        np.testing.assert_array_equal(a, b)


def test_only_pictures_nothing_references_count_as_unreferenced() -> None:
    import quadvault_dali.sampling._pictures as remux

    def units(*payloads: bytes, size: int = 4) -> bytes:
        return b"".join(len(p).to_bytes(size, "big") + p for p in payloads)

    slice_n, slice_r = b"\x01\x88\x84", b"\x21\x88\x84"  # nal_ref_idc 0, nal_ref_idc 1
    sei_timing = b"\x06\x01\x01\x00\x80"  # SEI: one pic_timing message, then the trailing bits
    sei_grain = b"\x06\x13\x01\x00\x80"  # SEI: film grain characteristics (type 19)
    assert remux.unreferenced(units(sei_timing, slice_n), "h264", 4)
    assert remux.unreferenced(units(b"\x09\x10", slice_n, size=2), "h264", 2)  # AUD; 2-byte lengths
    assert not remux.unreferenced(units(slice_r), "h264", 4)
    assert not remux.unreferenced(units(b"\x65\x88\x84"), "h264", 4)  # an IDR slice
    assert not remux.unreferenced(units(sei_timing), "h264", 4)  # no slice at all
    assert not remux.unreferenced(units(slice_n, b"\x41\x88"), "h264", 4)  # its second slice is referenced
    assert not remux.unreferenced(units(b"\x68\xce\x38\x80", slice_n), "h264", 4), \
        "a PPS may be re-sent with new content mid-GOP: later pictures read it"
    assert not remux.unreferenced(units(sei_grain, slice_n), "h264", 4), "film grain persists"
    assert not remux.unreferenced(units(slice_n, b"\x0a"), "h264", 4)  # end of sequence
    # A NAL unit of 256-511 bytes has the length 00 00 01 xx: read as framed, never as a start code.
    padded = units(b"\x21" + bytes(300)) + b"\0\0"  # a referenced slice, zero bytes after it
    assert remux._nal_units(padded, 4) == [(4, 305)]  # (the _nal framing _pictures reads with)
    assert not remux.unreferenced(padded, "h264", 4)
    assert not remux.unreferenced(units(slice_n) + b"\x07", "h264", 4), "a tail that is not padding: unsure"
    annex_b = b"\0\0\0\1" + sei_timing + b"\0\0\1" + slice_n
    assert remux.unreferenced(annex_b, "h264", None) and not remux.unreferenced(annex_b, "h264", 4)

    def hevc(kind: int, body: bytes = b"\xaf") -> bytes:
        return bytes([kind << 1, 0x01]) + body

    assert remux.unreferenced(units(hevc(35, b"\x50"), hevc(0)), "hevc", 4, single_layer=True)  # AUD, TRAIL_N
    assert not remux.unreferenced(units(hevc(0)), "hevc", 4, single_layer=False)  # a higher layer may read it
    assert not remux.unreferenced(units(hevc(1)), "hevc", 4, single_layer=True)  # TRAIL_R
    assert not remux.unreferenced(units(hevc(19)), "hevc", 4, single_layer=True)  # IDR
    assert not remux.unreferenced(units(hevc(34), hevc(0)), "hevc", 4, single_layer=True)  # a PPS
    assert not remux.unreferenced(units(hevc(39, b"\x13\x01\x00\x80"), hevc(0)), "hevc", 4, single_layer=True)
    assert remux.unreferenced(units(hevc(0), hevc(40, b"\x84\x01\x00\x80")), "hevc", 4, single_layer=True)
    assert not remux.unreferenced(b"\x00" * 8, "vp9", None)


def test_packets_are_read_as_their_stream_frames_them() -> None:
    """MP4 samples may end in zero bytes, or be cut short in a truncated file; MPEG-TS packets are Annex B. A
    unit of 298 bytes has the length 00 00 01 2a, a start code followed by a CRA header to a search: relabelling
    that byte broke the packet. Each packet is read with its stream's framing; one that does not parse is left
    as it is (and starts a clip of its own)."""
    import quadvault_dali.sampling._pictures as remux

    cra = bytes([21 << 1, 1]) + bytes(296)
    packet = len(cra).to_bytes(4, "big") + cra + b"\0\0"
    assert packet[:4] == b"\0\0\x01\x2a"
    out = remux.clean_start(packet, "hevc", 4)
    assert out[:4] == packet[:4] and (out[4] >> 1) & 0x3F == 18 and out[5:] == packet[5:]  # BLA_N_LP
    cut = packet[:200]  # a truncated file's last keyframe
    assert remux.clean_start(cut, "hevc", 4) == cut and not remux.opens_cleanly(cut, "hevc", 4)
    # Annex B with a 3-byte start code and zero padding: 00 00 01 06 would tile as a 4-byte length
    annex_b = b"\0\0\x01\x06\x05\x10" + bytes(10) + b"\0\0\x01\x21\x88" + bytes(300)
    assert remux._nal_headers(annex_b, None) == [3, 19]
    assert not remux.opens_cleanly(annex_b, "h264", None)  # a non-IDR slice, not the SEI's 05 byte
    assert remux.length_size_of("h264", b"\x01\x64\x00\x1f\xfd") is None  # too short for avcC
    assert remux.length_size_of("h264", b"\x01\x64\x00\x1f\xfd\xe1\x00") == 2
    assert remux.length_size_of("hevc", b"\0\0\0\1" + bytes(30)) is None  # Annex B parameter sets
    assert remux.length_size_of("hevc", bytes(21) + b"\x0f" + bytes(9)) is None  # 00 00 00: a start code
    assert remux.length_size_of("hevc", b"\0\x01" + bytes(19) + b"\x0f" + bytes(9)) == 4  # hvcC, version 0


def test_frame_budget_bounds_4k_clips() -> None:
    assert frame_budget(3840, 2160) == 12
    assert frame_budget(1920, 1080) == 48
    assert frame_budget(100_000, 100_000) == 1


@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_clips_come_from_the_footage_stream(motion_photo: Path, mode: str) -> None:
    """The clip holds the probed stream (file index 2, video ordinal 1), not another stream of the file."""
    clips, plan, _, _ = _build(motion_photo, mode)
    assert plan.info.stream_index == 2  # type: ignore[attr-defined]
    with av.open(io.BytesIO(clips[0].data)) as src:
        assert (src.streams.video[0].width, src.streams.video[0].height) == (256, 160)
    stamps = [s for c in clips for s in _decoded_stamps(c, 0)]
    assert stamps == pytest.approx([0.0, 1.0, 2.0], abs=STAMP_TOL)


@pytest.mark.parametrize("fps", [1.0, 3.0])
def test_mkv_runs_hold_the_nearest_frame(make_clip: Callable[..., Path], fps: float) -> None:
    """Matroska gives no dts right after a seek: a run must not end before the B-frame it needs."""
    path = make_clip("remux_hevc_k07.mkv", codec="hevc", width=160, height=160, fps=30, duration_s=8.0,
                     keyframe_interval_s=0.7, source_id=6)
    clips, plan, _, _ = _build(path, "exact", fps=fps)
    times = [t for c in clips for t in c.times]
    stamps = [s for c in clips for s in _decoded_stamps(c, 0)]
    for t, s in zip(times, stamps):
        assert s is not None and abs(s - t) <= STAMP_TOL, f"frame for {t}s shows {s}"
    _, cpu_times, _ = create_sampler("cpu", fps=fps, mode="exact", size=32).sample_video(path)
    assert times == pytest.approx(cpu_times, abs=1e-6)


@pytest.mark.parametrize(("gop_s", "fps"), [(3.0, 1.0), (1.0, 1.0), (0.5, 3.0)])
@pytest.mark.parametrize("mode", ["exact", "keyframe"])
def test_ts_packets_are_found_by_their_byte_position(make_clip: Callable[..., Path], gop_s: float, fps: float,
                                                    mode: str) -> None:
    """MPEG-TS seeks by time land by byte estimates and overshoot, even from 0: every exact run of a file
    with B-frames failed (the gpu backend then decoded it on the CPU) and keyframe mode took the next
    keyframe, losing the first second in both backends. Seeks now go to the byte position the prober saw."""
    path = make_clip(f"remux_h264_k{gop_s:g}.ts", codec="h264", width=128, height=96, fps=30, duration_s=8.0,
                     keyframe_interval_s=gop_s, source_id=5)
    clips, plan, _, _ = _build(path, mode, fps=fps)
    times = [t for c in clips for t in c.times]
    stamps = [s for c in clips for s in _decoded_stamps(c, 0)]
    for t, s in zip(times, stamps):
        assert s is not None and abs(s - t) <= STAMP_TOL, f"frame for {t}s shows {s}"
    assert len(times) == plan.expected_frames and times[0] == 0.0  # type: ignore[attr-defined]
    if mode == "keyframe":
        index = plan.index  # type: ignore[attr-defined]
        assert times == [round(float(index.pts[r]), 6) for r in plan.key_packets]  # type: ignore[attr-defined]
    _, cpu_times, _ = create_sampler("cpu", fps=fps, mode=mode, size=32).sample_video(path)
    assert times == pytest.approx(cpu_times, abs=1e-6)


def test_ts_keyframe_mode_reads_a_fraction_of_the_file(make_clip: Callable[..., Path]) -> None:
    path = make_clip("remux_h264_360p.ts", codec="h264", width=640, height=360, fps=30, duration_s=8.0,
                     keyframe_interval_s=1.0, bit_rate=4_000_000, source_id=5)
    clips, _, _, read = _build(path, "keyframe")
    assert [t for c in clips for t in c.times] == [float(i) for i in range(8)]
    assert read < 0.4 * path.stat().st_size


@pytest.mark.parametrize("mode", ["exact", "keyframe"])
def test_a_ts_starting_with_its_keyframe_at_byte_0_is_sought_by_byte(make_clip: Callable[..., Path],
                                                                     tmp_path: Path, mode: str) -> None:
    """A recording cut at a keyframe: its first packet sits at byte 0, which the prober stored as "no position"
    (``pos or -1``), so the whole file went back to time seeks (t=0 lost, exact runs refused)."""
    from quadvault_dali.probe import probe_video

    source = make_clip("remux_h264_k1.ts", codec="h264", width=128, height=96, fps=30, duration_s=8.0,
                       keyframe_interval_s=1.0, source_id=5)
    _, index = probe_video(source, with_index=True)
    at = int(index.pos[np.flatnonzero(index.is_key)[2]])
    path = tmp_path / "cut_at_key.ts"
    path.write_bytes(source.read_bytes()[at:])
    assert probe_video(path, with_index=True)[1].pos[0] == 0
    clips, plan, _, _ = _build(path, mode)
    times = [t for c in clips for t in c.times]
    assert times == [float(i) for i in range(6)]
    for t, s in zip(times, [s for c in clips for s in _decoded_stamps(c, 0)]):
        assert s is not None and abs(s - (t + 2.0)) <= STAMP_TOL, (t, s)


def test_ts_recordings_joined_with_cat_show_one_recording_in_every_path(make_clip: Callable[..., Path],
                                                                         tmp_path: Path) -> None:
    """Joined with ``cat`` (camcorder users do), two recordings repeat their times. Positions are taken by
    index row, not looked up by time, and of two keyframes at one time the first decoded is used: the clips
    showed the two recordings in turn, while the cpu backend showed the first."""
    first = make_clip("remux_h264_k1.ts", codec="h264", width=128, height=96, fps=30, duration_s=8.0,
                      keyframe_interval_s=1.0, source_id=5)
    second = make_clip("remux_h264_k2_sid6.ts", codec="h264", width=128, height=96, fps=30, duration_s=6.0,
                       keyframe_interval_s=2.0, source_id=6)
    path = tmp_path / "joined.ts"
    path.write_bytes(first.read_bytes() + second.read_bytes())
    for mode in ("exact", "keyframe"):
        clips, _, _, _ = _build(path, mode)
        seen = set()
        for clip in clips:
            with av.open(io.BytesIO(clip.data)) as src:
                frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
            for i, t in zip(clip.frames, clip.times):
                stamp = read_stamp(frames[i])
                assert stamp is not None and abs(stamp.time_s - t) <= STAMP_TOL, (mode, t, stamp)
                seen.add(stamp.source_id)
        cpu_frames, _, _ = create_sampler("cpu", mode=mode, size=96, square=False).sample_video(path)
        cpu_seen = {s.source_id for s in map(read_stamp, cpu_frames.permute(0, 2, 3, 1).numpy()) if s}
        assert seen == cpu_seen == {5}, (mode, seen, cpu_seen)


@pytest.mark.parametrize("mode", ["exact", "keyframe"])
def test_a_ts_keyframe_not_at_its_byte_position_is_an_error_not_another_frame(
        make_clip: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    from quadvault_dali.errors import DecodeError
    from quadvault_dali.sampling import _remux

    path = make_clip("remux_h264_k1.ts", codec="h264", width=128, height=96, fps=30, duration_s=8.0,
                     keyframe_interval_s=1.0, source_id=5)
    def one_keyframe_late(container, index, row):  # type: ignore[no-untyped-def]
        keys = np.flatnonzero(index.is_key)
        return int(index.pos[keys[min(np.searchsorted(keys, row) + 1, len(keys) - 1)]])
    monkeypatch.setattr(_remux, "byte_position", one_keyframe_late)
    with pytest.raises(DecodeError, match="keyframe at 0.00s"):
        _build(path, mode)


def test_a_clip_missing_a_wanted_frame_is_an_error_not_a_gap(make_clip: Callable[..., Path]) -> None:
    from quadvault_dali.errors import DecodeError
    from quadvault_dali.sampling._remux import decode_clip

    clip = _build(_clip_path(make_clip, "h264_bframes"), "exact")[0][0]
    broken = Clip(clip.data, np.append(clip.frames, 10_000).astype(np.int32), clip.times + [99.0], clip.packets)
    assert [t for _, t in decode_clip(clip)] == clip.times
    with pytest.raises(DecodeError, match="1 of the frames wanted from the run at 0.00s did not decode"):
        list(decode_clip(broken))


@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_open_gop_keyframes_far_apart_come_out_in_order(make_clip: Callable[..., Path], mode: str) -> None:
    """HEVC CRA keyframes 231-240 frames apart, in one stream, wrap the decoder's picture order count: it
    returned 7.7 s for 0 s and 0 s for 7.7 s. Each such run now gets a clip of its own."""
    path = make_clip("remux_hevc_cra.mp4", codec="hevc", width=160, height=160, fps=30, duration_s=40.0,
                     keyframe_interval_s=0.7, source_id=3)
    clips, plan, _, _ = _build(path, mode, fps=0.125)
    times = [t for c in clips for t in c.times]
    stamps = [s for c in clips for s in _decoded_stamps(c, 0)]  # by decoder output order, like DALI
    assert len(times) == 5 and stamps == pytest.approx(times, abs=STAMP_TOL)


def _scene_cut_hevc(path: Path) -> Path:
    """x265 with open-GOP keyframes forced one frame apart (1.5/1.533 s and 3.333/3.367/3.4 s, as scene
    cuts place them), B-frames: the frames just before a keyframe are its leading pictures (RASL)."""
    from av.video.frame import PictureType

    if path.exists():
        return path
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx265", rate=30)
        stream.width = stream.height = 128
        stream.pix_fmt = "yuv420p"
        stream.options = {"x265-params": "keyint=60:min-keyint=1:bframes=4:log-level=error"}
        for i in range(300):
            image = np.roll(base, i % 128, axis=1)
            image[i % 120:i % 120 + 8, :8] = 255
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if i in (45, 46, 100, 101, 102, 200):
                frame.pict_type = PictureType.I
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.mark.parametrize("fps", [10.0, 30.0])
def test_a_run_reaching_past_the_next_keyframe_never_repeats_it_in_one_stream(media_dir: Path, fps: float) -> None:
    """The frame at 1.4 s is a leading picture of the keyframe at 1.5 s: its run holds that keyframe, and the
    next run starts with it again (relabelled BLA). In one stream FFmpeg dropped the second copy as a
    duplicate picture order count and every later frame of the clip shifted by one."""
    from quadvault_dali.sampling import _remux as remux

    path = _scene_cut_hevc(media_dir / "remux_hevc_scene_cuts.mp4")
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        shown = {round(float(f.pts * stream.time_base), 6): f.to_ndarray(format="rgb24") for f in c.decode(stream)}
    clips, plan, _, _ = _build(path, "exact", fps=fps)
    assert [t for c in clips for t in c.times] == pytest.approx(sorted(shown)[::int(30 // fps)], abs=1e-6)
    for a, b in zip(clips, clips[1:]):
        if a.runs and b.runs and remux.repeats_a_picture(a.runs[-1], b.runs[0]):
            assert not remux.can_follow(b, a)
    merged: list[Clip] = []
    for clip in clips:  # as the gpu backend merges them into DALI samples
        if merged and remux.can_follow(clip, merged[-1]):
            merged[-1] = remux.merge_clips([merged[-1], clip])
        else:
            merged.append(clip)
    for clip in [*clips, *merged]:
        with av.open(io.BytesIO(clip.data)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == clip.packets
        for i, t in zip(clip.frames, clip.times):
            assert np.array_equal(frames[i], shown[round(t, 6)]), f"frame for {t}s"


def test_cra_keyframes_are_relabelled_bla_so_they_share_clips(make_clip: Callable[..., Path]) -> None:
    """x265 writes CRA keyframes (open GOP): back to back they wrapped the picture order, so each was a clip
    (and a DALI sample) of its own. Relabelled BLA, as a splicer does, they share clips like IDR keyframes."""
    from quadvault_dali.sampling._remux import clean_start, opens_cleanly

    h264 = _clip_path(make_clip, "h264_bframes")  # x264: IDR keyframes
    hevc = _clip_path(make_clip, "hevc_gop2")  # x265: CRA keyframes (open GOP)
    for path, codec, cleanly in ((h264, "h264", True), (hevc, "hevc", False)):
        _, index = probe_video_index(path)
        fh = CountingFile(path)
        key = int(np.flatnonzero(index.is_key)[1])
        data = fh.read_at(int(index.pos[key]), int(index.size[key]))
        assert opens_cleanly(data, codec, 4) is cleanly
        assert opens_cleanly(clean_start(data, codec, 4), codec, 4)
        assert len(clean_start(data, codec, 4)) == len(data)
        fh.close()
    assert len(_build(h264, "keyframe")[0]) == 1  # six keyframes, one clip
    clips = _build(hevc, "keyframe")[0]
    assert len(clips) == 1 and len(clips[0]) == 3  # three keyframes, one clip
    assert [s for s in _decoded_stamps(clips[0], 0)] == pytest.approx(clips[0].times, abs=STAMP_TOL)
    assert opens_cleanly(b"\x00\x00\x00\x01\x40\x01\x0c" + b"\x00\x00\x01\x26\x01\xaf", "hevc", None)  # VPS, IDR
    cra = b"\x00\x00\x00\x01\x2a\x01\xaf"  # Annex B CRA (type 21)
    assert not opens_cleanly(cra, "hevc", None)
    assert clean_start(cra, "hevc", None) == b"\x00\x00\x00\x01\x24\x01\xaf"  # BLA_N_LP (type 18)
    assert clean_start(cra, "h264", None) == cra


def probe_video_index(path: Path):  # type: ignore[no-untyped-def]
    from quadvault_dali.probe import probe_video

    return probe_video(path, with_index=True)


def test_only_clips_small_enough_to_merge_keep_a_copy_of_their_packets(make_clip: Callable[..., Path],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import quadvault_dali.sampling._remux as remux

    path = _clip_path(make_clip, "h264_bframes")
    small = _build(path, "keyframe")[0][0]
    assert small.runs and small.signature is not None and small.opens_cleanly
    monkeypatch.setattr(remux, "MERGEABLE_BYTES", len(small.data) - 1)
    big = _build(path, "keyframe")[0][0]
    assert big.data == small.data and not big.runs and big.signature is None
    assert not remux.can_follow(big, small) and not remux.can_follow(small, big)


def test_merges_of_one_codec_set_up_share_one_small_template(make_clip: Callable[..., Path]) -> None:
    """Opening an MP4 probes it (FFmpeg decodes H.264 frames to do so): merged samples mux from a template
    opened once per codec set-up, holding one keyframe; the merged clip decodes to every clip's frames."""
    import quadvault_dali.sampling._remux as remux

    path = _clip_path(make_clip, "h264_bframes")
    first, second = _build(path, "keyframe")[0][0], _build(path, "keyframe")[0][0]
    remux._templates.clear()
    merged = remux.merge_clips([first, second])
    opened = remux._templates[first.signature]
    remux.merge_clips([second, first])
    assert list(remux._templates) == [first.signature] and remux._templates[first.signature] is opened
    container, skeletons = opened
    assert container.streams.video[0].frames == 1  # one keyframe, not the clip
    assert len(skeletons._items) == 1, "both merges were joined on one skeleton"
    assert merged.times == first.times + second.times and len(merged) == len(first) + len(second)
    stamps = _decoded_stamps(merged, 0)
    assert stamps == pytest.approx(first.times + second.times, abs=STAMP_TOL)


def test_clips_merged_into_one_sample_never_join_their_own_mp4(make_clip: Callable[..., Path]) -> None:
    """A joined clip's MP4 is made when read (``Clip.data``; ``test_mp4_join`` checks it demuxes and decodes as
    PyAV's mux); clips merged into one DALI sample give their packets to the merged MP4 and never copy them
    into one of their own."""
    import quadvault_dali.sampling._remux as remux

    path = _clip_path(make_clip, "h264_bframes")
    clips = [_build(path, "keyframe", max_frames=2)[0][i] for i in range(3)]
    assert all(c.data_bytes_held == 0 for c in clips), "cut, not yet joined"
    remux.merge_clips(clips[:1] + clips[1:2])  # makes the set-up's template (from the first clip's MP4)
    merged = remux.merge_clips(clips[1:])
    assert clips[1].data_bytes_held == clips[2].data_bytes_held == 0
    assert _decoded_stamps(merged, 0) == pytest.approx(clips[1].times + clips[2].times, abs=STAMP_TOL)
    assert _decoded_stamps(clips[2], 0) == pytest.approx(clips[2].times, abs=STAMP_TOL)  # decoded alone: joined now
    assert clips[2].data_bytes_held == len(clips[2].data) > 0


def _cut(path: Path, mode: str, quick: bool, opened: list[dict]) -> tuple[object, bool]:
    """The clips the gpu backend's cutter makes of ``path`` (uncropped in keyframe mode), opened ``quick``, or the
    error; and whether the open stayed quick (``opened`` records ``probe._av_open``'s options, see below)."""
    from quadvault_dali.probe import QUICK_PROBE_OPTIONS
    from quadvault_dali.sampling._remux import CLIP_PIXELS, start_clips

    fh = CountingFile(path)
    try:
        before = len(opened)
        container = open_container(path, fh, quick=quick)
        kept_quick = len(opened) > before and opened[-1] == QUICK_PROBE_OPTIONS  # the open that was returned
        try:
            info, index = probe_open(container, path)
            plan = plan_samples(info, index, fps=1.0, mode=mode)  # type: ignore[arg-type]
            container, cut = start_clips(plan, container, fh, stream_cap=None, clip_pixels=CLIP_PIXELS,
                                         uncrop=mode == "keyframe")
            return [(c.data, c.signature, c.frames.tolist(), c.times) for c in cut], kept_quick
        finally:
            container.close()
    except Exception as exc:  # noqa: BLE001 - the error is what is compared
        return (type(exc).__name__, str(exc)), False
    finally:
        fh.close()


def _clips_both_ways(files: list[Path], monkeypatch: pytest.MonkeyPatch) -> tuple[dict, set[str]]:
    """Each file's clips after a quick and after a full open, in keyframe and exact mode, compared; the clips of
    the quick opens by name, and the names whose quick open was kept."""
    import quadvault_dali.probe as probe
    from quadvault_dali.sampling import _remux

    opened: list[dict] = []
    real_open = probe._av_open

    def recording(source: object, **kw: object) -> object:
        opened.append(dict(kw.get("options") or {}))  # type: ignore[arg-type]
        return real_open(source, **kw)

    monkeypatch.setattr(probe, "_av_open", recording)
    clips, kept = {}, set()
    for path in files:
        for mode in ("keyframe", "exact"):
            cut = {}
            for quick in (True, False):
                monkeypatch.setattr(_remux, "SHARED_SKELETONS", _remux.Skeletons(64))
                cut[quick], stayed = _cut(path, mode, quick, opened)
                if quick and stayed:
                    kept.add(path.name)
            assert cut[True] == cut[False], (path.name, mode)
            if mode == "keyframe":
                clips[path.name] = cut[True]
    return clips, kept


def test_clips_cut_after_a_quick_open_are_those_of_a_full_one(header_variants: list[Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """DALI gets the same MP4s, byte for byte, whether its cutter opened the video quickly (no picture decoded:
    the SPS's size, aspect ratio, range and colours filled in by ``probe.codec_setup``) or in full. The clips'
    ``colr`` and ``pasp`` boxes and sizes come from these, and skeletons are shared by them. Here on H.264 whose
    SPS and track header disagree (``_media.h264_header_variants``)."""
    clips, kept = _clips_both_ways(header_variants, monkeypatch)
    assert b"colr" in clips["colr_709_sps_bt2020.mp4"][0][0] and b"colr" in clips["sps_bt2020.mp4"][0][0]
    assert b"pasp" in clips["sps_sar_extended.mp4"][0][0] and b"pasp" not in clips["plain.mp4"][0][0]
    # the comparison is between two ways of opening: most files stayed quick (an SPS repeated unchanged in the
    # keyframes too); the ones FFmpeg's probe learns more of from their pictures did not: field coding without a
    # ``fiel`` box, several SPSs in the record, an in-band SPS unlike the record's, an alternative transfer SEI
    for name in ("plain.mp4", "sps_crop_left.mp4", "inband_sps.mp4", "sps_unnamed_colours.mp4"):
        assert name in kept, name
    for name in ("interlaced_no_fiel.mp4", "record_three_sps.mp4", "inband_sps_unlike_record.mp4",
                 "sei_alternative_transfer.mp4"):
        assert name not in kept, name


def test_corpus_clips_cut_after_a_quick_open_are_those_of_a_full_one(corpus: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on the corpus's real footage (phones, GoPro, a drone, HDR, rotated, broken files)."""
    files = [p for p in sorted(corpus.rglob("*")) if p.suffix.lower() in (".mp4", ".mov")]
    _, kept = _clips_both_ways(files, monkeypatch)
    assert "pixel7_videoOnly_cleaned.mp4" in kept and "portrait_4k60.mp4" in kept and len(kept) > 15


def test_a_clip_not_yet_joined_refuses_to_join_without_its_packets(make_clip: Callable[..., Path]) -> None:
    """``Clip.data`` joins the clip's packets where it was cut: a clip that lost them (``runs`` emptied before
    its MP4 was read) raises rather than giving an MP4 with no video in it."""
    from dataclasses import replace

    clip = _build(_clip_path(make_clip, "h264_bframes"), "keyframe")[0][0]
    assert clip.data_bytes_held == 0
    with pytest.raises(ValueError, match="without the packets"):
        replace(clip, runs=[]).data  # noqa: B018 - reading it is the test
    assert clip.data.startswith(b"\x00\x00\x00") and b"mdat" in clip.data[:64]


def test_a_track_header_cropping_the_sps_further_is_kept_as_a_region(header_variants: list[Path],
                                                                      corpus: Path) -> None:
    """H.264 whose track header is smaller than its SPS's picture within the last macroblocks (FFmpeg shows the
    track's size: "container cropping"). Uncropped for DALI, its clips say the SPS's size, so any decoder puts
    out the whole coded picture, and the region of interest keeps the track's: the same pixels FFmpeg shows."""
    from quadvault_dali.sampling._remux import CLIP_PIXELS, start_clips

    def clips(path: Path) -> tuple[list[Clip], object]:
        fh = CountingFile(path)
        container = open_container(path, fh, quick=True)
        info, index = probe_open(container, path)
        container, cut = start_clips(plan_samples(info, index, fps=1.0, mode="keyframe"), container, fh,
                                     stream_cap=None, clip_pixels=CLIP_PIXELS, uncrop=True)
        out = list(cut)
        container.close()
        fh.close()
        return out, info

    path = next(p for p in header_variants if p.name == "stsd_smaller_same_macroblocks.mp4")
    cut, info = clips(path)
    assert (info.width, info.height) == (180, 100)
    with av.open(str(path)) as src:
        shown = [f.to_ndarray(format="yuv420p") for f in src.decode(video=0)]  # FFmpeg's 180x100 pictures
    for clip in cut:  # coded 192x112 (x264 crops 4 rows for 108), the track 180x100
        assert clip.roi == (100 / 112, 180 / 192) and clip.signature[2:4] == (192, 112)  # type: ignore[index]
        with av.open(io.BytesIO(clip.data)) as src:
            stream = src.streams.video[0]
            assert (stream.codec_context.width, stream.codec_context.height) == (192, 112)
            decoded = [f for f in src.decode(stream)]
        for i, t in zip(clip.frames, clip.times):
            whole = decoded[i].to_ndarray(format="yuv420p")  # Y rows, then U and V
            assert whole.shape[1] == 192 and np.array_equal(whole[:100, :180], shown[round(t * 30)][:100, :180])
    # the plain file and one cropped from the left are left alone
    assert all(c.roi == (108 / 112, 1.0) for c in clips(next(p for p in header_variants if p.name == "plain.mp4"))[0])
    assert all(c.roi == (1.0, 1.0) for c in clips(next(p for p in header_variants if p.name == "sps_crop_left.mp4"))[0])
    karma, info = clips(corpus / "gopro+gpmf-parser/samples/karma.mp4")
    assert (info.width, info.height) == (854, 480)
    assert karma and all(c.roi == (1.0, 854 / 864) and c.signature[2:4] == (864, 480) for c in karma)  # type: ignore[index]
