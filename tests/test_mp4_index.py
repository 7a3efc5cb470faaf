"""The packet index read from an MP4's sample tables (``_mp4.all_samples``) is FFmpeg's, row for row, or is
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

from _media import remux_video


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
    fragmented = remux_video(source, tmp_path / "fragmented.mp4", options={"movflags": "frag_keyframe+empty_moov"})
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


def _patched(path: Path, tmp_path: Path, name: str, kind: bytes, offset: int, fmt: str, *values: int,
             nth: int = 0) -> Path:
    """A copy of ``path`` with ``values`` packed at ``offset`` into the payload of its ``nth`` ``kind`` box."""
    data = bytearray(path.read_bytes())
    at = -1
    for _ in range(nth + 1):
        at = data.index(kind, at + 1)
    struct.pack_into(fmt, data, at + 4 + offset, *values)
    out = tmp_path / name
    out.write_bytes(bytes(data))
    return out


def test_tables_ffmpeg_would_read_otherwise_are_left_to_it(make_clip: Callable[..., Path], motion_photo: Path,
                                                            tmp_path: Path) -> None:
    """Values FFmpeg clamps, resets or stops at (found by review against FFmpeg's own index): the sample
    tables are not used, and a damaged count never makes the prober allocate gigabytes."""
    path = make_clip("index_hevc_gop2.mp4", width=128, height=96, duration_s=5.0, **SPECS["hevc_gop2"])
    cases = {
        "stts_step_past_31_bits": _patched(path, tmp_path, "stts.mp4", b"stts", 12, ">I", 0xFFFFFF9C),
        "mdhd_scale_past_31_bits": _patched(path, tmp_path, "mdhd.mp4", b"mdhd", 12, ">I", 1 << 31),
        "stsz_constant_huge_count": _patched(path, tmp_path, "stsz.mp4", b"stsz", 4, ">II", 1000, 0x7FFFFFFF),
    }
    with open(path, "rb") as fh:
        facts = read_track_facts(fh, path.stat().st_size)
    assert facts.samples is not None and int(facts.samples.key.sum()) >= 3
    stss = path.read_bytes().index(b"stss") + 4
    first, second = struct.unpack_from(">II", path.read_bytes(), stss + 8)
    cases["stss_out_of_order"] = _patched(path, tmp_path, "stss.mp4", b"stss", 8, ">II", second, first)
    ids = motion_photo.read_bytes()
    tkhd = [i for i in range(len(ids)) if ids.startswith(b"tkhd", i)]
    version = ids[tkhd[-1] + 4]
    id_at = 4 + (16 if version == 1 else 8)
    last_id = struct.unpack_from(">I", ids, tkhd[-1] + 4 + id_at)[0]
    cases["two_tracks_one_id"] = _patched(motion_photo, tmp_path, "ids.mp4", b"tkhd", id_at, ">I", last_id, nth=1)
    for name, case in cases.items():
        with open(case, "rb") as fh:
            assert read_track_facts(fh, case.stat().st_size, None if "ids" not in case.name else last_id) \
                .samples is None, name


def test_an_edit_that_ends_as_the_last_picture_starts_hides_it() -> None:
    """FFmpeg drops a sample whose composition time reaches the edit's end: a last sample with a zero step
    and an edit as long as the steps' sum leaves the index one sample short, so the tables are not used."""
    from quadvault_dali._mp4 import _edit_keeps_all

    mvhd = bytes(4) + bytes(8) + struct.pack(">II", 1000, 0)  # payloads: version/flags, times, time scale
    mdhd = bytes(4) + bytes(8) + struct.pack(">II", 12800, 0)
    cts = np.arange(75, dtype=np.int64) * 512  # 74 steps of 512, the last sample's step 0: the sum is 74 x 512
    def edit(duration: int) -> dict[bytes, bytes]:
        return {b"mdhd": mdhd, b"elst": bytes(4) + struct.pack(">IIii", 1, duration, 0, 0x10000)}
    steps_sum = 74 * 512 * 1000 // 12800  # 2960 ms: the edit ends where the last picture starts
    assert not _edit_keeps_all(mvhd, edit(steps_sum), cts)
    assert _edit_keeps_all(mvhd, edit(steps_sum + 40), cts)
    assert not _edit_keeps_all(mvhd, edit(0), cts)


def test_an_edit_list_showing_nothing_is_a_clear_error(make_clip: Callable[..., Path], tmp_path: Path) -> None:
    path = make_clip("index_h264_bframes.mp4", width=128, height=96, duration_s=5.0, **SPECS["h264_bframes"])
    empty = _patched(path, tmp_path, "no_edit.mp4", b"elst", 8, ">I", 0)  # the one edit's duration: 0
    with pytest.raises(probe.VideoOpenError, match="edit list shows none"):
        probe.probe_video(empty)


def test_a_rotation_in_the_movie_header_counts_as_ffmpeg_counts_it(make_clip: Callable[..., Path],
                                                                   tmp_path: Path) -> None:
    """FFmpeg multiplies the track's matrix by the movie's (``mvhd``): a file turned there plays turned."""
    path = make_clip("index_h264_bframes.mp4", width=128, height=96, duration_s=5.0, **SPECS["h264_bframes"])
    turned = _patched(path, tmp_path, "mvhd90.mp4", b"mvhd", 36, ">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0,
                      0x40000000)
    with av.open(str(turned)) as c:
        assert next(c.decode(video=0)).rotation == -90  # FFmpeg's angle is counter-clockwise
    info = probe.probe_video(turned)
    assert info.rotation == 90 and (info.width, info.height) == (96, 128)
    assert info.setup != probe.probe_video(path).setup


def test_a_movie_matrix_of_zeros_leaves_the_picture_as_stored(make_clip: Callable[..., Path],
                                                              tmp_path: Path) -> None:
    """FFmpeg multiplies by it anyway: the product is all zeros, and players show the picture unturned."""
    path = make_clip("index_rotated_audio.mp4", width=128, height=96, duration_s=5.0, **SPECS["rotated_audio"])
    assert probe.probe_video(path).rotation == 90
    zeroed = _patched(path, tmp_path, "mvhd0.mp4", b"mvhd", 36, ">9i", *([0] * 9))
    assert probe.probe_video(zeroed).rotation == 0


@pytest.mark.parametrize(("codec", "flags"), [("h264", ""), ("hevc", ""), ("h264", "+default_base_moof+global_sidx")])
def test_fragmented_files_take_composition_offsets_from_their_track_runs(make_clip: Callable[..., Path],
                                                                         tmp_path: Path, codec: str,
                                                                         flags: str) -> None:
    """Fragmented MP4 (crash-safe recorders; ``frag_keyframe+empty_moov``) keeps its samples' composition
    offsets in each fragment's ``trun``: read as the decode times they were, B-frame files sampled pictures up
    to 3 frames off and HEVC keyframe times came out early. With a ``sidx`` (DASH) FFmpeg reads fragments as
    it plays, and its index at open held 40 of 180 samples: such a file is demuxed whole."""
    from test_remux import STAMP_TOL, _build, _decoded_stamps
    from quadvault_dali.sampling import create_sampler

    source = make_clip(f"index_frag_src_{codec}.mp4", codec=codec, width=128, height=96, fps=30, duration_s=6.0,
                       keyframe_interval_s=4 / 3, source_id=4)
    path = remux_video(source, tmp_path / f"frag_{codec}.mp4", options={"movflags": "frag_keyframe+empty_moov" + flags})
    assert b"moof" in path.read_bytes() and b"trun" in path.read_bytes()
    with av.open(str(path)) as c:
        shown = [(float(f.pts * f.time_base), f.key_frame) for f in c.decode(video=0)]
    shown_keys = [round(t - shown[0][0], 6) for t, key in shown if key]  # times from the first picture
    info = probe.probe_video(path)
    assert list(info.keyframe_times) == pytest.approx(shown_keys, abs=1e-6) and info.frame_count == len(shown)
    for mode in ("exact", "keyframe"):
        clips, _, _, _ = _build(path, mode, fps=2.0)
        times = [t for c in clips for t in c.times]
        for t, s in zip(times, [s for c in clips for s in _decoded_stamps(c, 0)]):
            assert s is not None and abs(s - t) <= STAMP_TOL, (mode, t, s)
        _, cpu_times, _ = create_sampler("cpu", fps=2.0, mode=mode, size=32).sample_video(path)
        assert cpu_times == pytest.approx(times, abs=1e-6)
        if mode == "exact":
            assert len(times) == 12  # every half second of the 6 s (a sidx file's duration is its end time)
