"""Reels from generated footage whose frames carry their time and origin: content, timing, geometry, CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from quadvault_dali.cli.main import main as cli
from quadvault_dali.errors import DecodeError, OutputError, QuadvaultError
from quadvault_dali.probe import probe_video
from quadvault_dali.reel import (EmptySelectionError, ReelOptions, letterbox, load_scores, make_reel, prepare_reel,
                                 read_sidecar, sidecar_path)
from quadvault_dali.scan.schema import SCHEMA_VERSION, ModelRef, ScanMetadata, schema_with_metadata, video_id
from quadvault_dali.synth import SynthSpec, make_broken, make_video, read_stamp

W, H = 320, 180  # reel size: sources' stamps stay readable after letterboxing

# name -> (spec, seconds of "normal" before the 4 s highlight, highlight score)
SOURCES = {
    "plain 30fps.mp4": (dict(fps=30, source_id=1), 2, 0.95),
    "rotated 'q' ü 24fps.mp4": (dict(fps=24, source_id=2, width=180, height=320, rotation=90), 5, 0.93),
    "hevc 60fps.mp4": (dict(fps=60, source_id=3, codec="hevc", width=640, height=360), 1, 0.91),
    "vp9 25fps.webm": (dict(fps=25, source_id=4, codec="vp9", audio=False), 4, 0.89),
}


def _spec(kw: dict, before: int) -> SynthSpec:
    base = dict(width=W, height=H, duration_s=10.0, stamp=True,
                segments=(("normal", float(before)), ("highlight", 4.0), ("normal", float(6 - before))))
    return SynthSpec(**{**base, **kw})  # type: ignore[arg-type]


def write_scan(out: Path, rows: list[tuple[Path, list[float]]], broken: list[Path] = (), *,
               shard: str = "part-00000.parquet", scanned_at: datetime | None = None,
               model: ModelRef = ModelRef("test", "f" * 16)) -> Path:
    """A scan folder in the schema of quadvault_dali.scan.schema, one shard pair, 1 score per second."""
    models = (model,)
    sec_rows, vid_rows = [], []
    now = scanned_at or datetime.now(timezone.utc)
    for path, scores in rows:
        info = probe_video(path)
        st = path.stat()
        vid = video_id(str(path), st.st_size, st.st_mtime_ns)
        for t, s in enumerate(scores):
            sec_rows.append(dict(video_id=vid, path=str(path), timestamp_s=float(t), score=s, model_scores=[s]))
        arr = np.asarray(scores)
        vid_rows.append(dict(video_id=vid, path=str(path), size_bytes=st.st_size, mtime_ns=st.st_mtime_ns,
                             duration_s=info.duration_s, fps=info.avg_fps, codec=info.codec, width=info.width,
                             height=info.height, rotation=info.rotation, sampling_mode="exact",
                             frames_scored=len(scores), bytes_read=st.st_size, score_mean=float(arr.mean()),
                             score_max=float(arr.max()), score_top3_mean=float(np.sort(arr)[-3:].mean()),
                             frac_above_threshold=float((arr >= 0.7).mean()), model_means=[float(arr.mean())],
                             score=float(arr.mean()), best_timestamp_s=float(arr.argmax()),
                             is_highlight=bool(arr.mean() >= 0.7), status="ok", error_kind=None,
                             error_message=None, model_fingerprint=model.fingerprint, scanned_at=now,
                             scan_seconds=0.1))
    for path in broken:  # probed fine at scan time, scores high, but the file is damaged now
        st = path.stat()
        vid = video_id(str(path), st.st_size, st.st_mtime_ns)
        sec_rows += [dict(video_id=vid, path=str(path), timestamp_s=float(t), score=0.99, model_scores=[0.99])
                     for t in range(10)]
        vid_rows.append({**vid_rows[0], "video_id": vid, "path": str(path), "duration_s": 10.0, "score": 0.99})
    for table, data in (("seconds", sec_rows), ("videos", vid_rows)):
        meta = ScanMetadata(SCHEMA_VERSION, table, models, 0.7, model.fingerprint)  # type: ignore[arg-type]
        (out / table).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(data, schema=schema_with_metadata(meta)), out / table / shard)
    return out


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reel lib ü")
    paths = {}
    for name, (kw, before, _) in SOURCES.items():
        paths[name] = make_video(root / name, _spec(kw, before))
    paths["sound.mp4"] = make_video(root / "sound.mp4", _spec(dict(source_id=5, audio=True), 3))
    paths["broken.mp4"] = make_broken(root / "broken.mp4", "truncated", source=paths["plain 30fps.mp4"])
    return paths


def _scores(before: int, high: float) -> list[float]:
    return [0.2] * before + [high] * 4 + [0.2] * (6 - before)


@pytest.fixture(scope="module")
def scan_dir(library: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [(library[name], _scores(before, high)) for name, (_, before, high) in SOURCES.items()]
    return write_scan(tmp_path_factory.mktemp("scan"), rows, broken=[library["broken.mp4"]])


@dataclass(frozen=True)
class StreamFacts:
    """What the tests read of a reel's video stream (PyAV 19 refuses stream attributes once it is closed)."""

    width: int
    height: int
    average_rate: Fraction


def decode_all(path: Path) -> tuple[list[np.ndarray], StreamFacts, float]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        duration = float(s.duration * s.time_base) if s.duration else float(c.duration / 1e6)
        return frames, StreamFacts(s.width, s.height, Fraction(s.average_rate)), duration


def stamp_of(picture: np.ndarray, src_w: int, src_h: int):
    """Reads the stamp from the source's region of the letterboxed reel frame."""
    box = letterbox(src_w, src_h, picture.shape[1], picture.shape[0])
    return read_stamp(picture[box.y: box.y + box.fit_h, box.x: box.x + box.fit_w])


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_reel_content_timing_geometry_and_sidecar(scan_dir: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture, device: str) -> None:
    """gpu: the same reel with its windows decoded on NVDEC (FFmpeg's CUDA hwaccel), frame for frame."""
    out = tmp_path / "best of 'summer' é.mp4"
    options = ReelOptions(width=W, height=H, fps=30, min_score=0.85, clip_seconds=4.0, fade_s=0.5, encoder="x264",
                          device=device)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="quadvault_dali"):
        result = make_reel(scan_dir, out, options)
    plan = result.prepared.plan
    assert result.render.decoders == (("nvdec",) if device == "gpu" else ("pyav",)) * len(plan.clips)
    # The broken file scored best but cannot be read: skipped with a warning, the reel made without it.
    assert any("broken.mp4" in m for m in result.prepared.skipped)
    assert "broken.mp4" in caplog.text
    names = [c.window.path.name for c in plan.clips]
    assert names == list(SOURCES)  # best first: 0.95, 0.93, 0.91, 0.89
    for clip, (_, before, _) in zip(plan.clips, SOURCES.values()):
        assert (clip.window.in_s, clip.window.out_s) == (before, before + 4)  # the highlight, not the start

    frames, stream, duration = decode_all(out)
    assert (stream.width, stream.height) == (W, H)
    assert float(stream.average_rate) == pytest.approx(30.0)
    expected_frames = 4 * 120 - 3 * 15
    assert plan.total_frames == expected_frames == len(frames)
    assert duration == pytest.approx(4 * 4.0 - 3 * 0.5, abs=1 / 30)

    for clip, (kw, _, _) in zip(plan.clips, SOURCES.values()):
        info = probe_video(clip.window.path)
        mid = clip.start_frame + clip.frames // 2
        stamp = stamp_of(frames[mid], info.width, info.height)
        assert stamp is not None, f"no stamp at the middle of clip {clip.position}"
        assert stamp.source_id == kw["source_id"]
        assert clip.window.in_s <= stamp.time_s < clip.window.out_s
        # Resampled by time: the source frame on screen at that moment.
        assert stamp.time_s == pytest.approx(clip.source_time(mid), abs=1.0 / kw["fps"] + 0.011)

    # The rotated portrait source is upright and letterboxed: black bars left and right.
    rot = plan.clips[1]
    box = letterbox(180, 320, W, H)
    assert (box.fit_w, box.fit_h) == (101, 180)
    middle = frames[rot.start_frame + rot.frames // 2]
    assert middle[:, : box.x - 2].max() < 30 and middle[:, box.x + box.fit_w + 2:].max() < 30

    rows = read_sidecar(tmp_path / "best of 'summer' é.mp4.clips.csv")
    assert [r["source_path"] for r in rows] == [str(c.window.path) for c in plan.clips]
    assert [float(r["reel_start_s"]) for r in rows] == pytest.approx([0.0, 3.5, 7.0, 10.5])
    assert [float(r["in_s"]) for r in rows] == [2.0, 5.0, 1.0, 4.0]
    assert [r["position"] for r in rows] == ["1", "2", "3", "4"]
    assert not list(tmp_path.glob(".*partial*"))


def test_min_score_duration_hard_cuts_and_other_fps(scan_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "short.mp4"
    options = ReelOptions(width=W, height=H, fps=24, min_score=0.9, max_duration_s=9.0, transitions=False,
                          encoder="x264")
    result = make_reel(scan_dir, out, options)
    plan = result.prepared.plan
    # ≥ 0.9: three sources (0.95, 0.93, 0.91); 9 s of 4 s hard-cut clips holds two.
    assert [c.window.path.name for c in plan.clips] == list(SOURCES)[:2]
    frames, stream, duration = decode_all(out)
    assert float(stream.average_rate) == pytest.approx(24.0)
    assert len(frames) == 2 * 96 and duration == pytest.approx(8.0, abs=1 / 24)
    # Hard cut: the last frame of clip 1 and the first of clip 2 come from their own sources.
    assert stamp_of(frames[95], W, H).source_id == 1
    assert stamp_of(frames[96], 180, 320).source_id == 2


def test_empty_selection_writes_nothing(scan_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "none.mp4"
    with pytest.raises(EmptySelectionError, match=r"no video scored ≥ 0.999.*the best was 0.9"):
        make_reel(scan_dir, out, ReelOptions(width=W, height=H, min_score=0.999))
    assert list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(cli, ["reel", str(scan_dir), str(out), "--min-score", "0.999"])
    assert result.exit_code == 1
    assert "Error: no video scored ≥ 0.999" in result.output and "the best was" in result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_dry_run_prints_the_plan_and_writes_nothing(scan_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.mp4"
    result = CliRunner().invoke(cli, ["reel", str(scan_dir), str(out), "--dry-run", "--top", "2",
                                      "--fps", "25", "--resolution", "320x180"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # the plan on stdout; warnings went to stderr
    assert "plain 30fps.mp4" in lines[1] and "0.950" in lines[1] and "2.00-   6.00s" in lines[1]
    # At 25 fps a 0.5 s fade is 12 whole frames (0.48 s): the plan lives on the output frame grid.
    assert "rotated 'q' ü 24fps.mp4" in lines[2] and "3.52-" in lines[2]
    assert "2 clip(s), 7.52 s at 25 fps, 0.48 s crossfades" in result.stdout
    assert "skipped:" in result.stdout and "broken.mp4" in result.stdout
    assert "Dry run: nothing encoded" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_cli_reel_from_highlights_json_with_sound(library: dict[str, Path], tmp_path: Path) -> None:
    import json

    doc = {"highlights": [
        {"path": str(library["sound.mp4"]), "score": 0.9, "best_second": 4.0, "duration_s": 10.0},
        {"path": str(library["plain 30fps.mp4"]), "score": 0.88, "best_second": 3.0}]}  # no duration: probed
    (tmp_path / "highlights.json").write_text(json.dumps(doc), encoding="utf-8")
    out = tmp_path / "sound reel.mp4"
    result = CliRunner().invoke(cli, ["reel", str(tmp_path / "highlights.json"), str(out), "--resolution",
                                      "320x180", "--audio", "keep", "--clip-seconds", "3", "--encoder", "x264"])
    assert result.exit_code == 0, result.output
    assert "Reel:" in result.output and "libx264" in result.output and "with sound" in result.output
    rows = read_sidecar(tmp_path / "sound reel.mp4.clips.csv")
    assert [(Path(r["source_path"]).name, r["in_s"], r["placed_by"]) for r in rows] == [
        ("sound.mp4", "3.000", "best-second"), ("plain 30fps.mp4", "2.000", "best-second")]
    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1
        audio = np.concatenate([f.to_ndarray() for f in c.decode(c.streams.audio[0])], axis=1)
    rate = 48000
    rms = lambda a, b: float(np.sqrt((audio[:, int(a * rate): int(b * rate)] ** 2).mean()))  # noqa: E731
    assert rms(0.5, 2.0) > 0.05  # the 440 Hz tone of sound.mp4 (RMS 0.14 mono, -3 dB when upmixed)
    assert rms(3.5, 5.0) < 0.01  # plain 30fps.mp4 has no sound: silence
    assert audio.shape[1] / rate == pytest.approx(5.5, abs=0.05)


def test_encoder_and_option_errors(scan_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(QuadvaultError, match="must be even"):
        ReelOptions(width=321, height=180)
    with pytest.raises(QuadvaultError, match="--encoder nvenc needs the GPU"):
        make_reel(scan_dir, tmp_path / "x.mp4", ReelOptions(width=W, height=H, encoder="nvenc", device="cpu"))
    result = CliRunner().invoke(cli, ["reel", str(scan_dir), str(tmp_path / "x.mp4"), "--resolution", "320x181"])
    assert result.exit_code == 2 and "must be even" in result.output
    assert list(tmp_path.iterdir()) == []
    huge = CliRunner().invoke(cli, ["reel", str(scan_dir), str(tmp_path / "x.mp4"), "--resolution", "20000x20000"])
    assert huge.exit_code == 2 and "at most 8192 pixels a side" in huge.output  # was "install libx264"



def test_load_scan_folder_reads_per_second_scores(scan_dir: Path) -> None:
    source = load_scores(scan_dir)
    assert source.per_second and len(source.videos) == len(SOURCES) + 1
    plain = next(v for v in source.videos if v.path.name == "plain 30fps.mp4")
    assert plain.times.tolist() == list(range(10)) and plain.scores[2] == pytest.approx(0.95)
    prepared = prepare_reel(source, ReelOptions(min_score=0.9, top=1))
    assert [c.window.path.name for c in prepared.plan.clips] == ["plain 30fps.mp4"]


def test_scores_of_several_models_in_one_folder_are_named(library: dict[str, Path], tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A folder scanned with model v1, then part of it with v2: the reel ranked both models' scores as one scale
    without a word (a returning user's find). It says so, naming the models as the scans recorded them."""
    names = list(SOURCES)
    out = write_scan(tmp_path / "scan", [(library[n], _scores(2, 0.9)) for n in names[:3]],
                     model=ModelRef("v1", "1" * 16))
    with caplog.at_level("WARNING"):
        load_scores(out)
    assert "models" not in caplog.text  # one model: nothing to say
    write_scan(out, [(library[names[3]], _scores(2, 0.95))], shard="part-00001.parquet",
               model=ModelRef("v2", "2" * 16))
    with caplog.at_level("WARNING"):
        source = load_scores(out)
    assert len(source.videos) == 4
    assert "come from 2 models (v1 (11111111…): 3 videos, v2 (22222222…): 1 video)" in caplog.text


def test_window_reader_falls_back_to_the_cpu_and_says_why(library: dict[str, Path], tmp_path: Path) -> None:
    """Asked for the GPU where NVDEC cannot help: same pictures from the CPU decoder, and the reason."""
    import torch

    from quadvault_dali.reel.frames import WindowReader

    av1 = make_video(tmp_path / "av1.mp4", _spec(dict(source_id=7, codec="av1"), 2))
    cases = [(av1, "NVDEC on this GPU class does not decode av1")]
    if not torch.cuda.is_available():  # here the CUDA device itself cannot be opened
        cases.append((library["plain 30fps.mp4"], "NVDEC could not decode it"))
    for path, reason in cases:
        info = probe_video(path)
        with WindowReader(info, 2.0, W, H, gpu=0) as asked, WindowReader(info, 2.0, W, H) as plain:
            assert asked.decoder == "pyav" and reason in (asked.fallback_reason or "")
            for t in (2.0, 3.5, 5.9):  # increasing source times, as a reel asks for them
                picture = asked.frame_at(t)
                assert np.array_equal(picture, plain.frame_at(t))
                assert stamp_of(picture, info.width, info.height).time_s == pytest.approx(t, abs=0.045)


@pytest.mark.gpu
def test_gpu_machine_uses_nvenc_where_it_opens_and_says_so(scan_dir: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from quadvault_dali.reel.encoders import encoder_opens

    nvenc_ok, why = encoder_opens("h264_nvenc", W, H, 30.0)
    with caplog.at_level(logging.INFO, logger="quadvault_dali"):
        result = make_reel(scan_dir, tmp_path / "gpu.mp4", ReelOptions(width=W, height=H, device="gpu", top=2))
    assert result.render.encoder == ("h264_nvenc" if nvenc_ok else "libx264")
    said = "encoder: h264_nvenc" if nvenc_ok else "encoder: libx264 on the CPU (no NVIDIA hardware encoder opens here)"
    assert said in caplog.text, why
    frames, stream, _ = decode_all(tmp_path / "gpu.mp4")
    assert len(frames) == result.prepared.plan.total_frames and (stream.width, stream.height) == (W, H)
    first = result.prepared.plan.clips[0]
    assert stamp_of(frames[first.frames // 2], W, H).source_id == 1
    if not nvenc_ok:  # e.g. the H100: no encoder block, so an explicit nvenc request is an error
        with pytest.raises(QuadvaultError, match="--encoder nvenc asked for"):
            make_reel(scan_dir, tmp_path / "x.mp4", ReelOptions(width=W, height=H, encoder="nvenc"))


@pytest.mark.parametrize("failure", ["no stream takes the device", "stream left in software"])
def test_hardware_decoding_that_does_not_attach_falls_back(library: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                           failure: str) -> None:
    """PyAV raises a bare RuntimeError when no stream takes the hardware decoder, and may leave the wanted
    stream in software when another stream took it: both end on the CPU with the reason, never mislabelled."""
    import quadvault_dali.probe as probe
    from quadvault_dali.reel.frames import WindowReader

    real_open = probe.av.open

    def fake_open(*args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.pop("hwaccel", None) is not None and failure == "no stream takes the device":
            raise RuntimeError("Hardware accelerated decode requested but no stream is compatible")
        return real_open(*args, **kwargs)  # hwaccel dropped: the stream decodes in software

    monkeypatch.setattr(probe.av, "open", fake_open)
    info = probe_video(library["plain 30fps.mp4"])
    with WindowReader(info, 2.0, W, H, gpu=0) as reader:
        assert reader.decoder == "pyav"
        expected = ("hardware decoding cannot be set up" if failure == "no stream takes the device"
                    else "the hardware decoder was not attached")
        assert expected in reader.fallback_reason
        assert stamp_of(reader.frame_at(2.5), info.width, info.height).time_s == pytest.approx(2.5, abs=0.045)


def test_sound_that_starts_after_the_pictures_stays_in_sync(tmp_path: Path) -> None:
    """Audio starting 1 s after the video (edit lists, TS): a window's sound is the sound at the pictures'
    time, not at the audio stream's own time."""
    from fractions import Fraction

    from quadvault_dali.reel.audio import read_audio_window

    path = tmp_path / "late_audio.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=30)
        video.width = video.height = 64
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        for i in range(120):  # 4 s of pictures from 0 s
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for k in range(0, 3 * 48000, 1024):  # a 440 Hz tone from 1 s to 4 s
            tone = (0.5 * np.sin(2 * np.pi * 440 * (np.arange(1024) + k) / 48000)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = 48000, 48000 + k, Fraction(1, 48000)
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    info = probe_video(path)
    samples = read_audio_window(path, 0.5, 1.0, video_start_s=info.start_time_s)
    assert samples is not None and samples.shape == (2, 48000)
    loudness = [float(np.abs(samples[0, i * 4800:(i + 1) * 4800]).mean()) for i in range(10)]
    assert max(loudness[:4]) < 0.01  # 0.5-0.9 s: before the sound starts
    assert min(loudness[6:]) > 0.2  # 1.1-1.5 s: the tone


def test_a_path_in_two_shards_is_read_once_with_its_newest_scores(library: dict[str, Path], tmp_path: Path) -> None:
    """An old shard a resume could not clean, or two jobs over one folder: the reel must not cut the same
    video twice, nor blend two scans' seconds; the newest row and its own seconds win."""
    src = library["plain 30fps.mp4"]
    old, new = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 6, 1, tzinfo=timezone.utc)
    scan = tmp_path / "scan"
    write_scan(scan, [(src, [0.95] * 4 + [0.1] * 6)], shard="part-zz-00001.parquet", scanned_at=old)
    write_scan(scan, [(src, [0.1] * 6 + [0.97] * 4)], shard="part-00001.parquet", scanned_at=new)
    (video,) = load_scores(scan).videos
    assert video.times.tolist() == [float(t) for t in range(10)]
    assert video.scores.tolist() == pytest.approx([0.1] * 6 + [0.97] * 4)
    plan = prepare_reel(scan, ReelOptions(width=W, height=H, min_score=0.9), decode_check=False).plan
    assert [(c.window.path, c.window.in_s) for c in plan.clips] == [(src, 6.0)]


def test_a_highlights_json_listing_a_path_twice_gives_one_clip(library: dict[str, Path], tmp_path: Path) -> None:
    src = library["plain 30fps.mp4"]
    doc = {"highlights": [{"path": str(src), "score": 0.95, "best_second": 3, "duration_s": 10.0},
                          {"path": str(src), "score": 0.9, "best_second": 7, "duration_s": 10.0}]}
    (tmp_path / "highlights.json").write_text(json.dumps(doc))
    (video,) = load_scores(tmp_path / "highlights.json").videos
    assert video.video_score == 0.95 and video.best_timestamp_s == 3


def test_the_reel_never_overwrites_its_sources_or_other_files(scan_dir: Path, library: dict[str, Path],
                                                               tmp_path: Path) -> None:
    """Not a chosen source, not a video the reel did not pick, not any file it did not make itself."""
    for src in (library["plain 30fps.mp4"], library["sound.mp4"]):  # chosen; and scanned but not picked
        before = src.read_bytes()
        with pytest.raises(OutputError, match="exists and is not a reel this command made"):
            make_reel(scan_dir, src, ReelOptions(width=W, height=H, min_score=0.9, top=1))
        assert src.read_bytes() == before and not sidecar_path(src).exists()
    # a reel made here before (its cut list beside it) is replaced by the new one
    out = tmp_path / "best.mp4"
    make_reel(scan_dir, out, ReelOptions(width=W, height=H, min_score=0.9, top=1, clip_seconds=2.0))
    again = make_reel(scan_dir, out, ReelOptions(width=W, height=H, min_score=0.9, top=2, clip_seconds=2.0))
    assert len(again.prepared.plan.clips) == 2 and len(read_sidecar(again.sidecar)) == 2


def test_a_reel_beside_a_video_of_the_same_stem_never_makes_it_replaceable(scan_dir: Path, tmp_path: Path) -> None:
    """The clip list was named by stem: after a reel trip.mp4, the user's own trip.mov had "its" list beside it
    and the next reel named trip.mov replaced it; best.mp4 and best.mkv shared one list."""
    own = tmp_path / "trip.mov"
    own.write_bytes(b"the user's own edit")
    options = ReelOptions(width=W, height=H, min_score=0.9, top=1, clip_seconds=2.0)
    made = make_reel(scan_dir, tmp_path / "trip.mp4", options)
    assert made.sidecar.name == "trip.mp4.clips.csv"
    with pytest.raises(OutputError, match=r"not a reel this command made \(no trip.mov.clips.csv beside it\)"):
        make_reel(scan_dir, own, options)
    assert own.read_bytes() == b"the user's own edit"
    other = make_reel(scan_dir, tmp_path / "trip.mkv", dataclasses.replace(options, top=2))
    assert len(read_sidecar(made.sidecar)) == 1 and len(read_sidecar(other.sidecar)) == 2  # a list each


def test_a_clip_list_that_cannot_be_written_leaves_no_reel_without_one(scan_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The list was written after the reel was renamed into place: a full disk then left a reel without its
    list, which the next run refused to replace ("not a reel this command made")."""
    import quadvault_dali.reel.build as build

    def full_disk(plan: object, path: Path, **kw: object) -> Path:
        raise OutputError("cannot write the clip list ([Errno 28] No space left on device)", path=path)

    out = tmp_path / "best.mp4"
    options = ReelOptions(width=W, height=H, min_score=0.9, top=1, clip_seconds=2.0)
    monkeypatch.setattr(build, "write_sidecar", full_disk)
    with pytest.raises(OutputError, match="No space left"):
        make_reel(scan_dir, out, options)
    assert list(tmp_path.iterdir()) == []  # neither the reel nor a partial file
    monkeypatch.undo()
    assert len(read_sidecar(make_reel(scan_dir, out, options).sidecar)) == 1


@pytest.mark.parametrize("name", ["best", "best.webm", "best.gif"])
def test_an_output_name_that_cannot_hold_h264_is_refused_first(scan_dir: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(OutputError, match=r"cannot hold it .*name it like best.mp4"):
        make_reel(scan_dir, tmp_path / name, ReelOptions(width=W, height=H))
    assert list(tmp_path.iterdir()) == []


def test_a_source_changed_since_the_scan_is_left_out_and_named(library: dict[str, Path], tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Cut shorter after the scan, the best window would be past its end: a frozen frame, not footage."""
    src = tmp_path / "trimmed later.mp4"
    make_video(src, _spec(dict(source_id=8), 5))
    scan = write_scan(tmp_path / "scan", [(src, _scores(5, 0.99))])
    make_video(src, SynthSpec(width=W, height=H, duration_s=4.0, source_id=8))  # trimmed to 4 s
    with caplog.at_level(logging.WARNING), pytest.raises(EmptySelectionError) as info:
        prepare_reel(scan, ReelOptions(width=W, height=H, min_score=0.9))
    assert "since it was scanned; scan it again" in caplog.text
    assert "1 video that scored ≥ 0.9 could not be used (unreadable or changed since the scan: trimmed later.mp4" \
        in str(info.value)


def test_an_output_folder_that_cannot_take_the_reel_is_refused_first(scan_dir: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A file where the output folder should be, or a folder that cannot be written: the dry run said the reel
    "would be written", and the real run failed after probing and test-decoding every window, naming a hidden
    temporary (a temporary of a temporary for the clip list). Both now refuse first, naming the folder."""
    from quadvault_dali.reel import plan_reel_for

    a_file = tmp_path / "a30.mp4"
    a_file.write_bytes(b"x")
    for run in (plan_reel_for, make_reel):
        with pytest.raises(OutputError, match="is not a folder, so the reel cannot go into it") as err:
            run(scan_dir, a_file / "x.mp4", ReelOptions(width=W, height=H, min_score=0.5))
        assert err.value.path == a_file
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked)
    with pytest.raises(OutputError, match="output folder is not writable"):
        plan_reel_for(scan_dir, locked / "x.mp4", ReelOptions(width=W, height=H, min_score=0.5))


def test_a_scanned_video_outside_the_reel_is_never_its_output(scan_dir: Path, library: dict[str, Path]) -> None:
    """A stray cut list beside a scanned video made it look like an earlier reel: a reel that did not use that
    video (below --min-score) replaced it (a reel tester's find)."""
    from quadvault_dali.reel import sidecar_path

    video = library["hevc 60fps.mp4"]  # scores 0.91: not in a reel at --min-score 0.94
    before = video.read_bytes()
    stray = sidecar_path(video)
    stray.write_text("position\n")
    try:
        with pytest.raises(OutputError, match="would overwrite .*scored footage or the scores"):
            make_reel(scan_dir, video, ReelOptions(width=W, height=H, min_score=0.94, top=1, clip_seconds=2.0))
    finally:
        stray.unlink()
    assert video.read_bytes() == before


def test_a_clip_too_short_for_two_crossfades_makes_a_reel_alone(tmp_path: Path) -> None:
    """The only video is 0.8 s, and the default 0.5-s crossfades need 1 s: "shorter than two crossfades", no
    reel, though a reel of one clip has no crossfade (a reel tester's find). It is now that reel, said in a note;
    the real run prints the notes too (they were shown by --dry-run only)."""
    src = tmp_path / "short.mp4"
    make_video(src, SynthSpec(width=W, height=H, duration_s=0.8, fps=30, stamp=True, source_id=3))
    scan = write_scan(tmp_path / "scan", [(src, [0.95])])
    out = tmp_path / "reel.mp4"
    result = CliRunner().invoke(cli, ["reel", str(scan), str(out), "--device", "cpu", "--resolution", f"{W}x{H}"])
    assert result.exit_code == 0, result.output
    assert "note: the only clip that fits is shorter than two crossfades: a reel of it alone" in result.output
    frames, _, _ = decode_all(out)
    assert len(frames) == 24


def test_a_library_moved_since_the_scan_is_what_the_error_says(tmp_path: Path) -> None:
    """The scanned footage renamed since: the reel blamed the --min-score (or the crossfades of short videos
    left), neither of which helped. It now leads with the videos
    that no longer exist and says how to carry their scores to the new place."""
    lib = tmp_path / "footage"
    good = [lib / f"flight {i}.mp4" for i in range(3)]
    for i, path in enumerate(good):
        make_video(path, _spec(dict(source_id=i), 5))
    short = lib / "short.mp4"
    make_video(short, _spec(dict(source_id=7), 1))
    scan = write_scan(tmp_path / "scan", [(p, _scores(5, 0.95 - 0.01 * i)) for i, p in enumerate(good)]
                      + [(short, _scores(1, 0.3))])
    for path in good:
        path.rename(tmp_path / path.name)  # moved away; the short one stays
    with pytest.raises(EmptySelectionError) as info:
        prepare_reel(scan, ReelOptions(width=W, height=H, min_score=0.5, fade_s=0.5, clip_seconds=3))
    said = str(info.value)
    assert "3 videos that scored ≥ 0.5 no longer exist where the scan found them (flight 0.mp4" in said, said
    assert said.index("no longer exist") < said.index("of the others: no video scored ≥ 0.5")
    assert "scan it at its new place into the same output folder" in str(info.value.hint)


def test_a_source_changed_since_the_scan_is_left_out_through_its_highlights_json(tmp_path: Path,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A highlights.json has no size or mtime, so a file replaced since the scan was cut into the reel; its
    ``video_id`` (the scan's id of the file: path, size, mtime) says it changed."""
    from quadvault_dali.scan.schema import video_id

    src = tmp_path / "replaced later.mp4"
    make_video(src, _spec(dict(source_id=8), 5))
    st = src.stat()
    doc = {"highlights": [{"path": str(src), "score": 0.99, "best_second": 5.0, "duration_s": 10.0,
                           "video_id": video_id(str(src), st.st_size, st.st_mtime_ns)}]}
    (tmp_path / "highlights.json").write_text(json.dumps(doc))
    assert len(prepare_reel(tmp_path / "highlights.json", ReelOptions(width=W, height=H)).plan.clips) == 1
    make_video(src, SynthSpec(width=W, height=H, duration_s=4.0, source_id=8))
    with caplog.at_level(logging.WARNING), pytest.raises(EmptySelectionError):
        prepare_reel(tmp_path / "highlights.json", ReelOptions(width=W, height=H))
    assert "replaced later.mp4: it changed (its size or modification time) since it was scanned" in caplog.text


@pytest.mark.parametrize(("entry", "message"), [
    ({"score": "0.9"}, "'score' must be a number, got '0.9'"),
    ({"score": None}, "'score' must be a number, got None"),
    ({"best_second": "3"}, "'best_second' must be a number"),
    ({"duration_s": -4}, "'duration_s' must be a positive number, got -4"),
    ({"path": 7}, "'path' must be a file path, got 7"),
    ({"mtime_ns": "1700000000"}, "'mtime_ns' must be a whole number"),
])
def test_a_highlights_json_with_a_field_of_the_wrong_type_is_a_one_line_error(
        library: dict[str, Path], tmp_path: Path, entry: dict, message: str) -> None:
    """A hand-edited list (a score in quotes) ended in a Python traceback."""
    doc = {"highlights": [{"path": str(library["plain 30fps.mp4"]), "score": 0.9, **entry}]}
    (tmp_path / "highlights.json").write_text(json.dumps(doc))
    result = CliRunner().invoke(cli, ["reel", str(tmp_path / "highlights.json"), str(tmp_path / "r.mp4")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"highlights.json: highlight #1: {message}" in result.output


@pytest.mark.parametrize("out", ["plain 30fps.mp4", "best.avi", "missing/best.mp4"])
def test_a_dry_run_refuses_what_the_real_run_refuses(scan_dir: Path, library: dict[str, Path], tmp_path: Path,
                                                     out: str) -> None:
    """The dry run said OUT "would be written" for a source, an .avi and a folder that does not exist."""
    target = library[out] if out in library else tmp_path / out
    result = CliRunner().invoke(cli, ["reel", str(scan_dir), str(target), "--dry-run"])
    assert result.exit_code == 1 and "would be written" not in result.output and "Error:" in result.output


def test_ntsc_reel_rates_are_exact() -> None:
    from quadvault_dali.reel.encoders import rate_fraction

    assert [rate_fraction(f) for f in (29.97, 23.976, 59.94, 30, 25, 12.5)] == \
        [Fraction(30000, 1001), Fraction(24000, 1001), Fraction(60000, 1001), 30, 25, Fraction(25, 2)]


def test_a_killed_reels_partial_file_is_removed_by_the_next_run(scan_dir: Path, tmp_path: Path) -> None:
    """A run killed mid-encode (SIGKILL; SIGTERM now stops like Ctrl-C) left .best.partial-PID.mp4 beside the
    reel for good: the PID in its name kept later runs from touching it."""
    import subprocess
    import sys

    from quadvault_dali.reel.render import temp_path

    out = tmp_path / "best.mp4"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temp_path(out, int(dead.stdout))
    stale.write_bytes(b"half a reel")
    alive = temp_path(out, os.getppid())  # a live process's (another run writing the same reel): kept
    alive.write_bytes(b"being written")
    make_reel(scan_dir, out, ReelOptions(width=W, height=H, min_score=0.9, top=1, clip_seconds=2.0))
    assert not stale.exists() and alive.exists() and out.exists()


def _stop_a_long_reel(scan_dir: Path, out: Path, number: int) -> tuple[int, str]:
    """Starts a 1080p reel of three clips with the CLI, sends it ``number`` once its partial file appears, and
    returns its exit status and stderr."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "quadvault_dali", "reel", str(scan_dir), str(out), "--device",
                             "cpu", "--resolution", "1920x1080", "--min-score", "0.1", "--top", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.parent.glob(f".{out.stem}.partial-*{out.suffix}")) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the reel finished before it could be stopped"
    proc.send_signal(number)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.parametrize("sig, code, said", [("SIGTERM", 143, "Stopped (SIGTERM)"), ("SIGHUP", 129, "Stopped (SIGHUP)"),
                                             ("SIGINT", 130, "Interrupted")])
def test_the_cli_stopped_by_sigterm_leaves_no_partial_file(scan_dir: Path, tmp_path: Path, sig: str, code: int,
                                                         said: str) -> None:
    """A scheduler's SIGTERM, a closed terminal's SIGHUP (which left the partial reel and its cut list behind)
    and Ctrl-C (which printed click's "Aborted!") all remove the partial files and say no reel was written."""
    import signal
    returncode, err = _stop_a_long_reel(scan_dir, tmp_path / "long.mp4", getattr(signal, sig))
    assert returncode == code and f"{said}; no reel written" in err, err[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_a_window_starting_just_before_a_reordered_keyframe_starts_on_time(tmp_path: Path) -> None:
    """HEVC with B-frames stores the keyframe shown at 2.0 s before frames shown earlier; a seek to 1.9 s must
    not land on it and start the clip a frame (or a GOP) late."""
    from quadvault_dali.reel.frames import WindowReader

    path = make_video(tmp_path / "gop.mp4", SynthSpec(codec="hevc", width=W, height=H, fps=30, duration_s=6.0,
                                                      keyframe_interval_s=2.0, source_id=6))
    info = probe_video(path)
    for in_s in (1.9, 1.93, 1.96, 3.95):
        with WindowReader(info, in_s, W, H) as reader:
            stamp = read_stamp(reader.frame_at(in_s))
        assert stamp is not None and stamp.time_s == pytest.approx(np.floor(in_s * 30 + 1e-6) / 30, abs=0.006), in_s


def test_an_avi_window_shows_its_frames_in_order_at_their_times(tmp_path: Path) -> None:
    """AVI with B-frames: the decoder's frames carried their chunks' decode-order times (1, 3, 4, 2, ...
    frames), so a window showed each frame at a neighbour's time: some twice, some never. Each time must
    show the picture of its own frame, one frame behind as FFmpeg's AVI times are (see the sampling test)."""
    from quadvault_dali.reel.frames import WindowReader

    path = make_video(tmp_path / "b.avi", SynthSpec(codec="h264", width=W, height=H, fps=24, duration_s=5.0,
                                                    keyframe_interval_s=2.0, source_id=6))
    info = probe_video(path)
    for in_s in (0.0, 1.5, 2.0):
        with WindowReader(info, in_s, W, H) as reader:
            for k in range(int(round(in_s * 24)) + 1, int(round(in_s * 24)) + 30):
                t = k / 24
                stamp = read_stamp(reader.frame_at(t))
                assert reader.current_time == pytest.approx(t, abs=1e-6)
                assert stamp is not None and stamp.time_s == pytest.approx(t - 1 / 24, abs=0.006), (in_s, t)


def test_a_damaged_packet_does_not_freeze_the_rest_of_its_window(tmp_path: Path) -> None:
    """One garbled keyframe (a bad sector, a cut copy): the window's decoder stopped at the first error and the
    reel held the picture before it for the rest of the window (2.6 s here) although the next GOP decodes."""
    from quadvault_dali.reel.frames import WindowReader

    src = make_video(tmp_path / "src.mp4", SynthSpec(codec="h264", width=W, height=H, fps=30, duration_s=6.0,
                                                     keyframe_interval_s=1.0, source_id=7))
    data = bytearray(src.read_bytes())
    with av.open(str(src)) as c:
        s = c.streams.video[0]
        key = next(p for p in c.demux(s) if p.is_keyframe and p.pts is not None and float(p.pts * s.time_base) > 2.9)
        pos, size = key.pos, key.size
    data[pos + 8: pos + size] = bytes((i * 37 + 11) & 0xFF for i in range(size - 8))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    with WindowReader(probe_video(bad), 2.0, W, H) as reader:
        stamps = [read_stamp(reader.frame_at(k / 30)) for k in range(60, 165)]
    after = [(k / 30, st) for k, st in zip(range(60, 165), stamps) if k >= 120]  # the next GOP, from 4.0 s
    assert all(st is not None and st.time_s == pytest.approx(t, abs=0.006) for t, st in after), after[:5]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_non_square_pixels_fill_the_reel_as_a_player_shows_them(tmp_path: Path, suffix: str) -> None:
    """DV/HDV/DVD camcorders store pictures narrower than they are shown (pixels wider than tall): a 240x240
    picture of 4:3 pixels shows 320x240, and the reel placed it squeezed to 240x240 between black bars."""
    from quadvault_dali.reel.frames import WindowReader

    src = tmp_path / f"anamorphic{suffix}"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 240, 240, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(4, 3)
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((240, 240, 3), 200, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    info = probe_video(src)
    assert (info.width, info.height, info.pixel_aspect) == (240, 240, pytest.approx(4 / 3))
    assert info.display_size == pytest.approx((320, 240))
    with WindowReader(info, 0.0, 320, 240) as reader:
        picture = reader.frame_at(0.0)
    lit = np.flatnonzero(picture.max(axis=(0, 2)) > 100)
    assert lit[0] == 0 and lit[-1] == 319  # the whole width, no bars


@pytest.mark.parametrize("name", ["flight.mkv", "flight.webm", "flight.flv"])
def test_millisecond_time_stamps_show_every_source_frame_once(tmp_path: Path, name: str) -> None:
    """Matroska, WebM and FLV store whole milliseconds: a 30 fps frame 2 at 67 ms was not yet "on screen" at a
    30 fps reel's 66.67 ms, so every third reel frame repeated a picture and the next was never shown."""
    from quadvault_dali.reel.frames import WindowReader

    codec = "vp9" if name.endswith(".webm") else "h264"
    info = probe_video(make_video(tmp_path / name, SynthSpec(codec=codec, fps=30, duration_s=2)))
    with WindowReader(info, 0.0, 320, 240) as reader:
        shown = [read_stamp(reader.frame_at(j / 30)) for j in range(45)]
    assert [round(s.time_s * 30) if s else None for s in shown] == list(range(45))


def test_mpeg_ps_windows_in_the_first_second_start_at_the_top(tmp_path: Path) -> None:
    """DVD camcorders' MPEG-PS (.mpg/.vob): a seek by time, even to the start, lands past the first keyframe
    (stored before its time), so every window in the first second showed the second keyframe, frozen (1.08 s
    for windows at 0.0-1.0 s). The top is now sought by byte, as the sampler seeks it."""
    from quadvault_dali.reel.frames import WindowReader

    info = probe_video(make_video(tmp_path / "dvd.mpg", SynthSpec(codec="mpeg2video", fps=25, duration_s=4)))
    assert info.container == "mpeg" and info.keyframe_times[1] > 1.0
    for in_s in (0.0, 0.1, 0.5, 1.0, 2.3):
        with WindowReader(info, in_s, 320, 240) as reader:
            stamps = [read_stamp(reader.frame_at(in_s + k / 25)) for k in range(3)]
        assert [s.time_s if s else None for s in stamps] == pytest.approx(
            [np.floor(in_s * 25 + 1e-6) / 25 + k / 25 for k in range(3)], abs=0.005), in_s


def test_mpeg_ts_windows_start_on_time_in_pictures_and_sound(tmp_path: Path) -> None:
    """Camcorder .MTS/.m2ts: a video seek by time lands past the keyframe it needs (the demuxer finds a
    packet by time, not a keyframe): windows in the first second started at the second keyframe and a window
    in the last second had no picture at all. The sound's seeks land on time; it stays in step."""
    from quadvault_dali.reel.audio import read_audio_window
    from quadvault_dali.reel.frames import WindowReader
    from quadvault_dali.synth import draw_stamp

    path = tmp_path / "camcorder.ts"
    with av.open(str(path), "w", format="mpegts") as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        video.options = {"g": "30", "keyint_min": "30", "sc_threshold": "0", "bf": "2"}
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        sound_at = 0
        for i in range(240):  # 8 s of pictures; a tone only while 1.0 <= t < 1.5 and 6.5 <= t < 7.0
            image = np.full((H, W, 3), 40, np.uint8)
            draw_stamp(image, i / 30, 4)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            out.mux(video.encode(frame))
            while sound_at < (i + 1) * 1600:
                t = (np.arange(1024) + sound_at) / 48000
                tone = np.where((t >= 1.0) & (t < 1.5) | (t >= 6.5) & (t < 7.0),
                                0.5 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
                sound = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
                sound.sample_rate, sound.pts, sound.time_base = 48000, sound_at, Fraction(1, 48000)
                out.mux(audio.encode(sound))
                sound_at += 1024
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    info = probe_video(path)
    for in_s in (0.0, 0.2, 1.5, 3.4, 7.2, 7.95):
        with WindowReader(info, in_s, W, H) as reader:
            stamp = read_stamp(reader.frame_at(in_s))
        assert stamp is not None and stamp.time_s == pytest.approx(np.floor(in_s * 30 + 1e-6) / 30, abs=0.006), in_s
    for in_s, loud in ((0.8, (0.2, 0.7)), (6.3, (0.2, 0.7))):
        samples = read_audio_window(path, in_s, 1.0, video_start_s=info.start_time_s)
        assert samples is not None
        level = [float(np.abs(samples[0, i * 2400:(i + 1) * 2400]).mean()) for i in range(20)]  # 50-ms steps
        lo, hi = int(loud[0] * 20), int(loud[1] * 20)
        assert max(level[:lo - 1] + level[hi + 1:]) < 0.02 and min(level[lo + 1:hi - 1]) > 0.2, (in_s, level)


def test_the_reel_is_bt709_in_its_pixels_and_its_tags(tmp_path: Path) -> None:
    """RGB pictures became YUV by the encoder's default BT.601 matrix in an untagged stream: players that take
    untagged HD for BT.709 (browsers, mpv, QuickTime) showed a source's green (0, 200, 0) as (0, 166, 0)."""
    src = tmp_path / "green.mp4"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt, stream.options = W, H, "yuv420p", {"crf": "10"}
        ctx = stream.codec_context
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = 1  # a BT.709 drone clip
        picture = np.zeros((H, W, 3), np.uint8)
        picture[:, : W // 2] = (0, 200, 0)
        picture[:, W // 2:] = (230, 120, 20)
        for i in range(60):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="ITU709")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    scan = write_scan(tmp_path / "scan", [(src, [0.95, 0.95])])
    reel = make_reel(scan, tmp_path / "reel.mp4", ReelOptions(width=W, height=H, min_score=0.5, clip_seconds=1.0,
                                                              fade_s=0.1, encoder="x264", device="cpu"))
    with av.open(str(reel.render.path)) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range) == (1, 1, 1, 1)
        shown = next(container.decode(video=0)).to_ndarray(format="rgb24")  # by the stream's own tags
    assert np.abs(shown[H // 2, W // 4].astype(int) - (0, 200, 0)).max() <= 4
    assert np.abs(shown[H // 2, 3 * W // 4].astype(int) - (230, 120, 20)).max() <= 4


def _video_with_sound(path: Path, seconds: float, *, loud: tuple[float, float], hole: tuple[float, float] = (0, 0),
                      layout: str = "stereo", rate: int = 48000, start_s: float = 0.0, fmt: str | None = None) -> Path:
    """Pictures and a sound that is a tone only while ``loud[0] <= t < loud[1]`` (pictures' time), with no
    audio packets at all while ``hole[0] <= t < hole[1]``; everything shifted by ``start_s``."""
    with av.open(str(path), "w", format=fmt) as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = out.add_stream("aac", rate=rate)
        audio.layout = layout
        channels = 1 if layout == "mono" else 2
        at = 0
        for i in range(int(seconds * 30)):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 60, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i + int(start_s * 30), Fraction(1, 30)
            out.mux(video.encode(frame))
            while at < (i + 1) * rate // 30:
                t = (np.arange(1024) + at) / rate
                tone = np.where((t >= loud[0]) & (t < loud[1]), 0.5 * np.sin(2 * np.pi * 440 * t), 0.0)
                if not hole[0] <= at / rate < hole[1]:
                    sound = av.AudioFrame.from_ndarray(np.repeat(tone[None].astype(np.float32), channels, 0),
                                                       format="fltp", layout=layout)
                    sound.sample_rate, sound.time_base = rate, Fraction(1, rate)
                    sound.pts = at + int(start_s * rate)
                    out.mux(audio.encode(sound))
                at += 1024
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return path


def _loud_steps(samples: np.ndarray, rate: int = 48000) -> list[int]:
    """Which 100-ms steps of ``samples`` hold the tone."""
    step = rate // 10
    return [i for i in range(samples.shape[1] // step) if np.abs(samples[0, i * step:(i + 1) * step]).mean() > 0.1]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_sound_after_a_hole_stays_under_its_pictures(tmp_path: Path, suffix: str) -> None:
    """Audio packets missing for 2.0-3.0 s (a remote's or phone's hiccup): the decoded frames were joined end to
    end, so the sound after the hole played a second early, under the wrong pictures, to the window's end."""
    from quadvault_dali.reel.audio import read_audio_window

    path = _video_with_sound(tmp_path / f"hole{suffix}", 6, loud=(3.5, 4.0), hole=(2.0, 3.0))
    info = probe_video(path)
    samples = read_audio_window(path, 1.5, 3.0, video_start_s=info.start_time_s)
    assert samples is not None and samples.shape == (2, 3 * 48000)
    assert _loud_steps(samples)[0] in (20, 21) and _loud_steps(samples)[-1] in (24, 25)  # 2.0-2.5 s into it
    assert np.abs(samples[:, int(0.55 * 48000):int(1.45 * 48000)]).max() == 0.0  # the hole is silence


def test_sound_that_changes_layout_and_rate_mid_file_is_resampled_not_fatal(tmp_path: Path) -> None:
    """Two camcorder segments joined byte-wise (``cat 00001.MTS 00002.MTS``): mono 48 kHz, then stereo 44.1 kHz.
    The one resampler refused the second part's frames and the reel ended in a traceback."""
    from quadvault_dali.reel.audio import read_audio_window

    first = _video_with_sound(tmp_path / "1.ts", 3, loud=(9, 9), layout="mono", fmt="mpegts")
    second = _video_with_sound(tmp_path / "2.ts", 3, loud=(0.5, 1.5), rate=44100, start_s=3.0, fmt="mpegts")
    joined = tmp_path / "day.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    info = probe_video(joined)
    samples = read_audio_window(joined, 2.0, 3.0, video_start_s=info.start_time_s)
    assert samples is not None
    loud = _loud_steps(samples)
    assert loud and 14 <= loud[0] <= 16 and 24 <= loud[-1] <= 26, loud  # the second part's tone, on time


def test_a_relative_reel_name_with_a_colon_is_written(scan_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``quadvault reel scan "Alps: best.mp4"``: --dry-run said it would be written, then FFmpeg took "Alps" for a
    protocol at the first packet and the run ended in a traceback."""
    monkeypatch.chdir(tmp_path)
    made = make_reel(scan_dir, Path("Alps: best.mp4"), ReelOptions(width=W, height=H, min_score=0.9, top=1,
                                                                   clip_seconds=2.0))
    assert (tmp_path / "Alps: best.mp4").stat().st_size > 0 and len(read_sidecar(made.sidecar)) == 1
    with av.open(str(tmp_path / "Alps: best.mp4")) as container:
        assert container.streams.video[0].frames == 60


def test_a_listed_duration_past_the_files_end_is_cut_within_it(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-made highlights.json said 10 s for a 4-s video: the window ran to 5.5 s and the reel held the last
    picture for 1.5 s. The file's own length bounds the window; a ``~/`` path is the user's home, as in
    labels.json ("file not found" before)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    src = make_video(tmp_path / "footage" / "short.mp4", SynthSpec(width=W, height=H, duration_s=4.0))
    doc = {"highlights": [{"path": "~/footage/short.mp4", "score": 0.95, "best_second": 3.0, "duration_s": 10.0}]}
    (tmp_path / "highlights.json").write_text(json.dumps(doc))
    plan = prepare_reel(tmp_path / "highlights.json", ReelOptions(width=W, height=H, clip_seconds=3.0)).plan
    assert [c.window.path for c in plan.clips] == [src]
    clip = plan.clips[0]
    assert clip.window.in_s + clip.frames / plan.fps <= 4.0 + 1e-6 and clip.frames == 90


def test_copies_of_one_clip_give_one_cut(library: dict[str, Path], tmp_path: Path) -> None:
    """The card dump and its backup/ copy both scored, so both were picked: the same shot twice in a reel meant to
    hold different ones. The copy nearest the library's root is kept, and the plan says what was left out. If the
    kept one cannot be used (changed since the scan, unreadable), the next copy stands in: the shot was lost."""
    original = library["plain 30fps.mp4"]
    copy = tmp_path / "backup" / original.name
    copy.parent.mkdir()
    copy.write_bytes(original.read_bytes())
    scan = write_scan(tmp_path / "scan", [(original, _scores(2, 0.95)), (copy, _scores(2, 0.95)),
                                          (library["sound.mp4"], _scores(3, 0.9))])
    plan = prepare_reel(scan, ReelOptions(width=W, height=H, min_score=0.85)).plan
    kept, other = sorted([original, copy], key=lambda p: (len(p.parts), str(p)))
    assert sorted(str(c.window.path) for c in plan.clips) == sorted([str(kept), str(library["sound.mp4"])])
    assert any(f"1 copy of another listed video left out ({other})" in note for note in plan.notes)
    # the kept copy changed since the scan: the other one stands in, and nothing is called left out
    os.utime(kept, ns=(kept.stat().st_atime_ns, kept.stat().st_mtime_ns + 10**9))
    try:
        plan = prepare_reel(scan, ReelOptions(width=W, height=H, min_score=0.85)).plan
    finally:
        os.utime(kept, ns=(kept.stat().st_atime_ns, kept.stat().st_mtime_ns - 10**9))
    assert sorted(str(c.window.path) for c in plan.clips) == sorted([str(other), str(library["sound.mp4"])])
    assert not any("left out" in note for note in plan.notes)


def test_a_lost_copy_with_two_windows_is_stood_in_for_once(library: dict[str, Path], tmp_path: Path) -> None:
    """Two windows per video: both windows of the lost copy called for a stand-in, and two copies came in, the
    same shots twice over (a review helper's find)."""
    original = library["plain 30fps.mp4"]
    copies = [tmp_path / f"backup{i}" / original.name for i in (1, 2)]
    for copy in copies:
        copy.parent.mkdir()
        copy.write_bytes(original.read_bytes())
    scores = [0.95] * 4 + [0.2] * 2 + [0.9] * 4
    scan = write_scan(tmp_path / "scan", [(p, scores) for p in (original, *copies)])
    order = sorted([original, *copies], key=lambda p: (len(p.parts), str(p)))
    os.utime(order[0], ns=(order[0].stat().st_atime_ns, order[0].stat().st_mtime_ns + 10**9))
    try:
        plan = prepare_reel(scan, ReelOptions(width=W, height=H, min_score=0.85, per_video=2,
                                              clip_seconds=3.0)).plan
    finally:
        os.utime(order[0], ns=(order[0].stat().st_atime_ns, order[0].stat().st_mtime_ns - 10**9))
    assert {c.window.path for c in plan.clips} == {order[1]} and len(plan.clips) == 2


def test_a_damaged_seconds_shard_costs_its_videos_not_the_reel(library: dict[str, Path], tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """One unreadable seconds/ file (a disk error, a half-copied folder) made the reel fail outright, though a
    damaged videos/ file is skipped with a warning: its videos are left out, the rest make the reel."""
    scan = write_scan(tmp_path / "scan", [(library["plain 30fps.mp4"], _scores(2, 0.95))])
    write_scan(scan, [(library["sound.mp4"], _scores(3, 0.9))], shard="part-00001.parquet")
    (scan / "seconds" / "part-00000.parquet").write_bytes(b"garbage")
    with caplog.at_level("WARNING"):
        plan = prepare_reel(scan, ReelOptions(width=W, height=H, min_score=0.5)).plan
    assert [c.window.path for c in plan.clips] == [library["sound.mp4"]]
    assert "part-00000.parquet" in caplog.text and "per-second scores of its 1 video(s) are not read" in caplog.text


def test_a_clip_or_fade_shorter_than_a_reel_frame_is_said(caplog: pytest.LogCaptureFixture) -> None:
    """--fps 1 --clip-seconds 0.5 --no-transitions blamed "a 0 s crossfade at each end"; and at --fps 1 the default
    0.5-s fade rounded to no frame at all, silently: hard cuts where crossfades were asked for."""
    from quadvault_dali.reel.scores import VideoScores
    from quadvault_dali.reel.select import plan_reel

    videos = [VideoScores(Path(f"/v{i}.mp4"), 10.0, video_score=0.9) for i in range(2)]
    with pytest.raises(QuadvaultError, match="a 0.5 s clip is shorter than one reel frame at --fps 1"):
        plan_reel(videos, clip_seconds=0.5, fps=1.0, transitions=False, min_score=0.5)
    with caplog.at_level("WARNING"):
        plan = plan_reel(videos, clip_seconds=4.0, fps=1.0, fade_s=0.5, min_score=0.5)
    assert "a 0.5 s crossfade is less than one frame at --fps 1: the clips are joined by hard cuts" in caplog.text
    assert plan.fade_frames == 0


def test_windows_shorter_than_a_reel_frame_are_named_as_such() -> None:
    """--fps 1 --clip-seconds 0.9 --no-transitions said the videos were "shorter than two crossfades" and to lower
    --clip-seconds, which made it worse: there are no crossfades, and a window needs one reel frame."""
    from quadvault_dali.reel.scores import VideoScores
    from quadvault_dali.reel.select import plan_reel

    videos = [VideoScores(Path(f"/v{i}.mp4"), 10.0, video_score=0.9) for i in range(2)]
    with pytest.raises(EmptySelectionError, match="2 eligible windows are shorter than one reel frame at --fps 1 "
                                                  r"\(raise --clip-seconds or --fps\)"):
        plan_reel(videos, clip_seconds=0.9, fps=1.0, transitions=False, min_score=0.5)
    # shorter than two crossfades, alone: a reel of one clip has none
    alone = plan_reel([VideoScores(Path("/v.mp4"), 0.8, video_score=0.9)], clip_seconds=4.0, fps=30.0, min_score=0.5)
    assert [c.frames for c in alone.clips] == [24] and "a reel of it alone, without fades" in alone.notes[1]


def test_a_stopped_re_render_says_the_earlier_reel_is_kept(scan_dir: Path, tmp_path: Path) -> None:
    """Interrupted while replacing a reel, the message said only "no reel written", though the earlier reel and
    its clip list were there unchanged (an interrupting tester's find)."""
    import signal
    out = tmp_path / "best.mp4"
    make_reel(scan_dir, out, ReelOptions(width=W, height=H, min_score=0.9, top=1, clip_seconds=2.0))
    before = out.read_bytes()
    returncode, err = _stop_a_long_reel(scan_dir, out, signal.SIGTERM)
    assert returncode == 143 and "no reel written" in err and "the earlier best.mp4 is kept as it was" in err
    assert out.read_bytes() == before


def test_a_gap_of_dropped_frames_at_a_windows_start_is_no_end_of_file(tmp_path: Path) -> None:
    """A phone's VFR file missing its frames between 2.9 and 3.05 s was skipped as "cut since the scan": the frame
    on screen at 3.0 s is the one from 2.9 s, and more follow (a reel tester's find). A file that really ends
    before the window still is."""
    from quadvault_dali.reel.frames import check_window

    intra = make_video(tmp_path / "intra.mp4", SynthSpec(width=W, height=H, fps=30, duration_s=5.0,
                                                         keyframe_interval_s=1 / 30, source_id=4))
    gap = tmp_path / "gap.mp4"
    with av.open(str(intra)) as src, av.open(str(gap), "w") as dst:
        stream = src.streams.video[0]
        copy = dst.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None or 2.9 + 1e-3 < float(packet.pts * stream.time_base) < 3.05 - 1e-3:
                continue
            packet.stream = copy
            dst.mux(packet)
    info = probe_video(gap)
    check_window(info, 3.0)  # no error: the 2.9 s frame is on screen, 3.07 s follows
    with pytest.raises(DecodeError, match="the video ends at 4.97 s, before the window at 6.00 s"):
        check_window(info, 6.0)


def test_a_closed_window_reader_frees_its_frames_without_the_cycle_collector(tmp_path: Path) -> None:
    """The decode generator refers back to its reader; closing left the pair (and a 4K frame, and the decoder's
    buffers) to the cycle collector: a 20-clip 4K reel's checks grew to 2.3 GB (a reel tester's find)."""
    import gc
    import weakref

    from quadvault_dali.reel.frames import WindowReader

    path = make_video(tmp_path / "clip.mp4", SynthSpec(width=W, height=H, fps=30, duration_s=3.0, source_id=2))
    reader = WindowReader(probe_video(path), 1.0, W, H)
    reader.frame_at(1.5)
    frames = weakref.ref(reader._frames)
    gc.disable()
    try:
        reader.close()
        del reader
        assert frames() is None  # freed by reference counting alone
    finally:
        gc.enable()


def test_a_stop_between_the_reel_and_its_list_waits_for_the_list(scan_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM right after the reel's rename left it without its clip list (or beside the earlier reel's),
    which the next run refused to replace (a reel tester's find): the stop now waits for the second rename."""
    import signal

    out = tmp_path / "best.mp4"
    real_replace = os.replace

    def replace_then_stop(src: object, dst: object) -> None:
        real_replace(src, dst)
        if Path(str(dst)) == out:
            signal.raise_signal(signal.SIGTERM)

    def stop(number: int, frame: object) -> None:
        raise KeyboardInterrupt

    written: list[bool] = []
    previous = signal.signal(signal.SIGTERM, stop)
    monkeypatch.setattr(os, "replace", replace_then_stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            make_reel(scan_dir, out, ReelOptions(width=W, height=H, min_score=0.9, top=1, clip_seconds=2.0),
                      on_written=lambda: written.append(True))
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    assert out.is_file() and len(read_sidecar(sidecar_path(out))) == 1
    assert written  # so the command says the reel is written, not that none is


def test_a_source_deleted_while_the_reel_encodes_is_cut_out_not_shown_black(scan_dir: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleted mid-encode, a source showed as a second of black that the clip list still named (a live-library
    tester's find): the reel is planned and encoded again without it, and says so."""
    import shutil

    import quadvault_dali.reel.render as render

    options = ReelOptions(width=W, height=H, min_score=0.9, top=3, clip_seconds=2.0, transitions=False)
    planned = prepare_reel(scan_dir, options).plan
    assert len(planned.clips) == 3
    doomed = planned.clips[1].window.path
    kept = tmp_path / "kept"
    kept.mkdir()
    real_init = render._ClipSource.__init__

    def delete_on_open(self, clip, info, *args, **kw):  # type: ignore[no-untyped-def]
        if clip.window.path == doomed and doomed.exists():
            shutil.move(doomed, kept / doomed.name)  # the pilot tidies the library while the reel encodes
        real_init(self, clip, info, *args, **kw)

    monkeypatch.setattr(render._ClipSource, "__init__", delete_on_open)
    out = tmp_path / "best.mp4"
    try:
        result = make_reel(scan_dir, out, options)
    finally:
        shutil.move(kept / doomed.name, doomed)  # the library fixture is shared
    listed = read_sidecar(result.sidecar)
    assert doomed not in {Path(row["source_path"]) for row in listed} and len(listed) == len(result.prepared.plan.clips)
    assert any(str(doomed) in message and "encoding the reel" not in message and "gone" in message
               for message in result.prepared.skipped)
    assert not result.render.failed_clips


def test_a_source_whose_folder_became_unreadable_is_skipped_not_fatal(scan_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A folder made unreadable after the scan stopped the whole reel with "Permission denied (check that the
    folder exists and can be written)" (a live-library tester's find); an unreadable file was already skipped."""
    import pathlib

    options = ReelOptions(width=W, height=H, min_score=0.9, top=3, clip_seconds=2.0)
    locked = prepare_reel(scan_dir, options).plan.clips[0].window.path
    real_stat = pathlib.Path.stat

    def stat(self, *args, **kw):  # type: ignore[no-untyped-def]
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kw)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    with caplog.at_level(logging.WARNING):
        prepared = prepare_reel(scan_dir, options)
    assert locked not in {c.window.path for c in prepared.plan.clips} and prepared.plan.clips
    assert any(f"{locked}: permission denied" in message for message in prepared.skipped)


def test_the_default_min_score_is_the_scans_highlight_threshold(library: dict[str, Path], tmp_path: Path) -> None:
    """With a fixed default of 0.85, a model whose tuned threshold was 0.43 found 18 highlights in the scan and the
    reel refused them all ("the best was 0.46"), two testers' find. The default is now the threshold the scan
    recorded (0.7 in write_scan's footers; a highlights.json's own), 0.85 where the scores name none."""
    import json

    good, fair = library["plain 30fps.mp4"], library["hevc 60fps.mp4"]
    scan = write_scan(tmp_path / "scan", [(good, _scores(2, 0.95)), (fair, _scores(1, 0.75))])
    assert load_scores(scan).threshold == 0.7
    picked = prepare_reel(scan, ReelOptions(width=W, height=H)).plan
    assert {c.window.path for c in picked.clips} == {good, fair}  # 0.75 is a highlight at 0.7
    strict = prepare_reel(scan, ReelOptions(width=W, height=H, min_score=0.85)).plan
    assert {c.window.path for c in strict.clips} == {good}
    # the scan's latest run said 0.8 (scan --threshold 0.8 rescans nothing: the shards keep 0.7): its report rules
    (scan / "highlights.json").write_text(json.dumps({"threshold": 0.8, "highlights": []}), encoding="utf-8")
    assert load_scores(scan).threshold == 0.8
    assert {c.window.path for c in prepare_reel(scan, ReelOptions(width=W, height=H)).plan.clips} == {good}
    doc = {"threshold": 0.8, "highlights": [{"path": str(good), "score": 0.95, "best_second": 3.0},
                                            {"path": str(fair), "score": 0.75, "best_second": 2.0}]}
    listed = tmp_path / "highlights.json"
    listed.write_text(json.dumps(doc), encoding="utf-8")
    assert {c.window.path for c in prepare_reel(listed, ReelOptions(width=W, height=H)).plan.clips} == {good}
    listed.write_text(json.dumps(doc["highlights"]), encoding="utf-8")  # a bare hand-made list: 0.85
    assert load_scores(listed).threshold is None
    assert {c.window.path for c in prepare_reel(listed, ReelOptions(width=W, height=H)).plan.clips} == {good}


def test_a_kill_between_the_reel_and_list_renames_does_not_block_the_rerun(scan_dir: Path, tmp_path: Path) -> None:
    """SIGKILL after the reel's rename, before its list's: the list was left under the killed run's temporary
    name and the rerun refused the reel as "not a reel this command made"."""
    import subprocess
    import sys
    out = tmp_path / "best.mp4"
    options = ReelOptions(width=W, height=H, min_score=0.9, top=1, clip_seconds=2.0)
    made = make_reel(scan_dir, out, options)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    made.sidecar.rename(tmp_path / f".{made.sidecar.name}.{int(dead.stdout)}-1.tmp")  # as the kill leaves it
    assert len(read_sidecar(make_reel(scan_dir, out, options).sidecar)) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".best")) == []


def test_a_reel_name_too_long_for_its_cut_list_is_refused_before_the_encode(tmp_path: Path) -> None:
    """A 245-byte reel name is legal, but its cut list (+ .clips.csv) and the encoder's temporary file are not: the
    rename failed after the whole encode (a reviewer's find). Refused first, naming the longest name that fits."""
    import re as _re

    from quadvault_dali.errors import OutputError
    from quadvault_dali.reel.build import check_output

    with pytest.raises(OutputError, match=r"choose a name of at most \d+ bytes") as info:
        check_output(tmp_path / ("R" * 241 + ".mp4"))
    room = int(_re.search(r"at most (\d+) bytes", str(info.value)).group(1))
    check_output(tmp_path / ("R" * (room - 4) + ".mp4"))  # the longest that fits passes
    with pytest.raises(OutputError):
        check_output(tmp_path / ("R" * (room - 3) + ".mp4"))
