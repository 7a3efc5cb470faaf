"""Test helpers for the scan tests: a generated library and two deterministic scorers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from quadvault_dali.synth import SynthSpec, make_broken, make_video, read_stamp

#: relative path -> (spec, expected sampled seconds at 1 fps)
GOOD = {
    "2023/06/trip/high_h264_30.mp4": (SynthSpec(codec="h264", width=96, height=64, fps=30, duration_s=3.0,
                                                style="highlight", source_id=1), 3),
    "2023/11/calm_hevc_24.mp4": (SynthSpec(codec="hevc", width=96, height=64, fps=24, duration_s=3.0,
                                           style="normal", source_id=2), 3),
    "2024/a/b/high_vp9_60.webm": (SynthSpec(codec="vp9", width=96, height=64, fps=60, duration_s=2.0,
                                            style="highlight", source_id=3), 2),
    "2024/calm_mjpeg_30.mkv": (SynthSpec(codec="mjpeg", width=96, height=64, fps=30, duration_s=2.0,
                                         style="normal", source_id=4), 2),
    "rotated_90.mp4": (SynthSpec(codec="h264", width=96, height=64, fps=30, duration_s=2.0, rotation=90,
                                 style="highlight", source_id=5), 2),
}
#: relative path -> (make_broken kind, expected error kind)
BROKEN = {
    "broken/empty.mp4": ("empty", "VideoOpenError"),
    "broken/notes.mp4": ("text", "VideoOpenError"),
    "broken/truncated.mp4": ("truncated", "VideoOpenError"),
    "broken/no_index.mp4": ("no_index", "VideoOpenError"),
}


def build_library(root: Path, extra: int = 0) -> Path:
    """GOOD + BROKEN under ``root`` (plus ``extra`` small h264 clips), and a non-video file."""
    for rel, (spec, _) in GOOD.items():
        make_video(root / rel, spec)
    source = root / "2023/06/trip/high_h264_30.mp4"
    for rel, (kind, _) in BROKEN.items():
        make_broken(root / rel, kind, source=source)  # type: ignore[arg-type]
    for i in range(extra):
        make_video(root / f"extra/clip_{i:02d}.mp4",
                   SynthSpec(width=64, height=64, fps=30, duration_s=2.0, source_id=10 + i,
                             style="highlight" if i % 2 else "normal"))
    (root / "readme.txt").write_text("not footage\n")
    return root


def tree_hash(root: Path) -> dict[str, str]:
    """path -> sha256 of content + mode + mtime for every file and folder under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            out[str(p.relative_to(root))] = f"{digest}:{st.st_mode}:{st.st_mtime_ns}:{st.st_size}"
    return out


class StampScorer:
    """Encodes what it sees: ``(source_id * 1000 + centiseconds) / 100000`` from the frame's stamp."""

    name = "stamp"
    fingerprint = "stamp-v1"
    image_size = 64
    threshold = 0.5

    @staticmethod
    def expected(source_id: int, time_s: float) -> float:
        return (source_id * 1000 + round(time_s * 100)) / 100000

    def score_frames(self, frames: torch.Tensor) -> torch.Tensor:
        out = []
        for image in frames.cpu().numpy():
            stamp = read_stamp(image)
            out.append(0.999 if stamp is None else self.expected(stamp.source_id, stamp.time_s))
        return torch.tensor(out, dtype=torch.float32)


class RetrainedStampScorer(StampScorer):
    """The stamp model retrained: the same name and scores, another fingerprint (no earlier scan stored its scores)."""

    fingerprint = "stamp-v2"


class WarmScorer:
    """A colour 'classifier': warm, saturated frames score high; grey ones low."""

    name = "warm"
    fingerprint = "warm-v1"
    image_size = 64
    threshold = 0.5

    def score_frames(self, frames: torch.Tensor) -> torch.Tensor:
        f = frames.float().cpu() / 255.0
        return torch.sigmoid(12.0 * (f[:, 0] - f[:, 2]).mean(dim=(1, 2)) - 1.0)


def as_scores(values: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in values]


#: A ``sitecustomize`` that makes the CPU decoder die by SIGSEGV on the file named by ``QV_TEST_POISON``: it
#: stands in for a native decoder crash on one file (FFmpeg or NVDEC dying with a signal)
POISON_HOOK = '''
import os, signal
_poison = os.environ.get("QV_TEST_POISON")
if _poison:  # stands in for a native decoder crash on one file (FFmpeg or NVDEC dying with SIGSEGV)
    import quadvault_dali.sampling._cpu as _cpu
    _decode = _cpu.CpuSampler.decode_video
    def decode_video(self, path, outcome, emit):
        if path.name == _poison:
            os.kill(os.getpid(), signal.SIGSEGV)
        return _decode(self, path, outcome, emit)
    _cpu.CpuSampler.decode_video = decode_video
'''


def poison_env(tmp_path: Path, **more: str) -> dict[str, str]:
    """An environment whose CPU decoder dies on ``poison.mp4`` (``POISON_HOOK`` in ``tmp_path/hook``, which a test
    may extend), for commands run as subprocesses that supervise themselves (no inherited in-process marker)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(POISON_HOOK)
    env = {**os.environ, "QV_TEST_POISON": "poison.mp4", **more,
           "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    env.pop("QUADVAULT_SCAN_IN_PROCESS", None)
    return env
