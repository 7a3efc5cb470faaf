"""Which frames to decode for a video: the sampling grid and, in keyframe mode, the keyframes.

Shared by every backend so ``cpu`` and ``gpu`` sample the same seconds of the same video.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..probe import PacketIndex, VideoInfo
from ._types import ResolvedMode, SamplingMode

#: ``auto`` uses keyframes when no keyframe gap exceeds this many sampling intervals.
AUTO_KEYFRAME_MAX_INTERVALS = 1.5


@dataclass(frozen=True)
class SamplePlan:
    """The decode plan for one video.

    ``grid``: the wanted times ``k / fps`` (seconds from the first frame).
    ``key_packets``: keyframe mode only: indices into the ``PacketIndex`` arrays of the keyframes to
    decode, one per distinct nearest keyframe, in presentation order.
    ``max_error_s``: how far a returned frame may be from the grid time it stands for.
    """

    info: VideoInfo
    index: PacketIndex
    mode: ResolvedMode
    grid: np.ndarray
    key_packets: np.ndarray
    max_error_s: float

    @property
    def expected_frames(self) -> int:
        """Frames this plan yields (exact mode: one per grid time that maps to a distinct decodable frame)."""
        if self.mode == "keyframe":
            return int(self.key_packets.shape[0])
        return int(np.unique(nearest_indices(decodable_times(self.index), self.grid)).shape[0])


def decodable_times(index: PacketIndex) -> np.ndarray:
    """The sorted times of the pictures a decoder gives from the stream's start: none shown before its first
    keyframe (a TS recording cut mid-GOP starts with pictures that refer to a lost one, an open GOP's first
    keyframe with leading pictures; FFmpeg drops both)."""
    first_key = float(index.pts[int(np.argmax(index.is_key))])
    return np.sort(index.pts[index.pts >= first_key - 1e-9])


def sampling_grid(duration_s: float, fps: float) -> np.ndarray:
    """Times ``0, 1/fps, 2/fps, ...`` more than a millisecond before the end of the video (at least one): a
    duration rounded up by a fraction of a millisecond does not add a time the last picture barely reaches."""
    count = max(1, int(np.ceil((duration_s - 1e-3) * fps)))
    return np.arange(count, dtype=np.float64) / fps


def nearest_indices(sorted_times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the nearest value in ``sorted_times`` for each target (ties go to the earlier)."""
    right = np.clip(np.searchsorted(sorted_times, targets, side="left"), 0, len(sorted_times) - 1)
    left = np.clip(right - 1, 0, len(sorted_times) - 1)
    take_left = np.abs(targets - sorted_times[left]) <= np.abs(sorted_times[right] - targets)
    return np.where(take_left, left, right)


def resolve_mode(info: VideoInfo, fps: float, mode: SamplingMode) -> ResolvedMode:
    """``exact`` for a video that shows no keyframe (a clip trimmed inside its only GOP), whatever was asked."""
    if not info.keyframe_times:
        return "exact"
    if mode != "auto":
        return mode
    return "keyframe" if info.max_keyframe_interval_s <= AUTO_KEYFRAME_MAX_INTERVALS / fps else "exact"


def plan_samples(info: VideoInfo, index: PacketIndex, *, fps: float = 1.0, mode: SamplingMode = "auto") -> SamplePlan:
    """Plans one video. Keyframe mode maps each grid time to its nearest keyframe, each decoded once."""
    resolved = resolve_mode(info, fps, mode)
    last_pts = float(index.pts.max()) if len(index) else 0.0
    grid = sampling_grid(max(info.duration_s, last_pts + 2e-3), fps)  # a picture at a grid time is sampled
    if len(index):
        # The last picture is on screen until the video ends, at most about two frames (the duration may count
        # longer sound) and at least half a nominal frame (a variable-rate Matroska file's nominal rate is not
        # its real one: its last second was cut).
        mean_gap = (last_pts - float(index.pts.min())) / (len(index) - 1) if len(index) > 1 else 0.0
        shown_for = max(0.5 / max(info.avg_fps, 1e-3), min(info.duration_s - last_pts, 2 * mean_gap))
        grid = grid[grid <= last_pts + shown_for]
    if resolved == "keyframe":
        key_rows = np.flatnonzero(index.is_key & index.shown)
        key_rows = key_rows[np.argsort(index.pts[key_rows], kind="stable")]
        key_times = index.pts[key_rows]
        nearest = nearest_indices(key_times, grid)
        error = float(np.abs(key_times[nearest] - grid).max(initial=0.0))
        return SamplePlan(info, index, "keyframe", grid, key_rows[np.unique(nearest)], error)
    gaps = np.diff(decodable_times(index))
    return SamplePlan(info, index, "exact", grid, np.empty(0, np.int64), float(gaps.max(initial=0.0)) / 2)
