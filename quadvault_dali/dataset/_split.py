"""Train/validation/test split by video: deterministic from each video's identity, stratified by label.

Frames of one video are near-duplicates; if they landed on both sides, validation accuracy would
measure memory, not taste. So the unit of the split is the video. Within each class, videos are
ranked by a hash of their id (``_identity.content_id``: the same wherever the library is mounted) and the first
``round(fraction * n)`` go to validation (at least one when the class has two or more videos), the next
``round(test_fraction * n)`` to test (only when every class has ``MIN_TEST_VIDEOS`` or more), so the split does not
depend on input order or on the machine, and adding a video moves no existing one.

Why a test split: validation picks the best epoch and tunes the threshold, so its numbers flatter the model
(an ML review measured 0.70 balanced accuracy on validation for random scores, 0.50 on fresh videos). The test
videos are used for nothing but the final, honest measurement.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Literal, Mapping

Split = Literal["train", "val", "test"]
VAL_FRACTION = 0.2
TEST_FRACTION = 0.15
#: with a class of fewer videos there is no test split: one or two test videos of it would measure little and
#: cost the training much, and a test split of one class measures no balanced accuracy
MIN_TEST_VIDEOS = 10


def _rank_key(vid: str) -> str:
    # Salted so the split order is unrelated to the id order used for folder names.
    return hashlib.sha1(f"split:{vid}".encode("ascii")).hexdigest()


def val_target(n_videos: int, fraction: float = VAL_FRACTION) -> int:
    """How many of a class's ``n_videos`` belong in validation."""
    if n_videos < 2:
        return 0
    return min(n_videos - 1, max(1, round(fraction * n_videos)))


def held_out_target(n_videos: int, fraction: float = TEST_FRACTION) -> int:
    """How many of a class's ``n_videos`` belong in test: none below ``MIN_TEST_VIDEOS``."""
    if n_videos < MIN_TEST_VIDEOS or fraction <= 0.0:
        return 0
    return max(1, round(fraction * n_videos))


def assign_splits(labels: Mapping[str, int], *, existing: Mapping[str, Split] | None = None,
                  fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION,
                  groups: Mapping[str, str] | None = None) -> dict[str, Split]:
    """``{video_id: split}`` for ``labels`` (``{video_id: label}``).

    Videos in ``existing`` keep their split (``--merge``); new videos of a class fill validation, then test,
    up to the class's targets, in hash order. A class made only of existing videos is left as it was.
    ``groups`` (``{video_id: group}``, ``_recordings.recording_groups``): videos of one group go to one side, the
    one a member already has if any, whatever their labels (one flight's chunks labelled differently), unless it
    would take a class's last training video; a group may take a split a little past its target.
    """
    if not 0.0 <= fraction < 1.0 or not 0.0 <= test_fraction < 1.0 or fraction + test_fraction >= 1.0:
        raise ValueError(f"validation and test fractions must be in [0, 1) and leave videos to train on, got "
                         f"{fraction} and {test_fraction}")
    existing = existing or {}
    groups = groups or {}
    result: dict[str, Split] = {}
    # group -> its side, across classes (one flight's chunks labelled differently), the kept videos' first
    placed: dict[str, Split] = {groups.get(vid, vid): side for vid, side in existing.items() if vid in labels}
    # a test split only where every class can give some: one class alone measures no balanced accuracy
    sizes = Counter(labels.values())
    if len(sizes) < 2 or min(sizes.values()) < MIN_TEST_VIDEOS:
        test_fraction = 0.0
    for label in sorted(set(labels.values())):
        members = sorted((vid for vid, lab in labels.items() if lab == label), key=_rank_key)
        kept = [vid for vid in members if vid in existing]
        new = [vid for vid in members if vid not in existing]
        for vid in kept:
            result[vid] = existing[vid]
        held = Counter(existing[vid] for vid in kept)
        targets = {"val": val_target(len(members), fraction), "test": held_out_target(len(members), test_fraction)}
        need = {split: max(0, targets[split] - held[split]) for split in ("val", "test")}
        side_of = {groups.get(vid, vid): existing[vid] for vid in kept}  # a recording already split: its side
        size = Counter(groups.get(vid, vid) for vid in new)
        held_out = held["val"] + held["test"]
        for vid in new:
            key = groups.get(vid, vid)
            room = held_out + size[key] < len(members)  # never taking the class's last training video
            if key not in side_of and key in placed:  # the group's videos of another class chose a side
                side_of[key] = placed[key] if placed[key] == "train" or room else "train"
            elif key not in side_of:  # to validation, then test, while they want more
                wanting = next((split for split in ("val", "test") if need[split] > 0), None)
                side_of[key] = wanting if wanting and room else "train"
            placed.setdefault(key, side_of[key])
            split = side_of[key]
            result[vid] = split  # type: ignore[assignment]
            if split != "train":
                need[split] = max(0, need[split] - 1)
                held_out += 1
    return result
