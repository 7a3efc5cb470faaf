"""In-order clips are written by joining their packets under a rebuilt index (``_mp4_join``) instead of PyAV's
muxer: a demuxer and a decoder must see exactly what they see in FFmpeg's mux of the same packets."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any, Callable

import av
import numpy as np
import pytest

from quadvault_dali._mp4 import _boxes
from quadvault_dali.sampling import _remux
from quadvault_dali.sampling._mp4_join import join_mp4, mp4_frame, skeleton
from quadvault_dali.sampling._remux import Clip, SourcePacket, merge_clips

from test_remux import _build, _clip_path


def _pyav_only(clip: Clip, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """``clip``'s MP4 as PyAV's muxer writes it (the path before ``join_mp4``)."""
    with monkeypatch.context() as m:
        m.setattr(_remux, "mp4_frame", lambda *a, **k: None)
        return _remux.mux_clip(_remux._template(clip)[0], clip.runs, clip.signature, clip.roi,
                               clip.cropped_signature).data


def _seen(data: bytes) -> dict[str, Any]:
    """What a demuxer and a decoder get from an MP4: stream set-up, every packet, every decoded picture."""
    with av.open(io.BytesIO(data)) as src:
        stream = src.streams.video[0]
        ctx = stream.codec_context
        setup = dict(codec=ctx.name, extradata=bytes(ctx.extradata or b""), width=ctx.width, height=ctx.height,
                     frames=stream.frames, duration=stream.duration, time_base=stream.time_base,
                     start=stream.start_time, rate=stream.average_rate, container_duration=src.duration)
        packets = [(bytes(p), p.pts, p.dts, p.is_keyframe, p.duration) for p in src.demux(stream) if p.size]
    with av.open(io.BytesIO(data)) as src:
        pictures = [(f.pts, f.to_ndarray(format="rgb24")) for f in src.decode(video=0)]
    return dict(setup=setup, packets=packets, pictures=pictures)


def _assert_same(joined: bytes, reference: bytes) -> None:
    a, b = _seen(joined), _seen(reference)
    assert a["setup"] == b["setup"]
    assert a["packets"] == b["packets"]
    assert len(a["pictures"]) == len(b["pictures"]) > 0
    for (pts_a, img_a), (pts_b, img_b) in zip(a["pictures"], b["pictures"]):
        assert pts_a == pts_b
        assert np.array_equal(img_a, img_b)


def _count_joins(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records whether each clip was framed for a join (True) or left to PyAV (False)."""
    calls: list[bool] = []

    def spy(*args: Any, **kwargs: Any) -> tuple[bytes, bytes] | None:
        out = mp4_frame(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(_remux, "mp4_frame", spy)
    return calls


@pytest.mark.parametrize("name", ["h264_bframes", "hevc_gop2", "hevc_gop5", "vp9", "rotated", "vfr"])
def test_keyframe_clips_are_joined_and_demux_and_decode_like_pyav_muxes(
        make_clip: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    calls = _count_joins(monkeypatch)
    clips, _, _, _ = _build(_clip_path(make_clip, name), "keyframe", max_frames=2)
    assert len(clips) >= 2 and calls and all(calls), "every keyframe clip is joined, none left to PyAV"
    for clip in clips:
        _assert_same(clip.data, _pyav_only(clip, monkeypatch))


def test_merged_keyframe_clips_are_joined_like_pyav_muxes(make_clip: Callable[..., Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    clips, _, _, _ = _build(_clip_path(make_clip, "hevc_gop2"), "keyframe", max_frames=2)
    calls = _count_joins(monkeypatch)
    merged = merge_clips(clips)
    assert calls == [True]
    assert len(merged) == sum(len(c) for c in clips)
    _assert_same(merged.data, _pyav_only(merged, monkeypatch))


def test_runs_without_b_frames_are_joined_with_their_sync_samples(make_clip: Callable[..., Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact-mode runs of a stream without B-frames (VP9) are in order too: keyframes and inter frames."""
    path = make_clip("join_vp9_gop2.mp4", codec="vp9", width=128, height=96, fps=30, duration_s=6.0,
                     keyframe_interval_s=2.0, source_id=3)
    calls = _count_joins(monkeypatch)
    clips, _, _, _ = _build(path, "exact")
    assert calls and all(calls)
    inter = 0
    for clip in clips:
        with av.open(io.BytesIO(clip.data)) as src:
            flags = [p.is_keyframe for p in src.demux(video=0) if p.size]
        assert flags[0]
        inter += flags.count(False)
        _assert_same(clip.data, _pyav_only(clip, monkeypatch))
    assert inter > 0, "the clips hold inter frames, so their sync samples are listed"


def test_runs_with_b_frames_stay_with_pyavs_muxer(make_clip: Callable[..., Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_clip("join_h264_gop2.mp4", codec="h264", width=128, height=96, fps=30, duration_s=6.0,
                     keyframe_interval_s=2.0, source_id=3)
    calls = _count_joins(monkeypatch)
    clips, _, _, _ = _build(path, "exact")
    assert clips and not calls, "out-of-order packets need FFmpeg's composition offsets"


def _one_packet_mp4(make_clip: Callable[..., Path]) -> tuple[bytes, bytes]:
    """FFmpeg's MP4 of a clip's first packet alone, and that packet."""
    with av.open(str(_clip_path(make_clip, "h264_bframes"))) as src:
        stream = src.streams.video[0]
        first = next(p for p in src.demux(stream) if p.size and p.is_keyframe)
        packet = SourcePacket(bytes(first), 0.0, 0.0, True)
        return _remux._pyav_mux(stream, [packet], np.zeros(1, np.int64), 0, None), packet.data


def test_join_refuses_what_it_does_not_rebuild(make_clip: Callable[..., Path]) -> None:
    template, packet = _one_packet_mp4(make_clip)
    skel = skeleton(template, packet)
    assert skel is not None and join_mp4(skel, [packet, packet], [True, True]) is not None
    assert skeleton(template, packet[:-1] + b"\0") is None, "FFmpeg wrote other bytes than the packet"
    assert join_mp4(skel, [packet, packet], [False, True]) is None, "a clip starts with a keyframe"
    assert skeleton(_with_edit_media_time(template, 1000), packet) is None, "an edit list that shifts the media"
    assert skeleton(template.replace(b"stsc", b"ctts", 1), packet) is None, "an unknown sample table box"
    assert skeleton(_with_64_bit_mdat(template), packet) is None, "a 64-bit mdat size (FFmpeg's past 4 GiB)"
    assert join_mp4(skel, [packet, b"", packet], [True, False, False]) is None, "FFmpeg drops empty packets"


def test_movie_durations_round_up_as_ffmpeg_does() -> None:
    """mvhd/tkhd/elst durations in milliseconds: 3,600 ticks of 1/90000 are whole, 1,001 would not be."""
    from quadvault_dali.sampling._mp4_join import Skeleton, _layout

    skel = Skeleton(b"", b"", 1001, 1000, 90000)
    assert [_layout(skel, [b"x"] * n, [True] * n).movie_duration for n in (1, 2, 90)] == [12, 23, 1001]
    assert _layout(Skeleton(b"", b"", 3600, 1000, 90000), [b"x"] * 7, [True] * 7).movie_duration == 280


def _with_64_bit_mdat(mp4: bytes) -> bytes:
    """``mp4`` with its mdat header in the 16-byte form (size 1, then a 64-bit size), as FFmpeg writes past 4 GiB."""
    at = mp4.index(b"mdat") - 4
    size = struct.unpack_from(">I", mp4, at)[0]
    return mp4[:at] + struct.pack(">I4sQ", 1, b"mdat", size + 8) + mp4[at + 8:]


def _with_entry_box(mp4: bytes, box: bytes) -> bytes:
    """``mp4`` (moov after mdat, as FFmpeg writes it) with ``box`` appended to its video sample entry."""
    chain = [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"]
    headers, lo, hi = [], 0, len(mp4)
    for depth, kind in enumerate(chain):
        start, end = next((s, e) for k, s, e in _boxes(mp4, lo, hi) if k == kind)
        headers.append(start - 8)
        lo, hi = (start + 8, end) if kind == b"stsd" else (start, end)
    entry = lo  # the first sample entry, after stsd's version/flags and count
    headers.append(entry)
    out = bytearray(mp4)
    entry_end = entry + struct.unpack_from(">I", mp4, entry)[0]
    out[entry_end:entry_end] = box
    for at in headers:
        struct.pack_into(">I", out, at, struct.unpack_from(">I", mp4, at)[0] + len(box))
    return bytes(out)


def _with_matrix(mp4: bytes, matrix: tuple[int, ...]) -> bytes:
    at = mp4.index(b"tkhd") + 4
    out = bytearray(mp4)
    struct.pack_into(">9i", out, at + (52 if out[at] == 1 else 40), *matrix)
    return bytes(out)


def test_videos_share_a_skeleton_only_where_ffmpeg_copies_their_tracks_alike(
        make_clip: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """PyAV muxes one packet once for all the clips of all the videos whose tracks FFmpeg copies alike
    (``VideoInfo.setup``); a video whose sample description or display matrix differs gets its own skeleton,
    so its clips carry its own boxes (an HDR ``mdcv``, a ``clap``, a mirror)."""
    muxed: list[int] = []
    real = _remux._pyav_mux
    monkeypatch.setattr(_remux, "_pyav_mux", lambda t, packets, *a: muxed.append(len(packets)) or real(t, packets, *a))
    monkeypatch.setattr(_remux, "SHARED_SKELETONS", _remux.Skeletons(64))
    source = _clip_path(make_clip, "hevc_gop5").read_bytes()
    one, two = tmp_path / "one.mp4", tmp_path / "two.mp4"
    one.write_bytes(source)
    two.write_bytes(source)
    clips, plan, _, _ = _build(one, "keyframe", max_frames=1)
    again, plan2, _, _ = _build(two, "keyframe", max_frames=1)
    assert len(clips) >= 3 and muxed == [1] and plan.info.setup == plan2.info.setup != ""
    assert [c.data for c in again] == [c.data for c in clips]

    one_deg = 0x10000
    variants = {
        "mdcv": _with_entry_box(source, struct.pack(">I4s6H2HII", 32, b"mdcv", 35400, 14600, 8500, 39850, 6550,
                                                    2300, 15635, 16450, 10000000, 50)),
        "clap": _with_entry_box(source, struct.pack(">I4s8I", 40, b"clap", 120, 1, 90, 1, 0, 1, 0, 1)),
        "rot180": _with_matrix(source, (-one_deg, 0, 0, 0, -one_deg, 0, 0, 0, 0x40000000)),
        "mirror": _with_matrix(source, (-one_deg, 0, 0, 0, one_deg, 0, 0, 0, 0x40000000)),
    }
    setups = {plan.info.setup}
    for name, data in variants.items():
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(data)
        muxed.clear()
        own, its_plan, _, _ = _build(path, "keyframe", max_frames=1)
        assert muxed == [1], f"{name}: a skeleton of its own"
        setups.add(its_plan.info.setup)
        if name in ("mdcv", "clap"):
            assert all(name.encode() in c.data for c in own)
    assert len(setups) == 1 + len(variants), "the mirror is not the 180-degree turn"
    bitrate = tmp_path / "btrt.mp4"  # bit rates differ per file; decoders do not read them
    bitrate.write_bytes(_with_entry_box(source, struct.pack(">I4s3I", 20, b"btrt", 0, 123, 456)))
    assert _build(bitrate, "keyframe", max_frames=1)[1].info.setup == plan.info.setup
    monkeypatch.undo()
    for clip in clips:
        _assert_same(clip.data, _pyav_only(clip, monkeypatch))


def test_only_codecs_whose_packets_ffmpeg_keeps_are_joined(make_clip: Callable[..., Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """FFmpeg filters AV1's OBUs in every packet, so a check of one packet says nothing of the others: codecs
    outside ``_JOINABLE_CODECS`` stay with PyAV's muxer."""
    assert "av1" not in _remux._JOINABLE_CODECS and {"h264", "hevc"} <= _remux._JOINABLE_CODECS
    monkeypatch.setattr(_remux, "_JOINABLE_CODECS", frozenset({"vp9"}))
    calls = _count_joins(monkeypatch)
    clips, _, _, _ = _build(_clip_path(make_clip, "h264_bframes"), "keyframe", max_frames=1)
    assert clips and not calls


def _with_edit_media_time(mp4: bytes, media_time: int) -> bytes:
    at = mp4.index(b"elst")
    out = bytearray(mp4)
    version = out[at + 4]
    offset = at + 4 + (16 if version == 1 else 12)
    struct.pack_into(">q" if version == 1 else ">i", out, offset, media_time)
    return bytes(out)
