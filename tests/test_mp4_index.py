"""The packet index read from an MP4's sample tables (``_mp4.sample_table``) is FFmpeg's, row for row, or is
not used: tracks it does not cover fall back to PyAV's index entries."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Callable

import av
import numpy as np
import pytest

from quadvault_dali import probe
from quadvault_dali._mp4 import read_track_facts
from quadvault_dali.probe import PacketIndex


def _both(path: Path) -> tuple[PacketIndex | None, PacketIndex]:
    """(the index from the sample tables or ``None`` where they are not used, FFmpeg's index entries)."""
    container = probe.open_container(path)
    try:
        stream = probe.main_video_stream(container)
        with open(path, "rb") as fh:
            facts = read_track_facts(fh, path.stat().st_size, stream.id)
        ffmpeg = probe.read_packet_index(container, stream, path, facts.composition_offsets)
        if facts.samples is None:
            return None, ffmpeg
        return probe.read_packet_index(container, stream, path, facts.composition_offsets, facts.samples), ffmpeg
    finally:
        container.close()


def _assert_same(ours: PacketIndex, ffmpeg: PacketIndex) -> None:
    assert len(ours) == len(ffmpeg)
    np.testing.assert_allclose(ours.pts, ffmpeg.pts, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(ours.pos, ffmpeg.pos)
    np.testing.assert_array_equal(ours.size, ffmpeg.size)
    np.testing.assert_array_equal(ours.is_key, ffmpeg.is_key)


SPECS = {
    "h264_bframes": dict(codec="h264", fps=30, keyframe_interval_s=1.0),  # ctts, and an edit list that shifts
    "hevc_gop2": dict(codec="hevc", fps=25, keyframe_interval_s=2.0),
    "vfr": dict(codec="h264", fps=30, vfr=True),
    "rotated_audio": dict(codec="h264", fps=30, rotation=90, audio=True),  # interleaved: many chunks
    "vp9": dict(codec="vp9", fps=24, keyframe_interval_s=1.0),
    "mov": dict(codec="h264", fps=25, keyframe_interval_s=2.0, audio=True),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_generated_files_are_indexed_from_their_sample_tables_as_ffmpeg_indexes_them(
        make_clip: Callable[..., Path], name: str) -> None:
    suffix = ".mov" if name == "mov" else ".mp4"
    path = make_clip(f"index_{name}{suffix}", width=128, height=96, duration_s=5.0, **SPECS[name])
    ours, ffmpeg = _both(path)
    assert ours is not None, "a plain track takes the sample tables"
    _assert_same(ours, ffmpeg)
    assert ffmpeg.is_key.sum() >= 2 and not ffmpeg.is_key.all()
    if name == "rotated_audio":
        with av.open(str(path)) as c:
            assert c.streams.audio, "the video's samples share the file with audio chunks"
        assert np.any(np.diff(ours.pos) != ours.size[:-1]), "more than one chunk"


def test_the_video_track_is_found_by_its_id_among_several(motion_photo: Path) -> None:
    ours, ffmpeg = _both(motion_photo)
    assert ours is not None
    _assert_same(ours, ffmpeg)
    assert len(ours) == 90  # the 3-s 30-fps video, not the 2-frame still track


def _with_edit(mp4: bytes, media_time: int) -> bytes:
    at = mp4.index(b"elst")
    out = bytearray(mp4)
    wide = out[at + 4] == 1
    struct.pack_into(">q" if wide else ">i", out, at + 4 + (16 if wide else 12), media_time)
    return bytes(out)


def test_an_edit_that_starts_after_the_first_picture_is_left_to_ffmpeg(make_clip: Callable[..., Path],
                                                                        tmp_path: Path) -> None:
    """FFmpeg flags (or drops) the samples before an edit that starts late: those tracks keep its index."""
    path = make_clip("index_h264_bframes.mp4", width=128, height=96, duration_s=5.0, **SPECS["h264_bframes"])
    with av.open(str(path)) as c:
        scale = c.streams.video[0].time_base.denominator
    trimmed = tmp_path / "trimmed.mp4"
    trimmed.write_bytes(_with_edit(path.read_bytes(), int(1.5 * scale)))  # the edit shows 1.5 s on
    ours, ffmpeg = _both(trimmed)
    assert ours is None
    full, _ = _both(path)
    assert full is not None and len(ffmpeg) < len(full), "FFmpeg's index drops what the edit does not show"


def test_fragmented_files_and_other_sample_tables_are_left_to_ffmpeg(make_clip: Callable[..., Path],
                                                                      tmp_path: Path) -> None:
    source = make_clip("index_hevc_gop2.mp4", width=128, height=96, duration_s=5.0, **SPECS["hevc_gop2"])
    fragmented = tmp_path / "fragmented.mp4"
    with av.open(str(source)) as src, av.open(str(fragmented), "w",
                                                   options={"movflags": "frag_keyframe+empty_moov"}) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    assert _both(fragmented)[0] is None
    data = source.read_bytes()
    compact = tmp_path / "stz2.mp4"  # compact sample sizes: a box the reader does not cover
    compact.write_bytes(data.replace(b"stsz", b"stz2", 1))
    facts = read_track_facts(io.BytesIO(compact.read_bytes()), compact.stat().st_size)
    assert facts.samples is None and facts.rotation == 0


def test_real_footage_is_indexed_as_ffmpeg_indexes_it(corpus: Path) -> None:
    """Every MP4/MOV of the shared corpus: the sample tables give FFmpeg's rows, or are not used."""
    used = left = 0
    for path in sorted(p for p in corpus.rglob("*") if p.suffix.lower() in (".mp4", ".mov", ".m4v")):
        try:
            ours, ffmpeg = _both(path)
        except Exception:  # noqa: BLE001 - broken files are the prober's tests' business
            continue
        if ours is None:
            left += 1
            continue
        _assert_same(ours, ffmpeg)
        used += 1
    assert used >= 20 and left <= used // 4, (used, left)
