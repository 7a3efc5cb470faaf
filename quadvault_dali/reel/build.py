"""``make_reel``: scores in, reel and clip list out — plan, check the sources, encode, write the sidecar.

Sources are checked (probed, and the window's first frame decoded) before anything is encoded; one
that fails is left out with a warning and the next best window takes its place, so a broken file
never costs the user the reel.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..device import resolve_device
from ..errors import OutputError, QuadvaultError
from ..probe import VideoInfo, probe_video
from .encoders import EncoderChoice, choose_encoder
from .frames import check_window
from .render import AudioChoice, RenderResult, render_reel
from .scores import ScoreSource, VideoScores, load_scores
from .select import EmptySelectionError, Order, ReelPlan, plan_reel
from .sidecar import sidecar_path, write_sidecar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReelOptions:
    """Everything ``quadvault reel`` asks for; defaults are the CLI's."""

    top: int = 50
    min_score: float = 0.85
    max_duration_s: float | None = None
    clip_seconds: float = 4.0
    transitions: bool = True
    fade_s: float = 0.5
    order: Order = "score"
    width: int = 1920
    height: int = 1080
    fps: float = 30.0
    audio: AudioChoice = "none"
    encoder: EncoderChoice = "auto"
    device: Literal["auto", "gpu", "cpu"] = "auto"
    per_video: int = 1

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise QuadvaultError(f"reel resolution {self.width}x{self.height}: width and height must be even "
                                 "and at least 16", hint="e.g. 1920x1080 or 1280x720")
        for name, value, allowed in (("order", self.order, ("score", "time")), ("audio", self.audio, ("none", "keep")),
                                     ("encoder", self.encoder, ("auto", "nvenc", "x264")),
                                     ("device", self.device, ("auto", "gpu", "cpu"))):
            if value not in allowed:
                raise QuadvaultError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        if self.max_duration_s is not None and self.max_duration_s <= 0:
            raise QuadvaultError(f"--duration must be positive, got {self.max_duration_s}")


@dataclass(frozen=True)
class PreparedReel:
    plan: ReelPlan
    infos: dict[Path, VideoInfo]
    skipped: tuple[str, ...]  # one message per source left out
    source: ScoreSource


@dataclass(frozen=True)
class ReelResult:
    render: RenderResult
    sidecar: Path
    prepared: PreparedReel


def _probe(path: Path, infos: dict[Path, VideoInfo], skipped: list[str], bad: set[Path]) -> VideoInfo | None:
    if path in bad:
        return None
    if path not in infos:
        try:
            infos[path] = probe_video(path)  # type: ignore[assignment]
        except QuadvaultError as exc:
            log.warning("skipping %s", exc)
            skipped.append(str(exc))
            bad.add(path)
            return None
    return infos[path]


def prepare_reel(scores: str | Path | ScoreSource, options: ReelOptions, *, decode_check: bool = True) -> PreparedReel:
    """Loads the scores, plans the reel and checks every chosen source, re-planning around bad ones."""
    source = scores if isinstance(scores, ScoreSource) else load_scores(scores)
    infos: dict[Path, VideoInfo] = {}
    skipped: list[str] = []
    bad: set[Path] = set()
    videos: list[VideoScores] = []
    for v in source.videos:
        if not v.duration_s:  # highlights.json without durations: the container knows
            info = _probe(v.path, infos, skipped, bad)
            if info is None:
                continue
            v = dataclasses.replace(v, duration_s=info.duration_s, rotation=info.rotation)
        videos.append(v)
    if not videos:
        raise EmptySelectionError(f"{source.origin}: no scored video to cut a reel from "
                                  f"({source.failed_videos} failed or unscored, {len(skipped)} unreadable)")
    if not source.per_second:
        log.warning("no per-second scores in %s: each window is centred on the video's best second where "
                    "known, else on its middle, and scored with the video's score", source.origin)
    while True:
        plan = plan_reel([v for v in videos if v.path not in bad], clip_seconds=options.clip_seconds,
                         top=options.top, min_score=options.min_score, max_duration_s=options.max_duration_s,
                         fade_s=options.fade_s, transitions=options.transitions, fps=options.fps,
                         order=options.order, per_video=options.per_video)
        newly_bad = False
        for clip in plan.clips:
            info = _probe(clip.window.path, infos, skipped, bad)
            if info is None:
                newly_bad = True
                continue
            if decode_check:
                try:
                    check_window(info, clip.window.in_s)
                except QuadvaultError as exc:
                    log.warning("skipping %s", exc)
                    skipped.append(str(exc))
                    bad.add(clip.window.path)
                    newly_bad = True
        if not newly_bad:
            return PreparedReel(plan, infos, tuple(skipped), source)
        log.info("re-planning without %d unreadable source(s)", len(bad))


def make_reel(scores: str | Path | ScoreSource, out: str | Path, options: ReelOptions = ReelOptions()) -> ReelResult:
    """Plans, encodes ``out`` and writes ``OUT.clips.csv``; raises ``EmptySelectionError`` when nothing fits."""
    out = Path(out)
    if out.is_dir():
        raise OutputError("is a folder; give the reel a file name like best.mp4", path=out)
    if not out.parent.exists():
        raise OutputError("output folder does not exist", path=out.parent)
    # gpu raises, naming why, on a machine without a usable GPU; auto decodes on NVDEC where there is one
    gpu = 0 if resolve_device(options.device) == "gpu" else None
    prepared = prepare_reel(scores, options)
    encoder = choose_encoder(options.encoder, options.width, options.height, options.fps,
                             gpu_allowed=options.device != "cpu")
    result = render_reel(prepared.plan, prepared.infos, out, width=options.width, height=options.height,
                         encoder=encoder, audio=options.audio, gpu=gpu)
    sidecar = write_sidecar(prepared.plan, sidecar_path(out))
    return ReelResult(result, sidecar, prepared)
