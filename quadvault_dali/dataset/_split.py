"""Train/validation split by video: deterministic from each video's identity, stratified by label.

Frames of one video are near-duplicates; if they landed on both sides, validation accuracy would
measure memory, not taste. So the unit of the split is the video. Within each class, videos are
ranked by a hash of their id (``_identity.content_id``: the same wherever the library is mounted) and the first ``round(fraction * n)`` go to validation (at least one
when the class has two or more videos), so the split does not depend on input order or on the
machine, and adding a video moves no existing one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Literal, Mapping

Split = Literal["train", "val"]
VAL_FRACTION = 0.2


def _rank_key(vid: str) -> str:
    # Salted so the split order is unrelated to the id order used for folder names.
    return hashlib.sha1(f"split:{vid}".encode("ascii")).hexdigest()


def val_target(n_videos: int, fraction: float = VAL_FRACTION) -> int:
    """How many of a class's ``n_videos`` belong in validation."""
    if n_videos < 2:
        return 0
    return min(n_videos - 1, max(1, round(fraction * n_videos)))


def assign_splits(labels: Mapping[str, int], *, existing: Mapping[str, Split] | None = None,
                  fraction: float = VAL_FRACTION, groups: Mapping[str, str] | None = None) -> dict[str, Split]:
    """``{video_id: split}`` for ``labels`` (``{video_id: label}``).

    Videos in ``existing`` keep their split (``--merge``); new videos of a class fill validation up
    to the class's target, in hash order. A class made only of existing videos is left as it was.
    ``groups`` (``{video_id: group}``, ``_recordings.recording_groups``): videos of one group and class go to
    one side, the one a member already has if any; a group may take validation a little past the target.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    existing = existing or {}
    groups = groups or {}
    result: dict[str, Split] = {}
    for label in sorted(set(labels.values())):
        members = sorted((vid for vid, lab in labels.items() if lab == label), key=_rank_key)
        kept = [vid for vid in members if vid in existing]
        new = [vid for vid in members if vid not in existing]
        for vid in kept:
            result[vid] = existing[vid]
        have_val = sum(1 for vid in kept if existing[vid] == "val")
        need = min(len(new), max(0, val_target(len(members), fraction) - have_val))
        side_of = {groups.get(vid, vid): existing[vid] for vid in kept}  # a recording already split: its side
        size = Counter(groups.get(vid, vid) for vid in new)
        in_val = have_val
        for vid in new:
            key = groups.get(vid, vid)
            if key not in side_of:  # to validation while it wants more, never taking the class's last training video
                side_of[key] = "val" if need > 0 and in_val + size[key] < len(members) else "train"
            result[vid] = side_of[key]
            need -= result[vid] == "val"
            in_val += result[vid] == "val"
    return result
