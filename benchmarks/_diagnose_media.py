"""Test media and pre-cut clips for ``gpu_diagnose.py``: generated videos, keyframe clips as the gpu backend
cuts them, and clips holding the keyframes of several videos back to back (one DALI sample, many videos).

The synthetic frames carry their presentation time and source id in the pixels (``synth.read_stamp``), so
every decoded sample is checked: right count, right order, right video.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quadvault_dali.probe import VideoInfo, open_container, probe_open
from quadvault_dali.sampling import plan_samples
from quadvault_dali.sampling._reader import CountingFile
from quadvault_dali.sampling._uncrop import uncrop_config, uncrop_packet
from quadvault_dali.sampling._remux import (Clip, SourcePacket, _Run, clip_signature, decode_clip, mux_clip, plan_clips,
                                           uncropped_signature)
from quadvault_dali.synth import SynthSpec, make_video, read_stamp

STAMP_TOL = 0.006
#: copies of a video's keyframes in the "stream" case's one clip
STREAM_COPIES = 32


# --- test media ----------------------------------------------------------------------------------

def decode_specs(device: str, quick: bool) -> dict[str, SynthSpec]:
    """Videos for the timing: 'main' (H.264 coded 1088 ≠ 1080), 'aligned' (coded == displayed), 'big' (4K HEVC)."""
    if device == "cpu":  # DALI's CPU decoder knows VP8/VP9/MJPEG only
        vp9 = SynthSpec(codec="vp9", fps=30.0, duration_s=10.0, keyframe_interval_s=1.0, style="highlight",
                        source_id=1)
        return {"main": replace(vp9, width=640, height=360),
                "aligned": replace(vp9, width=320, height=192, source_id=2)}
    h264 = SynthSpec(codec="h264", fps=30.0, duration_s=10.0, keyframe_interval_s=1.0, style="highlight",
                     source_id=1)
    specs = {"main": replace(h264, width=1920, height=1080, bit_rate=20_000_000),
             "aligned": replace(h264, width=1280, height=720, bit_rate=8_000_000, source_id=2)}
    if not quick:
        specs["big"] = SynthSpec(codec="hevc", width=3840, height=2160, fps=30.0, duration_s=6.0,
                                 keyframe_interval_s=1.0, bit_rate=60_000_000, style="highlight", source_id=3)
    return specs


def colour_specs(device: str, quick: bool) -> dict[str, SynthSpec]:
    """Three keyframes each, tagged BT.709 and untagged: 640x360 (H.264 coded 368), 256x160, 1920x1080 (1088)."""
    codec = "vp9" if device == "cpu" else "h264"
    sizes = [(640, 360), (256, 160)] + ([] if quick else [(1920, 1080)])
    return {f"{codec}-{w}x{h}-{m}": SynthSpec(codec=codec, width=w, height=h, fps=10.0,  # type: ignore[arg-type]
                                             duration_s=3.0, keyframe_interval_s=1.0, style="highlight",
                                             color_matrix=m, source_id=5)
            for w, h in sizes for m in ("bt709", "unknown")}


def _make(path: str, spec: SynthSpec) -> float:
    t0 = time.perf_counter()
    tmp = Path(path).with_suffix(f".part{os.getpid()}.mp4")  # two builders of one video must not share it
    make_video(tmp, spec)
    os.replace(tmp, path)
    return time.perf_counter() - t0


def generate(pool: ProcessPoolExecutor, work: Path, specs: dict[str, SynthSpec]) -> dict[str, Future]:
    """Starts generating the videos not yet in ``work`` (largest first): name -> future of the seconds it took
    (0 if it was there), with the file's path as the future's ``path``."""
    jobs: dict[str, Future] = {}
    for name, spec in sorted(specs.items(), key=lambda kv: -kv[1].width * kv[1].height * kv[1].duration_s):
        path = work / f"{name}-{hashlib.sha1(repr(spec).encode()).hexdigest()[:10]}.mp4"  # a changed spec: a new file
        if path.exists():
            done: Future = Future()
            done.set_result(0.0)
            jobs[name] = done
        else:
            jobs[name] = pool.submit(_make, str(path), spec)
        jobs[name].path = path  # type: ignore[attr-defined]
    return jobs


# --- clips ---------------------------------------------------------------------------------------

@dataclass
class Case:
    """One pre-cut clip to feed the pipeline: what each of its frames must show (stamp time, source id)."""

    label: str
    clip: Clip
    stamps: list[float]
    source_id: int

    @property
    def frames(self) -> int:
        return len(self.clip)


def keyframe_plan(path: Path) -> tuple[VideoInfo, Any, CountingFile, Any]:
    fh = CountingFile(path)
    container = open_container(path, fh)
    info, index = probe_open(container, path)
    return info, plan_samples(info, index, fps=1.0, mode="keyframe"), fh, container


def plan_cut(path: Path) -> tuple[VideoInfo, list[Clip]]:
    """The clips the gpu backend would make of this video in keyframe mode (HEVC CRA keyframes: one per clip)."""
    info, plan, fh, container = keyframe_plan(path)
    try:
        return info, list(plan_clips(plan, container, fh))
    finally:
        container.close(), fh.close()


def concat_keyframes(path: Path, copies: int, uncrop: bool = False) -> tuple[Clip, list[float]] | None:
    """One MP4 of the video's sampled keyframes, ``copies`` times back to back (source times offset per copy
    so they rise strictly), as if several videos with the same codec parameters shared one DALI sample.
    Returns the clip and the time each frame's stamp shows. ``uncrop``: with the SPS's cropping
    dropped, as the gpu backend cuts it (``None`` for a stream with nothing to drop)."""
    info, plan, fh, container = keyframe_plan(path)
    try:
        index = plan.index
        stream = container.streams[info.stream_index]
        rows = [int(r) for r in plan.key_packets]
        data = [fh.read_at(int(index.pos[r]), int(index.size[r])) for r in rows]
        times = [round(float(index.pts[r]), 6) for r in rows]
        signature, roi = None, (1.0, 1.0)
        if uncrop:
            done = uncrop_config(info.codec, bytes(stream.codec_context.extradata or b""))
            if done is None:
                return None
            data = [uncrop_packet(d, info.codec, done.crop, done.length_size) for d in data]
            signature, roi = uncropped_signature(clip_signature(stream), done), done.crop.region
        step = float(np.ceil(max(times) + 1.0))
        runs = [_Run([SourcePacket(d, t + k * step, t + k * step, True)], [t + k * step])
                for k in range(copies) for d, t in zip(data, times)]
        return mux_clip(stream, runs, signature, roi), times * copies
    finally:
        container.close(), fh.close()


def make_cases(name: str, path: Path) -> dict[str, Case]:
    info, clips = plan_cut(path)
    sid = int(read_stamp_of(clips[0]) or 0)
    cases = {"plan": Case(f"{name}/plan", clips[0], list(clips[0].times), sid)}
    for kind, copies, uncrop in (("k", 1, False), ("x8", 8, False), ("ku", 1, True), ("x8u", 8, True)):
        made = concat_keyframes(path, copies, uncrop)
        if made is not None:  # "ku"/"x8u": H.264 without the SPS's cropping (only where it crops)
            cases[kind] = Case(f"{name}/{kind}", made[0], made[1], sid)
    # "stream": 32 copies in one clip, for fn.experimental.inputs.video (one decoder for all of them);
    # uncropped where the stream crops, so DALI's decoder cache behaves as in the gpu backend
    made = concat_keyframes(path, STREAM_COPIES, True) or concat_keyframes(path, STREAM_COPIES, False)
    if made is not None:
        cases["stream"] = Case(f"{name}/stream", made[0], made[1], sid)
    return cases


def read_stamp_of(clip: Clip) -> int | None:
    """The source id in the first frame of ``clip`` (decoded with PyAV)."""
    for frame, _ in decode_clip(clip):
        stamp = read_stamp(frame.to_ndarray(format="rgb24"))
        return stamp.source_id if stamp else None
    return None


def check_stamps(frames: torch.Tensor, case: Case, expected: list[float] | None = None) -> str:
    """'ok', or what is wrong with one decoded sample's frames (count, order, source). ``expected``: the
    stamps they must show, where not the whole case's (a "stream" case's first sequence)."""
    expected = case.stamps if expected is None else expected
    if frames.shape[0] != len(expected):
        return f"{frames.shape[0]} frames for {len(expected)}"
    for i, image in enumerate(frames.cpu().numpy()):
        stamp = read_stamp(image)
        if stamp is None or abs(stamp.time_s - expected[i]) > STAMP_TOL or stamp.source_id != case.source_id:
            return f"frame {i} shows {stamp} for {expected[i]}s"
    return "ok"
