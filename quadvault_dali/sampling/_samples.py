"""What one DALI sample holds: clips of several videos merged per decoder set-up, and how many frames a
sample may hold (the gpu backend's budget from the card's memory, or the streaming decoder's frame cap).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ._handover import VideoTask
from ._remux import CLIP_PIXELS, Clip, can_follow, frame_budget, merge_clips

log = logging.getLogger(__name__)

#: Decoded full-size pixels one DALI sample may hold when clips of several videos are merged into it
#: (``merge_clips``): 96 frames of 1080p, 24 of 2160p (about 600 MB of RGB before the resize).
MERGE_PIXELS = 2 * CLIP_PIXELS
#: The most a gpu sample may hold on a card with memory to spare (``sample_pixels_for``): 192 frames of
#: 1080p, 48 of 2160p (1.2 GB). Every DALI sample pays a fixed set-up (~10 ms on an H200, serialised within a
#: process), so a long 4K video cut into 12-frame clips paid it every 12 frames.
MAX_SAMPLE_PIXELS = 4 * CLIP_PIXELS
#: With ``stream_decode``: wanted frames per clip and per merged sample, whatever the resolution (DALI holds
#: one run's sequences, not the sample; the kept frames are small: 512 at 224 px are 77 MB).
STREAM_MAX_FRAMES = 512
#: With ``stream_decode``: wanted frames short videos' clips are merged up to, and one stream takes them as one
#: fed clip at a time (``_gpu.DaliSampler._next_work``). Each stream decodes its fed clip one frame after another,
#: so throughput comes from many streams busy at once: merges of 512 frames left most streams idle while one
#: decoded a queue's worth (4 x 512 frames per take). 120, not a multiple of a streaming run (64 frames): a clip
#: that fills its last run exactly costs a fresh pipeline (``_stream_decoder``).
STREAM_MERGE_FRAMES = 120


@dataclass
class _Work:
    task: VideoTask
    seq: int
    clip: Clip
    cost: int = 0  # host bytes it holds while queued (``_budget``)


@dataclass
class _Sample:
    """What one DALI sample decodes: one clip, or clips of several videos merged into one."""

    parts: list[_Work]
    clip: Clip


def joins(group: list[_Work], item: _Work, max_pixels: int, stream_frames: int | None = None) -> bool:
    """Whether ``item`` may be merged onto the end of ``group`` (one decoder set-up, within ``max_pixels`` of
    decoded frames, or for the streaming decoder the clips' ``stream_cap`` frames, and ``stream_frames``
    where given)."""
    if not group or not can_follow(item.clip, group[-1].clip):
        return False
    _, _, width, height, _ = item.clip.signature  # type: ignore[misc]
    cap = item.clip.stream_cap
    if cap is not None:
        limit = min(cap, stream_frames) if stream_frames else cap
    else:
        limit = frame_budget(width, height, max_pixels)
    return sum(len(w.clip) for w in group) + len(item.clip) <= limit


def group_clips(items: list[_Work], merge: bool = True, max_pixels: int = MERGE_PIXELS,
                stream_frames: int | None = None) -> list[list[_Work]]:
    """Consecutive clips that one decoder set-up can serve (``can_follow``), grouped within ``max_pixels`` of
    decoded frames (or their ``stream_cap`` and ``stream_frames``), in order; nothing muxed yet."""
    groups: list[list[_Work]] = []
    for item in items:
        if merge and groups and joins(groups[-1], item, max_pixels, stream_frames):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def merged_samples(groups: list[list[_Work]]) -> list[_Sample]:
    """Each group's clips merged into one sample; a group whose merge fails is decoded clip by clip."""
    samples = []
    for group in groups:
        try:
            samples.append(_Sample(group, merge_clips([w.clip for w in group]) if len(group) > 1 else group[0].clip))
        except Exception as exc:  # noqa: BLE001 - a merge that fails costs only the merge: decode them one by one
            log.debug("merging %d clips failed (%s); decoding them one by one", len(group), exc)
            samples.extend(_Sample([w], w.clip) for w in group)
    return samples


def spread_pixels(items: list[_Work], samples: int, min_frames: int, max_pixels: int) -> int:
    """A pixel cap per sample that spreads a take's per-sample clips over up to ``samples`` samples instead of
    filling the first: a DALI run decodes its samples in parallel on the pipeline's threads, but a sample's
    frames one after another. In pixels, so clips of any resolution get their share (``joins`` turns it into
    frames per clip); room for the largest clip on top of an even share (clips are never split); at least
    ``min_frames`` frames of the first clip's picture (every sample pays a fixed set-up), at most
    ``max_pixels``. Counts wanted frames, as the memory budget does (exact clips decode more)."""
    per_sample = [w for w in items if w.clip.stream_cap is None and w.clip.signature is not None]
    if samples <= 1 or not per_sample:
        return max_pixels

    def pixels(w: _Work) -> int:
        _, _, width, height, _ = w.clip.signature  # type: ignore[misc]
        return len(w.clip) * max(1, width * height)

    sizes = [pixels(w) for w in per_sample]
    _, _, width, height, _ = per_sample[0].clip.signature  # type: ignore[misc]
    cap = max(min_frames * max(1, width * height), -(-sum(sizes) // samples) + max(sizes) - 1)
    return min(max_pixels, cap)


def sample_pixels_for(gpu_bytes: int, samples_in_flight: int) -> int:
    """Full-size pixels per gpu DALI sample, one long video's clip or several short ones merged: the samples
    in flight keep their RGB frames (before the resize) twice -- decoded, and the picture region cut out of
    them (``pipelines.to_model_input``) -- within a quarter of ``gpu_bytes`` (this sampler's share of the
    card), up to ``MAX_SAMPLE_PIXELS``; never below what one clip held before (``CLIP_PIXELS``).
    An H100 80GB with 4 streams x 4 samples per run: 106 frames of 1080p or 26 of 2160p per sample. The floor
    can exceed a small share: 4 processes x 16 samples on any card hold up to ~38 GB at the floor (8: ~76 GB),
    so layouts with many processes want a big card or fewer streams."""
    fits = gpu_bytes // 4 // max(1, samples_in_flight) // (3 * 2)
    return max(CLIP_PIXELS, min(MAX_SAMPLE_PIXELS, fits))
