"""Choosing what goes into a reel: the best window of each video, then the best windows overall.

A window is ``clip_seconds`` long and scored by the *mean* per-second score inside it, so a reel cuts
the few seconds that made the video a highlight instead of its take-off. By default each video gives
at most one window (``per_video=1``): a reel of fifty different shots is what users asked for; more
windows per video are allowed with ``per_video`` and are then never overlapping.

The timeline is planned in whole output frames, so the reel's length is exact:
``sum(clip frames) - (clips - 1) * fade frames``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from ..errors import QuadvaultError
from .scores import VideoScores

log = logging.getLogger(__name__)

Order = Literal["score", "time"]
_EPS = 1e-6


class EmptySelectionError(QuadvaultError):
    """Nothing qualified for the reel; the message says why and what the best candidate was."""


@dataclass(frozen=True)
class Window:
    """A cut of one source: ``[in_s, out_s)`` in seconds from its first frame, with its score."""

    path: Path
    in_s: float
    out_s: float
    score: float
    how: str = "seconds"  # seconds | best-second | middle: how the window was placed
    taken_ns: int | None = None  # when its footage was shot (``VideoScores.taken_ns``): --order time

    @property
    def length_s(self) -> float:
        return self.out_s - self.in_s


@dataclass(frozen=True)
class PlannedClip:
    """A window placed on the reel's frame grid: frames ``[start_frame, start_frame + frames)``."""

    position: int
    window: Window
    start_frame: int
    frames: int
    fps: float

    @property
    def reel_start_s(self) -> float:
        return self.start_frame / self.fps

    @property
    def reel_end_s(self) -> float:
        return (self.start_frame + self.frames) / self.fps

    def source_time(self, frame: int) -> float:
        """Source time shown at reel frame ``frame`` (output frame ``j`` is displayed at ``j / fps``)."""
        return self.window.in_s + (frame - self.start_frame) / self.fps


@dataclass(frozen=True)
class ReelPlan:
    clips: tuple[PlannedClip, ...]
    fps: float
    fade_frames: int
    notes: tuple[str, ...] = ()

    @property
    def total_frames(self) -> int:
        return max((c.start_frame + c.frames for c in self.clips), default=0)

    @property
    def duration_s(self) -> float:
        return self.total_frames / self.fps


def _window_len(video: VideoScores, clip_seconds: float) -> tuple[float, float]:
    duration = float(video.duration_s) if video.duration_s else 0.0
    if duration <= 0:
        raise QuadvaultError("duration unknown; probe the file first", path=video.path)
    return duration, min(clip_seconds, duration)


def best_windows(video: VideoScores, clip_seconds: float, per_video: int = 1) -> list[Window]:
    """The video's best non-overlapping windows, best first (window score = mean score inside it)."""
    duration, length = _window_len(video, clip_seconds)
    if not video.has_seconds:
        return [_centred_window(video, duration, length)]
    times, scores = video.times, video.scores
    # every set of samples a window can hold is held by a window starting at a sample, or ending just before one
    # (starting at t - length): windows starting at samples alone missed [1.5, 4) around two top seconds
    latest = max(0.0, duration - length)
    candidates = np.r_[times, times - length, 0.0, latest]
    starts = np.unique(candidates[(candidates >= -_EPS) & (candidates <= latest + _EPS)].clip(0.0, latest))
    csum = np.r_[0.0, np.cumsum(scores)]
    lo = np.searchsorted(times, starts - _EPS, side="left")
    hi = np.searchsorted(times, starts + length - _EPS, side="left")
    has = hi > lo
    starts, lo, hi = starts[has], lo[has], hi[has]
    # rounded: differences of a running sum gave 1.0 for some all-1.0 windows and 0.9999999999999999 for others,
    # so "earliest on ties" depended on rounding noise
    means = np.round((csum[hi] - csum[lo]) / (hi - lo), 9)
    chosen: list[Window] = []
    for i in np.lexsort((starts, -means)):  # best mean first, earliest on ties
        a = float(starts[i])
        if any(a < w.out_s - _EPS and w.in_s < a + length - _EPS for w in chosen):
            continue
        chosen.append(Window(video.path, a, a + length, float(means[i]), "seconds", video.taken_ns))
        if len(chosen) >= per_video:
            break
    return chosen


def _centred_window(video: VideoScores, duration: float, length: float) -> Window:
    """Without per-second scores: centre on the best second when known, else on the middle."""
    if video.best_timestamp_s is not None:
        centre, how = float(video.best_timestamp_s) + 0.5, "best-second"
    else:
        centre, how = duration / 2.0, "middle"
    start = min(max(0.0, centre - length / 2.0), duration - length)
    return Window(video.path, start, start + length, float(video.video_score or 0.0), how, video.taken_ns)


def plan_reel(videos: Sequence[VideoScores], *, clip_seconds: float = 4.0, top: int = 50,
              min_score: float = 0.85, max_duration_s: float | None = None, fade_s: float = 0.5,
              transitions: bool = True, fps: float = 30.0, order: Order = "score",
              per_video: int = 1) -> ReelPlan:
    """Best windows above ``min_score``, at most ``top``, fitting ``max_duration_s`` with crossfades."""
    if clip_seconds <= 0 or fps <= 0 or top < 1:
        raise QuadvaultError(f"clip_seconds, fps and top must be positive (got {clip_seconds}, {fps}, {top})")
    if round(clip_seconds * fps) < 1:
        raise QuadvaultError(f"a {clip_seconds:g} s clip is shorter than one reel frame at --fps {fps:g}",
                             hint="raise --clip-seconds or --fps")
    fade_frames = int(round(fade_s * fps)) if transitions else 0
    if transitions and fade_s > 0 and fade_frames == 0:
        log.warning("a %g s crossfade is less than one frame at --fps %g: the clips are joined by hard cuts", fade_s,
                    fps)
    if 2 * fade_frames >= round(clip_seconds * fps):
        raise QuadvaultError(f"a {fade_s} s crossfade at each end does not fit in a {clip_seconds} s clip",
                             hint="use a shorter --fade or a longer --clip-seconds")
    windows = [w for v in videos for w in best_windows(v, clip_seconds, per_video)]
    what = f"best {clip_seconds:g} s window" if any(v.has_seconds for v in videos) else "video score"
    if not windows:
        raise EmptySelectionError("no scored video to cut a reel from")
    eligible = sorted((w for w in windows if w.score >= min_score - _EPS),
                      key=lambda w: (-w.score, str(w.path), w.in_s))
    if not eligible:
        best = max(windows, key=lambda w: w.score)
        shown = f"{best.score:.2f}" if round(best.score, 2) < min_score else f"{best.score:.6f}".rstrip("0")
        raise EmptySelectionError(f"no video scored ≥ {min_score:g} ({what}); the best was {shown} "
                                  f"({best.path.name})", hint="lower --min-score")
    max_frames = int(np.floor(max_duration_s * fps + _EPS)) if max_duration_s else None
    picked: list[tuple[Window, int]] = []
    total, too_short, too_long = 0, 0, 0
    shortest_too_long = float("inf")
    short_ones: list[tuple[Window, int]] = []
    for w in eligible:
        if len(picked) >= top:
            break
        # never past the source's end; a thousandth of a frame of slack: a one-frame video's duration, rounded
        # by its container to 0.0333 s, is a frame at 30 fps, not none
        frames = int(np.floor(w.length_s * fps + 1e-3))
        if frames <= 2 * fade_frames:
            too_short += 1
            if frames >= 1 and (max_frames is None or frames <= max_frames):
                short_ones.append((w, frames))
            continue
        grown = total + frames - (fade_frames if picked else 0)
        if max_frames is not None and grown > max_frames:
            too_long += 1
            shortest_too_long = min(shortest_too_long, frames / fps)
            continue  # a later, shorter window may still fit
        picked.append((w, frames))
        total = grown
    alone = not picked and bool(short_ones)
    if alone:  # a reel of one clip has no crossfade: the best short one makes it, rather than no reel at all
        picked, too_short = [short_ones[0]], too_short - 1
        total = short_ones[0][1]
    if not picked:
        reasons, hints = [], []
        if too_long:
            reasons.append(f"--duration {max_duration_s:g} s is shorter than the shortest clip that fits the fades "
                           f"({shortest_too_long:g} s)")
            hints.append("raise --duration or lower --clip-seconds")
        if too_short and fade_frames:
            reasons.append(f"{too_short} eligible video{'s are' if too_short != 1 else ' is'} shorter than two "
                           f"{fade_s:g}-s crossfades")
            hints.append("lower --fade, or --no-transitions")
        elif too_short:  # no fades: a window shorter than one reel frame (--fps 1 --clip-seconds 0.9)
            reasons.append(f"{too_short} eligible window{'s are' if too_short != 1 else ' is'} shorter than one "
                           f"reel frame at --fps {fps:g}")
            hints.append("raise --clip-seconds or --fps")
        raise EmptySelectionError("; ".join(reasons), hint="; ".join(hints))
    if order == "time":
        picked.sort(key=lambda p: (p[0].taken_ns or 0, str(p[0].path), p[0].in_s))
    clips, start = [], 0
    for pos, (w, frames) in enumerate(picked, 1):
        clips.append(PlannedClip(pos, w, start, frames, fps))
        start += frames - fade_frames
    notes = [f"{len(eligible)} window(s) scored ≥ {min_score:g}; {len(picked)} used"]
    if too_long:
        notes.append(f"{too_long} left out to keep the reel within {max_duration_s:g} s")
    if alone:
        notes.append("the only clip that fits is shorter than two crossfades: a reel of it alone, without fades")
    if too_short:
        notes.append(f"{too_short} left out: shorter than two crossfades" if fade_frames
                     else f"{too_short} left out: shorter than one reel frame")
    if len(eligible) > len(picked) + too_long + too_short:
        notes.append(f"{len(eligible) - len(picked) - too_long - too_short} left out by --top {top}")
    return ReelPlan(tuple(clips), fps, fade_frames, tuple(notes))
