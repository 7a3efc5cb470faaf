"""Which labelled videos are chunks of one recording, so the train/validation split keeps them together.

Drone and action cameras split a long flight into files of about 4 GB (DJI_0001.MP4, DJI_0002.MP4, ...): the
same scene, seconds apart. With the chunks on both sides of the split, validation scores footage training has
all but seen, and the threshold and the best epoch are tuned on that flattery. A camera closes each chunk as
the next one starts, so in one folder, in time order, a chunk's modification time is the previous chunk's
plus its own duration. Copies that kept their times (``cp -p``, ``rsync -a``, a card reader) still show it;
copies that did not simply are not grouped, as before.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Mapping

log = logging.getLogger(__name__)

#: How far a chunk's mtime may be from the previous one's plus its duration (a quarter of the duration at most):
#: FAT keeps times to 2 s, and a camera may stamp a file a moment after its last frame
TOLERANCE_S = 3.0


def recording_groups(videos: Mapping[str, Path], durations: Mapping[str, float]) -> dict[str, str]:
    """``{video_id: group}``: videos of one recording share the group (the first chunk's id); the others are
    alone in theirs. ``durations``: seconds, for the videos that were probed (the rest are not grouped)."""
    group = {vid: vid for vid in videos}
    by_folder: dict[Path, list[tuple[int, str]]] = defaultdict(list)
    for vid, path in videos.items():
        try:
            by_folder[path.parent].append((os.stat(path).st_mtime_ns, vid))
        except OSError:
            continue
    for chunks in by_folder.values():
        chunks.sort()
        for (before_ns, before), (after_ns, after) in zip(chunks, chunks[1:]):
            length = durations.get(after)
            # a quarter of a short clip at most: files copied at one moment (mtimes 0 s apart) are not 3-s chunks
            if length and abs((after_ns - before_ns) / 1e9 - length) <= min(TOLERANCE_S, length / 4):
                group[after] = group[before]
    joined = len(group) - len(set(group.values()))
    if joined:
        log.info("%d labelled videos continue a recording in the file before them (one flight split into "
                 "chunks): each recording stays on one side of the train/validation split", joined)
    return group
