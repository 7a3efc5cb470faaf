"""MP4s cut without re-encoding: the edit list starts (or ends) inside a GOP and hides the pictures outside it.

Lossless cutters and ``ffmpeg -ss … -c copy`` write such files; FFmpeg plays them from the first shown
picture, decoding the hidden ones before it from their keyframe. The sampler must do the same: sample every
second from the first shown picture, never a hidden one, and never refuse a clip whose only keyframe is hidden.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Callable

import av
import numpy as np
import pytest
from click.testing import CliRunner

from quadvault_dali import probe
from quadvault_dali.cli.main import main as cli
from quadvault_dali.sampling import create_sampler
from quadvault_dali.synth import read_stamp
from test_remux import STAMP_TOL, _build, _decoded_stamps

FPS = 30


def _trim_start(src: Path, dst: Path, frames: int, options: dict[str, str] | None = None) -> Path:
    """``src`` remuxed with its times moved ``frames`` pictures earlier: FFmpeg's MP4 muxer writes an edit
    list that hides those pictures, the first GOP's keyframe among them (what ``ffmpeg -ss -c copy`` does)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options=options or {}) as out:
        source = inp.streams.video[0]
        copy = out.add_stream_from_template(source)
        step = int(round(1 / (source.time_base * FPS)))
        for packet in inp.demux(source):
            if packet.dts is None:
                continue
            packet.pts -= frames * step
            packet.dts -= frames * step
            packet.stream = copy
            out.mux(packet)
    return dst


def _shorten_edit(src: Path, dst: Path, seconds: float) -> Path:
    """``src`` with its one edit ``seconds`` shorter: the last pictures hidden too."""
    data = bytearray(src.read_bytes())
    elst = data.index(b"elst") + 4
    assert data[elst] == 0, "a version-0 edit list, as FFmpeg writes it"
    mvhd = data.index(b"mvhd") + 4
    movie_scale = struct.unpack_from(">I", data, mvhd + 12)[0]
    duration = struct.unpack_from(">I", data, elst + 8)[0]
    struct.pack_into(">I", data, elst + 8, duration - int(seconds * movie_scale))
    dst.write_bytes(bytes(data))
    return dst


def _shown_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [round(float(f.pts * f.time_base), 6) for f in c.decode(video=0)]


@pytest.fixture(scope="module", params=["h264", "hevc"])
def codec(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _source(make_clip: Callable[..., Path], codec: str, gop_s: float) -> Path:
    return make_clip(f"trim_src_{codec}_{gop_s:g}.mp4", codec=codec, width=128, height=96, fps=FPS,
                     duration_s=6.0, keyframe_interval_s=gop_s, source_id=5)


@pytest.mark.parametrize("mode", ["exact", "keyframe", "auto"])
def test_a_clip_trimmed_inside_its_only_gop_samples_every_second(make_clip: Callable[..., Path], tmp_path: Path,
                                                                 codec: str, mode: str) -> None:
    """One GOP, its keyframe hidden: FFmpeg plays 168 pictures; it used to probe as 'no keyframes'."""
    path = _trim_start(_source(make_clip, codec, 10.0), tmp_path / f"one_gop_{codec}.mp4", 12)
    assert len(_shown_times(path)) == 168
    info = probe.probe_video(path)
    assert info.keyframe_times == () and info.frame_count == 168
    assert info.duration_s == pytest.approx(5.6, abs=0.04)
    clips, plan, _, _ = _build(path, mode)
    assert plan.mode == "exact"  # type: ignore[attr-defined]  # nothing shown to sample keyframes from
    times = [t for c in clips for t in c.times]
    assert times == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], abs=1e-6)
    stamps = [s for c in clips for s in _decoded_stamps(c, 0)]
    for t, s in zip(times, stamps):  # the picture shown at t was encoded 0.4 s into the source
        assert s is not None and abs(s - (t + 0.4)) <= STAMP_TOL, (t, s)
    _, cpu_times, outcome = create_sampler("cpu", fps=1.0, mode=mode, size=32).sample_video(path)
    assert cpu_times == pytest.approx(times, abs=1e-6) and outcome.error is None


def test_probe_reports_a_clip_showing_no_keyframe_as_one_gap(make_clip: Callable[..., Path], tmp_path: Path) -> None:
    path = _trim_start(_source(make_clip, "h264", 10.0), tmp_path / "one_gop.mp4", 12)
    result = CliRunner().invoke(cli, ["probe", "--json", str(path)])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.splitlines()[0])  # strict JSON: no Infinity
    assert row["status"] == "ok" and row["keyframe_count"] == 0 and row["frame_count"] == 168
    assert row["max_keyframe_interval_s"] == pytest.approx(row["duration_s"])


def test_a_trimmed_clip_samples_its_first_second_and_only_shown_keyframes(make_clip: Callable[..., Path],
                                                                         tmp_path: Path, codec: str) -> None:
    path = _trim_start(_source(make_clip, codec, 1.0), tmp_path / f"gops_{codec}.mp4", 12)
    shown = _shown_times(path)
    info, index = probe.probe_video(path, with_index=True)
    assert info.keyframe_times == pytest.approx([0.6, 1.6, 2.6, 3.6, 4.6], abs=1e-6)
    assert index.keyframe_times[0] == pytest.approx(-0.4, abs=1e-6)  # decoding starts there
    assert sorted(np.round(index.pts[index.shown], 6)) == pytest.approx(shown, abs=1e-6)

    exact, _, _, _ = _build(path, "exact", fps=2.0)
    times = [t for c in exact for t in c.times]
    assert times == pytest.approx(np.arange(12) / 2.0, abs=1e-6)  # 0.0 is shown: no longer the keyframe at 0.6
    for t, s in zip(times, [s for c in exact for s in _decoded_stamps(c, 0)]):
        assert s is not None and abs(s - (t + 0.4)) <= STAMP_TOL, (t, s)

    keyed, _, _, _ = _build(path, "keyframe")
    assert [t for c in keyed for t in c.times] == pytest.approx([0.6, 1.6, 2.6, 3.6, 4.6], abs=1e-6)
    for c in keyed:
        for t, s in zip(c.times, _decoded_stamps(c, 0)):
            assert s is not None and abs(s - (t + 0.4)) <= STAMP_TOL, (t, s)


def test_pictures_hidden_after_the_edit_are_never_sampled(make_clip: Callable[..., Path], tmp_path: Path) -> None:
    trimmed = _trim_start(_source(make_clip, "h264", 1.0), tmp_path / "start.mp4", 12)
    path = _shorten_edit(trimmed, tmp_path / "both_ends.mp4", 1.0)
    shown = _shown_times(path)
    assert len(shown) == 138
    info, index = probe.probe_video(path, with_index=True)
    assert info.duration_s == pytest.approx(4.6, abs=0.04) and info.frame_count == 138
    assert float(index.pts.max()) == pytest.approx(shown[-1], abs=1e-6)
    assert info.keyframe_times == pytest.approx([0.6, 1.6, 2.6, 3.6], abs=1e-6)
    frames, times, outcome = create_sampler("cpu", fps=1.0, mode="exact", size=96, square=False).sample_video(path)
    assert times == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0], abs=1e-6) and outcome.error is None
    for frame, t in zip(frames, times):
        stamp = read_stamp(frame.permute(1, 2, 0).numpy())
        assert stamp is not None and abs(stamp.time_s - (t + 0.4)) <= STAMP_TOL


def _shown_keyframes(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [round(float(f.pts * f.time_base), 6) for f in c.decode(video=0) if f.key_frame]


def _stamped(frames: object, times: list[float]) -> list[tuple[float, float | None]]:
    out = []
    for frame, t in zip(frames, times):  # type: ignore[call-overload]
        stamp = read_stamp(frame.permute(1, 2, 0).numpy())
        out.append((t, stamp.time_s if stamp else None))
    return out


@pytest.mark.parametrize(("codec_name", "frames"), [("h264", 40), ("hevc", 29), ("hevc", 40), ("h264", 30)])
def test_trims_into_later_gops_and_onto_leading_pictures(make_clip: Callable[..., Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, codec_name: str,
                                                         frames: int) -> None:
    """Found by review: an edit starting in the second GOP makes FFmpeg leave the first out of its index, so
    its rows no longer line up with the file's composition offsets (keyframe times came out up to 3 frames
    late with B-frames); an edit starting on an open GOP's leading picture (x265 writes CRA keyframes, hevc
    29) shows a picture that decodes from the GOP before (t=0 came from the keyframe after it)."""
    from quadvault_dali.sampling import _cpu

    path = _trim_start(_source(make_clip, codec_name, 1.0), tmp_path / f"{codec_name}_{frames}.mp4", frames)
    cut = frames / FPS
    info = probe.probe_video(path)
    assert list(info.keyframe_times) == pytest.approx(_shown_keyframes(path), abs=1e-6)
    assert info.frame_count == len(_shown_times(path))
    runs = create_sampler("cpu", fps=2.0, mode="exact", size=96, square=False)
    keyed = create_sampler("cpu", fps=1.0, mode="keyframe", size=96, square=False)
    results = [runs.sample_video(path), keyed.sample_video(path)]
    monkeypatch.setattr(_cpu, "MAX_GOP_BYTES_IN_MEMORY", 0)  # the in-order decode of huge GOPs, for comparison
    results.append(runs.sample_video(path))
    for sampled, times, _ in results:
        for t, stamp in _stamped(sampled, times):
            assert stamp is not None and abs(stamp - (t + cut)) <= STAMP_TOL, (t, stamp)
    assert results[0][1] == results[2][1] and results[0][1][0] == 0.0


@pytest.mark.parametrize("frames", [40, 45])
def test_trims_into_later_gops_with_negative_composition_offsets(make_clip: Callable[..., Path], tmp_path: Path,
                                                                 frames: int) -> None:
    """Phones and FFmpeg's ``negative_cts_offsets`` write negative ``ctts``: the sample positions that match
    FFmpeg's rows to their offsets must be read for them too (keyframe times were 1-3 frames late, every
    keyframe-mode sample labelled with another picture's time, and exact runs refused)."""
    path = _trim_start(_source(make_clip, "h264", 1.0), tmp_path / f"negcts_{frames}.mp4", frames,
                       {"movflags": "negative_cts_offsets"})
    assert b"ctts" in path.read_bytes()
    info, index = probe.probe_video(path, with_index=True)
    assert list(info.keyframe_times) == pytest.approx(_shown_keyframes(path), abs=1e-6)
    assert not index.hides_inside
    cut = frames / FPS
    for mode in ("keyframe", "exact"):
        clips, _, _, _ = _build(path, mode, fps=2.0)
        for c in clips:
            for t, s in zip(c.times, _decoded_stamps(c, 0)):
                assert s is not None and abs(s - (t + cut)) <= STAMP_TOL, (mode, t, s)


def test_a_real_phone_clip_edited_into_its_second_gop(corpus: Path, tmp_path: Path) -> None:
    """androidx's ``sample_edit_list.mp4`` (negative ``ctts``, sample groups) with its edit moved 0.8 s in:
    FFmpeg drops the first GOP from its index; its rows are matched to the offsets by position."""
    data = bytearray((corpus / "androidx+media/libraries/test_data/src/test/assets/media/mp4/sample_edit_list.mp4")
                     .read_bytes())
    elst = data.index(b"elst") + 4
    duration, media_time = struct.unpack_from(">Ii", data, elst + 8)
    with av.open(io.BytesIO(bytes(data))) as c:
        scale = c.streams.video[0].time_base.denominator
    mvhd = data.index(b"mvhd") + 4
    movie_scale = struct.unpack_from(">I", data, mvhd + 12)[0]
    struct.pack_into(">Ii", data, elst + 8, duration - int(0.8 * movie_scale), media_time + int(0.8 * scale))
    path = tmp_path / "later_gop.mp4"
    path.write_bytes(bytes(data))
    info, index = probe.probe_video(path, with_index=True)
    assert list(info.keyframe_times) == pytest.approx(_shown_keyframes(path), abs=1e-6) and not index.hides_inside
    assert info.frame_count == len(_shown_times(path))
    clips, _, _, _ = _build(path, "exact", fps=2.0)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        shown = {round(float(f.pts * stream.time_base), 6): f.to_ndarray(format="rgb24") for f in c.decode(stream)}
    for clip in clips:
        with av.open(io.BytesIO(clip.data)) as c:
            decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        for i, t in zip(clip.frames, clip.times):
            assert np.array_equal(decoded[i], shown[round(t, 6)]), t


def test_frame_count_is_what_ffmpeg_shows(make_clip: Callable[..., Path], tmp_path: Path) -> None:
    """An edit starting exactly on a keyframe makes FFmpeg drop the samples before it from its index; one
    ending early hides the last ones: the header's sample count counts both."""
    source = _source(make_clip, "h264", 1.0)
    on_key = _trim_start(source, tmp_path / "on_key.mp4", 30)
    end_only = _shorten_edit(_trim_start(source, tmp_path / "plain.mp4", 0), tmp_path / "end_only.mp4", 1.0)
    for path in (on_key, end_only):
        assert probe.probe_video(path).frame_count == len(_shown_times(path)) == 150, path.name


def _set_edits(src: Path, dst: Path, edits: list[tuple[int, int]]) -> Path:
    """``src`` (one track, ``moov`` after ``mdat``, as PyAV writes it) with its edit list replaced by ``edits``
    (duration in movie ticks, media time in track ticks; normal rate)."""
    data = bytearray(src.read_bytes())
    elst = data.index(b"elst") - 4
    old_size = struct.unpack_from(">I", data, elst)[0]
    body = struct.pack(">II", 0, len(edits)) + b"".join(struct.pack(">Iii", d, m, 0x10000) for d, m in edits)
    new = struct.pack(">I4s", 8 + len(body), b"elst") + body
    grow = len(new) - old_size
    for parent in (b"moov", b"trak", b"edts"):
        at = data.index(parent) - 4
        assert at < elst
        struct.pack_into(">I", data, at, struct.unpack_from(">I", data, at)[0] + grow)
    assert data.index(b"mdat") < data.index(b"moov"), "chunk offsets would move"
    data[elst:elst + old_size] = new
    dst.write_bytes(bytes(data))
    return dst


def test_two_edits_never_sample_what_the_cut_hides(make_clip: Callable[..., Path], tmp_path: Path) -> None:
    """Edits showing 0.4-1.4 s, then 2.5-4.5 s of the source: FFmpeg gives the hidden pictures after the first
    edit the times of the second edit's shown ones, so runs cut from the stream returned source 1.4 s at
    t=1.0 (never shown). Exact mode decodes such a file in order (the gpu backend hands it to the CPU)."""
    from quadvault_dali.errors import DecodeError

    source = make_clip("trim_src_h264_nob.mp4", codec="h264", width=128, height=96, fps=FPS, duration_s=6.0,
                       keyframe_interval_s=1.0, source_id=5, x264_preset="ultrafast")
    plain = _trim_start(source, tmp_path / "plain.mp4", 0)
    with av.open(str(plain)) as c:
        scale = c.streams.video[0].time_base.denominator
    path = _set_edits(plain, tmp_path / "two_edits.mp4", [(1000, int(0.4 * scale)), (2000, int(2.5 * scale))])
    shown = _shown_times(path)
    info, index = probe.probe_video(path, with_index=True)
    assert index.hides_inside and info.frame_count == len(shown) == 90
    with pytest.raises(DecodeError, match="hides pictures between the ones it shows"):
        _build(path, "exact", fps=3.0)
    frames, times, outcome = create_sampler("cpu", fps=3.0, mode="exact", size=96, square=False).sample_video(path)
    assert outcome.error is None and times == pytest.approx(np.arange(9) / 3.0, abs=1e-6)
    for t, stamp in _stamped(frames, times):  # 0.4 s in before 1 s, then 2.5 s in
        assert stamp is not None and abs(stamp - (t + (0.4 if t < 1.0 - 1e-6 else 1.5))) <= STAMP_TOL, (t, stamp)


def test_a_real_edit_listed_clip_samples_from_its_first_shown_picture(corpus: Path) -> None:
    """androidx's ``sample_edit_list.mp4`` (HEVC, turned 90°) hides 8 pictures before its first shown one:
    exact sampling used to start at the keyframe 0.6 s in, losing the seconds before it."""
    path = corpus / "androidx+media/libraries/test_data/src/test/assets/media/mp4/sample_edit_list.mp4"
    info, index = probe.probe_video(path, with_index=True)
    assert int(np.count_nonzero(~index.shown)) == 8 and info.frame_count == 77
    assert not info.is_vfr  # its shown pictures are 33-35 ms apart; the hidden ones before zero made it "variable"
    assert info.keyframe_times[0] == pytest.approx(0.6, abs=1e-6)
    clips, _, _, _ = _build(path, "exact", fps=2.0)
    times = [t for c in clips for t in c.times]
    assert times[:3] == pytest.approx([0.0, 0.5, 1.0], abs=1e-6) and len(times) == 6
    _, cpu_times, _ = create_sampler("cpu", fps=2.0, mode="exact", size=32).sample_video(path)
    assert cpu_times == pytest.approx(times, abs=1e-6)
    with av.open(str(path)) as c:  # the first clip's first wanted picture is the one FFmpeg shows first
        first_shown = next(c.decode(video=0)).to_ndarray(format="rgb24")
    with av.open(io.BytesIO(clips[0].data)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert np.array_equal(decoded[int(clips[0].frames[0])], first_shown)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["exact", "auto"])
def test_nvdec_samples_trimmed_clips_like_the_cpu_backend(make_clip: Callable[..., Path], tmp_path: Path,
                                                          mode: str) -> None:
    """The hidden lead-in travels in the clips NVDEC decodes; the frames are the shown ones (256x160: NVDEC's
    HEVC needs 144 lines)."""
    paths = []
    for codec_name in ("h264", "hevc"):
        for gop_s in (1.0, 10.0):
            src = make_clip(f"trim_nvdec_{codec_name}_{gop_s:g}.mp4", codec=codec_name, width=256, height=160,
                            fps=FPS, duration_s=6.0, keyframe_interval_s=gop_s, source_id=6)
            paths.append(_trim_start(src, tmp_path / f"{codec_name}_{gop_s:g}.mp4", 12))
    gpu = create_sampler("gpu", fps=2.0, mode=mode, size=64)
    cpu = create_sampler("cpu", fps=2.0, mode=mode, size=64)
    for path in paths:
        frames, times, outcome = gpu.sample_video(path)
        assert outcome.error is None and outcome.decoder == "nvdec", (path.name, outcome.error, outcome.decoder)
        assert times == pytest.approx(cpu.sample_video(path)[1], abs=1e-6), path.name
        if mode == "exact":
            assert times[0] == 0.0
        for frame, t in zip(frames.cpu(), times):
            stamp = read_stamp(frame.permute(1, 2, 0).numpy())
            assert stamp is not None and abs(stamp.time_s - (t + 0.4)) <= STAMP_TOL, (path.name, t, stamp)


def test_pictures_hidden_at_the_end_still_decode_the_shown_ones_before_them(make_clip: Callable[..., Path],
                                                                            tmp_path: Path) -> None:
    """An edit ending 0.07 s early hides the last P-frame, which shown B-frames before it refer to (iPhone and
    Android files end so). It is not in the index, so runs read from the index lost it and those B-frames
    decoded wrong: such files' runs are demuxed (``PacketIndex.hides_end``)."""
    path = _shorten_edit(_trim_start(_source(make_clip, "h264", 1.0), tmp_path / "plain.mp4", 0),
                         tmp_path / "end_hidden.mp4", 0.07)
    _, index = probe.probe_video(path, with_index=True)
    assert index.hides_end and not index.hides_inside
    clips, plan, _, _ = _build(path, "exact", fps=30.0, max_frames=26)
    times = [t for c in clips for t in c.times]
    assert len(times) == len(_shown_times(path))
    for t, s in zip(times, [s for c in clips for s in _decoded_stamps(c, 0)]):
        assert s is not None and abs(s - t) <= STAMP_TOL, (t, s)
