"""The prober: right facts from real and generated files, specific errors for damaged ones."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from quadvault_dali.errors import UnsupportedCodecError, VideoOpenError
from quadvault_dali.probe import probe_video, read_recorded_at

from _media import remux_video


@pytest.mark.parametrize("codec,fps,suffix", [("h264", 30, ".mp4"), ("hevc", 25, ".mp4"), ("vp9", 24, ".webm"),
                                              ("mjpeg", 60, ".mkv")])
def test_probe_generated_codecs(make_clip, codec: str, fps: int, suffix: str) -> None:
    clip = make_clip(f"probe_{codec}{suffix}", codec=codec, fps=fps, duration_s=3.0, keyframe_interval_s=1.0)
    info = probe_video(clip)
    assert info.codec == codec
    assert (info.width, info.height) == (320, 240)
    assert info.avg_fps == pytest.approx(fps, rel=0.02)
    assert info.duration_s == pytest.approx(3.0, abs=0.1)
    assert info.keyframe_times[0] == pytest.approx(0.0, abs=1e-6)
    if codec != "mjpeg":  # every MJPEG frame is a keyframe
        assert len(info.keyframe_times) == 3
        assert info.max_keyframe_interval_s == pytest.approx(1.0, abs=0.05)
    assert info.size_bytes == clip.stat().st_size


def test_probe_rotation_audio_and_keyframe_interval(make_clip) -> None:
    info = probe_video(make_clip("probe_rot.mp4", rotation=90, audio=True, keyframe_interval_s=5.0, duration_s=6.0))
    assert info.rotation == 90
    assert (info.width, info.height) == (320, 240)  # as displayed
    assert (info.coded_width, info.coded_height) == (240, 320)  # stored on its side
    assert info.has_audio
    assert [round(t, 3) for t in info.keyframe_times] == [0.0, 5.0]


@pytest.mark.parametrize("tag,expected", [
    ("2023-06-15T10:22:33.000000Z", datetime(2023, 6, 15, 10, 22, 33, tzinfo=timezone.utc)),
    (None, None),
    ("1970-01-01T00:00:00.000000Z", None),  # a camera whose clock was never set
])
def test_probe_reads_when_the_camera_recorded(make_clip, tag: str | None, expected: datetime | None) -> None:
    """The container's creation time is the flight's date, which a copy that loses mtimes keeps."""
    clip = make_clip(f"probe_recorded_{(tag or 'none')[:4]}.mp4", duration_s=1.0, recorded_at=tag)
    info = probe_video(clip)
    assert info.recorded_at == expected
    assert read_recorded_at(clip) == expected
    assert info.to_dict()["recorded_at"] == (expected.isoformat() if expected else None)


def test_probe_vfr(make_clip) -> None:
    info = probe_video(make_clip("probe_vfr.mp4", vfr=True, duration_s=4.0))
    assert info.is_vfr


def test_probe_is_fast_enough_to_skip_decoding(make_clip) -> None:
    """Probing reads the index: a 4K HEVC clip probes although nothing is decoded."""
    info = probe_video(make_clip("probe_4k.mp4", codec="hevc", width=3840, height=2160, duration_s=1.0))
    assert (info.width, info.height) == (3840, 2160)
    assert info.frame_count == 30


@pytest.mark.parametrize("kind,message", [
    ("empty", "empty file (0 bytes)"),
    ("text", "not a readable video container"),
    ("truncated", "truncated"),
    ("no_index", "not a readable video container"),
])
def test_broken_files_raise_specific_errors(broken_clips: dict[str, Path], kind: str, message: str) -> None:
    with pytest.raises(VideoOpenError) as err:
        probe_video(broken_clips[kind])
    assert message in str(err.value)
    assert str(broken_clips[kind]) in str(err.value)


@pytest.mark.parametrize("cut,message", [
    (lambda data: data.find(b"trak") + 200, "truncated: its header/index is cut off inside the video track's"),
    (lambda data: data.find(b"hvcC") - 4, "truncated: the file ends inside its header/index"),
])
def test_an_mp4_cut_inside_its_track_description_is_one_clear_error(make_clip, tmp_path: Path, cut,
                                                                      message: str) -> None:
    """A copy cut inside the 'moov' after the track header: FFmpeg opened a video track with no codec and probe
    printed an AttributeError traceback (a scan stored it as a DecodeError); one cut further it said "[Errno
    541478725] End of file". Both are now the damaged header they are (a library-scale review's find)."""
    data = make_clip("probe_cut_src.mp4", codec="hevc", width=160, height=144, duration_s=1.0).read_bytes()
    assert data.find(b"moov") < data.find(b"trak") < data.find(b"hvcC")  # the index is at the end of this file
    broken = tmp_path / "cut.mp4"
    broken.write_bytes(data[:cut(data)])
    with pytest.raises(VideoOpenError, match=message) as err:
        probe_video(broken)
    assert str(err.value).startswith(f"{broken}: ") and "re-copy" in str(err.value)
    from quadvault_dali.sampling import create_sampler

    with pytest.raises(VideoOpenError, match=message):
        create_sampler("cpu", size=32).sample_video(broken)


def test_a_complete_file_ffmpeg_cannot_read_is_not_called_cut_off(tmp_path: Path) -> None:
    """The same two FFmpeg answers from files that are whole: a Matroska track in a codec this FFmpeg build has
    no decoder for is an unsupported codec, and a 2-frame MPEG-TS FFmpeg cannot open is not "truncated ...
    re-copy it" (a review of the fix above)."""
    import av
    import numpy as np

    from quadvault_dali.errors import UnsupportedCodecError

    def write(path: Path, fmt: str, frames: int) -> bytes:
        with av.open(str(path), "w", format=fmt) as out:
            stream = out.add_stream("h264", rate=25)
            stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
            for i in range(frames):
                frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 100, np.uint8), format="rgb24")
                frame.pts = i
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return path.read_bytes()

    data = write(tmp_path / "ok.mkv", "matroska", 10)
    unknown = tmp_path / "unknown_codec.mkv"
    unknown.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_QUUX/ISO/AVC1", 1))
    with pytest.raises(UnsupportedCodecError, match="no decoder for its video track's codec") as err:
        probe_video(unknown)
    assert "re-copy" not in str(err.value)
    write(tmp_path / "tiny.ts", "mpegts", 2)
    try:
        probe_video(tmp_path / "tiny.ts")  # a newer FFmpeg may open it: then there is nothing to word
    except VideoOpenError as exc:
        assert "truncated" not in str(exc) and "re-copy" not in str(exc), exc


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(VideoOpenError, match="file not found"):
        probe_video(tmp_path / "nope.mp4")
    with pytest.raises(VideoOpenError, match="is a folder"):
        probe_video(tmp_path)


def test_corpus_facts(corpus: Path) -> None:
    """Real third-party files: the values ffprobe reports (see the corpus manifest)."""
    karma = probe_video(corpus / "gopro+gpmf-parser/samples/karma.mp4")
    assert (karma.codec, karma.width, karma.height) == ("h264", 854, 480)
    assert karma.recorded_at == datetime(2017, 4, 17, 19, 27, 57, tzinfo=timezone.utc)  # the drone's own date
    assert karma.avg_fps == pytest.approx(29.97, abs=0.01)
    assert karma.has_audio
    drone = probe_video(corpus / "AtomScott+SportsLabKit/drone.mp4")
    assert (drone.width, drone.height, drone.avg_fps) == (1260, 708, 60.0)
    mp4 = corpus / "androidx+media/libraries/test_data/src/test/assets/media/mp4"
    portrait = probe_video(mp4 / "portrait_4k60.mp4")
    assert (portrait.rotation, portrait.width, portrait.height) == (90, 2160, 3840)
    for name, rotation in [("video_0.mov", 0), ("video_90.mov", 90), ("video_180.mov", 180), ("video_270.mov", 270)]:
        assert probe_video(corpus / "dmlc+decord/tests/test_data" / name).rotation == rotation
    assert probe_video(mp4 / "sample_with_colr_mdcv_and_clli.mp4").codec == "av1"


@pytest.mark.parametrize("name,message", [
    ("androidx+media/libraries/test_data/src/test/assets/media/mp4/sample_audio_only.mp4", "no video stream"),
    ("androidx+media/libraries/test_data/src/test/assets/media/mp4/sample_malformed_free_box.mp4",
     "not a readable video container"),
])
def test_corpus_broken_files(corpus: Path, name: str, message: str) -> None:
    with pytest.raises(VideoOpenError, match=message):
        probe_video(corpus / name)


def test_unsupported_codec_is_a_video_open_error() -> None:
    assert issubclass(UnsupportedCodecError, VideoOpenError)


def test_probe_picks_the_footage_not_the_still_track(motion_photo: Path) -> None:
    info = probe_video(motion_photo)
    assert (info.stream_index, info.width, info.height) == (2, 256, 160)
    assert info.avg_fps == pytest.approx(30, rel=0.01) and info.frame_count == 90


def test_corpus_multi_stream_files(corpus: Path) -> None:
    """Motion photos carry 1–2-frame 2048×1536 stills beside the video; NASA's file has two real videos."""
    mp4 = corpus / "androidx+media/libraries/test_data/src/test/assets/media/mp4"
    top_shots = probe_video(mp4 / "mv_with_2_top_shots.mp4")
    assert (top_shots.stream_index, top_shots.width, top_shots.height, top_shots.frame_count) == (0, 1080, 1440, 53)
    motion = probe_video(mp4 / "pixel-motion-photo-2-hevc-tracks.mp4")
    assert (motion.stream_index, motion.width, motion.height, motion.frame_count) == (0, 768, 1024, 58)
    nasa = probe_video(corpus / "pytorch+torchcodec/test/resources/nasa_13013.mp4")
    assert (nasa.stream_index, nasa.width, nasa.height) == (3, 480, 270)  # the higher-bit-rate one of two


def test_corpus_matches_ffprobe(corpus: Path) -> None:
    """Every single-video file of the corpus: codec, displayed size, rotation and frame rate as ffprobe saw them."""
    import json
    from fractions import Fraction

    checked = 0
    for entry in json.loads((corpus / "manifest.json").read_text()):
        facts = entry.get("probe") or {}
        if facts.get("n_video") != 1:
            continue
        video = facts["video"]
        turn = -(facts.get("rotation") or 0) % 360  # ffprobe's matrix angle is counter-clockwise
        size = (video["height"], video["width"]) if turn in (90, 270) else (video["width"], video["height"])
        info = probe_video(corpus / entry["loc"].replace("/", "+") / entry["member"])
        assert (info.codec, (info.width, info.height), info.rotation) == (video["codec_name"], size, turn), entry["member"]
        assert info.avg_fps == pytest.approx(float(Fraction(video["avg_frame_rate"])), rel=1e-3), entry["member"]
        assert info.duration_s <= facts["duration"] + 0.01  # the file's duration may also cover audio
        checked += 1
    assert checked >= 25


def test_keyframe_interval_counts_a_late_first_keyframe(make_clip) -> None:
    """A clip cut from a longer recording can start mid-GOP; its first seconds have no keyframe nearby."""
    import dataclasses

    from quadvault_dali.sampling import plan_samples

    info, index = probe_video(make_clip("probe_kf.mp4", duration_s=6.0, keyframe_interval_s=1.0), with_index=True)
    assert info.max_keyframe_interval_s == pytest.approx(1.0, abs=0.05)
    late = dataclasses.replace(info, keyframe_times=(4.0, 5.0))
    assert late.max_keyframe_interval_s == pytest.approx(4.0)
    index.is_key[:] = np.isclose(index.pts, 4.0) | np.isclose(index.pts, 5.0)
    assert plan_samples(late, index, mode="auto").mode == "exact"  # keyframes would miss seconds 0-2


def test_pyav19_open_fallback_survives_a_concurrent_first_open(make_clip, monkeypatch: pytest.MonkeyPatch) -> None:
    """PyAV 19 has no ``metadata_errors``. Prepare threads open files at once: one whose call still passed the
    argument must retry even after another thread has already emptied the module's choice (it used to
    re-raise the TypeError, failing that video)."""
    import av

    import quadvault_dali.probe as probe

    path = make_clip("pyav19_open.mp4", duration_s=1.0)
    real_open = av.open

    def pyav19_open(source, **kw):  # type: ignore[no-untyped-def]
        if "metadata_errors" in kw:
            probe._METADATA_ERRORS_KW = {}  # another thread's fallback ran meanwhile
            raise TypeError("open() got an unexpected keyword argument 'metadata_errors'")
        return real_open(source, **kw)

    monkeypatch.setattr(probe, "_METADATA_ERRORS_KW", {"metadata_errors": "ignore"})
    monkeypatch.setattr(probe.av, "open", pyav19_open)
    probe.open_container(path).close()


def test_a_turned_matroska_file_is_shown_upright(make_clip) -> None:
    """FFmpeg reads Matroska's rotation into the stream's side data, which PyAV does not show: the prober
    reads it from the first picture (it said 0, and both backends returned the pictures sideways)."""
    from quadvault_dali.sampling import create_sampler
    from quadvault_dali.synth import read_stamp

    path = make_clip("probe_rot90.mkv", codec="h264", width=160, height=96, fps=30, duration_s=3.0,
                     rotation=90, source_id=3)
    info = probe_video(path)
    assert info.rotation == 90 and (info.width, info.height) == (160, 96)  # stored 96 wide, 160 high
    from quadvault_dali.probe import _may_be_turned  # only a file whose track has a Projection is decoded

    plain = make_clip("probe_plain.mkv", codec="hevc", width=160, height=96, fps=30, duration_s=2.0, source_id=3)
    assert _may_be_turned(path) and not _may_be_turned(plain) and probe_video(plain).rotation == 0
    assert (info.coded_width, info.coded_height) == (96, 160)
    frames, times, _ = create_sampler("cpu", mode="exact", size=96, square=False).sample_video(path)
    assert frames.shape[2:] == (96, 160)
    for frame, t in zip(frames, times):
        stamp = read_stamp(frame.permute(1, 2, 0).numpy())
        assert stamp is not None and abs(stamp.time_s - t) <= 0.006


def test_a_matroska_file_starting_late_lasts_as_long_as_its_pictures(make_clip, tmp_path) -> None:
    """Matroska's duration is its end time: 8.5 s for 6 s of pictures starting at 2.5 s, which made ``auto``
    see a 2.5-s keyframe gap at the end and sample exactly."""
    import av

    source = make_clip("probe_k08.mkv", codec="h264", width=128, height=96, fps=30, duration_s=6.0,
                       keyframe_interval_s=0.8, source_id=3, x264_preset="ultrafast")
    late = tmp_path / "late.mkv"
    with av.open(str(source)) as inp, av.open(str(late), "w") as out:
        copy = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None:
                continue
            packet.pts += 2500
            packet.dts += 2500
            packet.stream = copy
            out.mux(packet)
    info = probe_video(late)
    assert info.start_time_s == pytest.approx(2.5) and info.duration_s == pytest.approx(6.0, abs=0.04)
    assert info.max_keyframe_interval_s < 1.0


#: FFmpeg's h264_metadata inserting a display-orientation SEI of 90 degrees
ORIENTATION_SEI_BSF = "h264_metadata=display_orientation=insert:rotate=90"


def _sei_turned(make_clip, out: Path) -> tuple[Path, Path, int]:  # type: ignore[no-untyped-def]
    """An upright H.264 clip, its video in ``out`` with a display-orientation SEI added, and the clockwise angle
    FFmpeg turns that copy's pictures by."""
    import av

    source = make_clip("probe_sei_src.mp4", codec="h264", width=160, height=96, fps=30, duration_s=2.0, source_id=2)
    path = remux_video(source, out, bsf=ORIENTATION_SEI_BSF)
    with av.open(str(path)) as c:
        ffmpeg_turn = -int(next(c.decode(video=0)).rotation) % 360  # FFmpeg's angle is counter-clockwise
    assert ffmpeg_turn in (90, 270)
    return source, path, ffmpeg_turn


def test_a_display_orientation_inside_the_h264_stream_turns_an_mp4(make_clip, tmp_path) -> None:
    """As in Matroska, an MP4 whose rotation is only in the stream's SEI: FFmpeg turns its pictures, so the
    probe does (its first packet's leading units read at their index position), and sampling turns them."""
    import av

    from quadvault_dali._packet_heads import orientation_sei_first as _orientation_sei_first
    from quadvault_dali.sampling import create_sampler

    source, path, ffmpeg_turn = _sei_turned(make_clip, tmp_path / "sei_turned.mp4")
    info = probe_video(path)
    assert info.rotation == ffmpeg_turn and (info.width, info.height) == (96, 160)
    assert probe_video(source).rotation == 0
    sampler = create_sampler("cpu", size=48, square=False)
    frames, _, _ = sampler.sample_video(path)
    upright, _, _ = sampler.sample_video(source)
    assert frames.shape[-2:] == (80, 48) and upright.shape[-2:] == (48, 80)  # turned: the short side 48
    turned = {k: (frames[0].float() - torch.rot90(upright[0], k, dims=(1, 2)).float()).abs().mean().item()
              for k in (1, 3)}
    assert turned[4 - ffmpeg_turn // 90] < 4.0 < turned[ffmpeg_turn // 90], turned  # clockwise, as FFmpeg turns it
    # the same units length-prefixed, as phones' MP4s carry them, and cut off inside the slice
    with av.open(str(path)) as c:
        annex_b = bytes(next(c.demux(video=0)))
    units = [u for u in annex_b.split(b"\0\0\1") if u.strip(b"\0")]
    framed = b"".join(len(u.rstrip(b"\0")).to_bytes(4, "big") + u.rstrip(b"\0") for u in units)
    assert _orientation_sei_first(framed, "h264", 4) and _orientation_sei_first(framed[:-10], "h264", 4)
    plain = b"".join(len(u.rstrip(b"\0")).to_bytes(4, "big") + u.rstrip(b"\0") for u in units
                     if u[0] & 0x1F != 6)
    assert not _orientation_sei_first(plain, "h264", 4)
    # a first unit of 256-511 bytes: its 4-byte length reads as a start code (00 00 01 xx), and was taken for one
    user_data = bytes([0x06, 5, 0xFF, 300 - 255]) + b"\x11" * 16 + b"\x41" * 284 + b"\x80"
    assert 256 <= len(user_data) < 512
    framed_300 = len(user_data).to_bytes(4, "big") + user_data + framed
    assert framed_300.startswith(b"\0\0\1") and _orientation_sei_first(framed_300, "h264", 4)
    # an SEI unit cut off by the bytes read: a picture is decoded to be sure (``cut``)
    assert _orientation_sei_first(framed_300[:200], "h264", 4, cut=True)
    assert not _orientation_sei_first(framed_300[:200], "h264", 4)


def test_a_display_orientation_inside_the_h264_stream_turns_a_matroska_file(make_clip, tmp_path) -> None:
    """Some streams carry their rotation in a display-orientation SEI message and none in the container:
    FFmpeg turns the decoded pictures all the same. The first packet is read for it (no picture decoded
    unless it is there)."""
    from quadvault_dali.probe import _turned_in_stream

    source, path, ffmpeg_turn = _sei_turned(make_clip, tmp_path / "sei_turned.mkv")
    info = probe_video(path)
    assert _turned_in_stream(path, 0, "h264") and info.rotation == ffmpeg_turn
    assert (info.width, info.height) == (96, 160)
    assert not _turned_in_stream(source, 0, "h264")


def _probed_both_ways(files: list[Path], monkeypatch: pytest.MonkeyPatch) -> dict[Path, object]:
    """Each file's facts, keyframes and errors after quick opens, compared with those after full ones."""
    import quadvault_dali.probe as probe

    def probed(path: Path) -> object:
        try:
            info, index = probe.probe_video(path, with_index=True)
        except Exception as exc:  # noqa: BLE001 - the error is what is compared
            return type(exc).__name__, str(exc)
        return info.to_dict(), index.pts.tolist(), index.is_key.tolist()

    quick = {p: probed(p) for p in files}
    with monkeypatch.context() as patched:
        patched.setattr(probe, "QUICK_MP4_PROBE", False)
        for path in files:
            assert probed(path) == quick[path], path.name
    return quick


def test_a_quick_open_probes_what_a_full_one_does(corpus: Path, make_clip, monkeypatch: pytest.MonkeyPatch) -> None:
    """``open_container(quick=True)``: FFmpeg's probing cut short for plain MP4/MOV, the H.264 format, size and
    matrix read from the SPS. Every fact, every keyframe, every error the same as after FFmpeg's full probing, on
    the corpus's real footage (phones, GoPro, a drone, HDR, rotated, broken files) and generated files."""
    files = [p for p in sorted(corpus.rglob("*")) if p.suffix.lower() in (".mp4", ".mov", ".m4v")]
    files += [make_clip("quick_bt709_audio.mp4", codec="h264", width=160, height=96, duration_s=2.0,
                        color_matrix="bt709", audio=True),
              make_clip("quick_rot90.mov", codec="h264", width=160, height=96, duration_s=2.0, rotation=90),
              make_clip("quick_hevc.mp4", codec="hevc", width=160, height=96, duration_s=2.0)]
    assert len(files) > 20
    _probed_both_ways(files, monkeypatch)


def test_a_quick_open_probes_what_a_full_one_does_where_sps_and_track_disagree(
        header_variants: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on H.264 whose SPS and track header disagree (``_media.h264_header_variants``): a track header that
    crops the SPS's picture further within its last macroblocks wins, one that does not, or an SPS cropped from
    the left, does not (184 wide, not the track's 192)."""
    quick = _probed_both_ways(header_variants, monkeypatch)
    sizes = {p.name: (quick[p][0]["width"], quick[p][0]["height"]) for p in header_variants}  # type: ignore[index]
    assert sizes["stsd_smaller_same_macroblocks.mp4"] == (180, 100) and sizes["stsd_smaller.mp4"] == (192, 108)
    assert sizes["sps_crop_left.mp4"] == sizes["stsd_smaller_sps_crop_left.mp4"] == (184, 108)


def test_a_packet_head_is_read_to_its_first_slice(tmp_path: Path) -> None:
    """``_packet_heads.packet_head``: 4 KiB where the first slice starts within them (an x264 or camera head), more (up to
    64 KiB) where an SEI or parameter set before it is longer, so what the prober reads there is whole."""
    from quadvault_dali._packet_heads import packet_head

    def unit(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    slice_ = unit(b"\x65" + bytes(200_000))  # an IDR slice of a 1080p keyframe
    short = unit(b"\x67\x64\x00\x28") + unit(b"\x06\x05\x10" + bytes(16)) + slice_
    long_sei = unit(b"\x06\x2f\x02\x00\x00" + bytes(10_000) + b"\x80") + slice_
    path = tmp_path / "packets.bin"
    path.write_bytes(b"junk" + short + long_sei)
    assert packet_head(path, 4, len(short), "h264", 4) == short[:4096]
    head = packet_head(path, 4 + len(short), len(long_sei), "h264", 4)
    assert len(head) == 64 << 10 and head == long_sei[: 64 << 10]
    assert packet_head(path, 4, 100, "h264", 4) == short[:100]  # never past the packet


def test_the_sps_facts_a_quick_open_fills_in_follow_ffmpegs_decoder() -> None:
    """``codec_setup``'s rules one by one, for the cases no encoder here can write: FFmpeg reads an aspect with a
    zero height as N:1 and drops one that squeezes a side to nothing; a code point it has no name for becomes
    "unspecified"; the container's colour stays; a track header smaller within the last macroblocks wins."""
    from fractions import Fraction

    from quadvault_dali.probe import _NAMED_COLOURS, _container_cropped, _sps_aspect, _sps_or
    from quadvault_dali.sampling._uncrop import Crop

    assert _sps_aspect((5, 0), 192, 108) == Fraction(5, 1) and _sps_aspect((1, 0), 192, 108) == 1  # 5:1, 1:1
    assert _sps_aspect((0, 0), 192, 108) is None and _sps_aspect(None, 192, 108) is None
    assert _sps_aspect((108, 1), 192, 108) == 108 and _sps_aspect((109, 1), 192, 108) is None
    assert _sps_aspect((1, 192), 192, 108) == Fraction(1, 192) and _sps_aspect((1, 193), 192, 108) is None
    primaries, transfers, matrices = _NAMED_COLOURS
    assert _sps_or(2, 9, primaries) == 9 and _sps_or(2, 3, primaries) == 2 and _sps_or(1, 9, primaries) == 1
    assert _sps_or(2, None, transfers) == 2 and _sps_or(2, 18, transfers) == 18 and _sps_or(2, 0, matrices) == 0
    padded = Crop(864, 480, 0, 0, 0, 0)
    assert _container_cropped(854, 480, padded, 864, 480) == (854, 480)  # GoPro Karma
    assert _container_cropped(848, 480, padded, 864, 480) == (864, 480)  # a macroblock less: the SPS's
    assert _container_cropped(880, 480, padded, 864, 480) == (864, 480)  # larger: the SPS's
    assert _container_cropped(180, 100, Crop(192, 112, 8, 0, 0, 4), 184, 108) == (184, 108)  # cropped from the left


def test_a_stream_without_decode_times_starts_where_its_index_counts_from(make_clip) -> None:
    """A 1-fps Matroska time-lapse whose packets carry no decode times and whose stream no start: FFmpeg set the
    start from the first packet with a decode time during the index pass, and the probe reported 6 s (the
    index, and the sampled times, count from the first packet, 0 s)."""
    path = make_clip("probe_timelapse.mkv", codec="h264", width=96, height=64, fps=1, keyframe_interval_s=4.0,
                     duration_s=8.0, x264_preset="ultrafast")
    info, index = probe_video(path, with_index=True)
    assert index.origin_ticks == 0 and index.pts.tolist() == [float(t) for t in range(8)]
    assert info.start_time_s == 0.0 and info.keyframe_times == (0.0, 4.0)


def test_a_relative_name_with_a_colon_is_a_file_not_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``quadvault probe "Alps: a.mp4"`` in the footage folder: FFmpeg took "Alps" for a protocol ("Protocol not
    found"). Paths are opened absolute, which FFmpeg never reads as a URL."""
    from quadvault_dali.synth import SynthSpec, make_video

    make_video(tmp_path / "Alps: a.mp4", SynthSpec(duration_s=2))
    monkeypatch.chdir(tmp_path)
    info = probe_video("Alps: a.mp4")
    assert info.codec == "h264" and info.keyframe_times == (0.0, 1.0)


def test_a_picture_larger_than_any_camera_writes_is_refused_at_the_probe(tmp_path: Path) -> None:
    """A 30-KB file whose header claimed 16384x8192 took ~2 GB per decode stream: four streams under a 4-GB
    limit were killed with every other video of the batch. Above 8192x8192 (NVDEC's own limit, beyond every
    8K camera) a video is refused before a frame is decoded; 8192x8192 itself is probed."""
    from fractions import Fraction

    import av

    def one_frame(path: Path, size: int) -> Path:
        with av.open(str(path), "w") as out:
            stream = out.add_stream("mjpeg", rate=1)
            stream.width, stream.height, stream.pix_fmt = size, size, "yuvj420p"
            frame = av.VideoFrame(size, size, "yuvj420p")
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.pts, frame.time_base = 0, Fraction(1, 1)
            out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        return path

    with pytest.raises(VideoOpenError, match=r"picture size 8208x8208 is larger than any camera's"):
        probe_video(one_frame(tmp_path / "huge.mkv", 8208))
    assert probe_video(one_frame(tmp_path / "eight_k.mkv", 8192)).width == 8192
