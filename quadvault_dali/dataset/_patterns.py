"""Glob entries in ``labels.json`` ("beach/**/*.mp4"), expanded through discovery, not ``glob.glob``.

``glob.glob`` walks on its own: it lists a camera's proxy files (.LRF beside the .MP4) and NAS
thumbnail folders (@eaDir) that discovery skips, so one clip could land in train and its proxy in
validation; it reads brackets in the folders above the pattern as a pattern; and ``**`` follows
symlink loops without end. Here the pattern is split into the folder it starts from (the leading
parts that exist as folders, so "[2023] trip" is a name) and the rest, which is matched against
the videos ``find_videos`` finds under that folder, or against any folder between them (a pattern
naming folders takes the videos under them, as a folder entry does). Matching ignores case, as
discovery does for extensions: cameras write DJI_0001.MP4, users type *.mp4.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from ..discovery import find_videos

GLOB_CHARS = frozenset("*?[")


def _segment_regex(segment: str) -> str:
    """One path segment of a glob as a regex (``*``, ``?``, ``[...]``; never crossing ``/``)."""
    out, i = [], 0
    while i < len(segment):
        c = segment[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = segment.find("]", i + 2 if segment[i + 1:i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = segment[i + 1:end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A ``/``-separated glob (``**`` = any number of folders) as a full-match regex."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    regex = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
        else:
            regex += _segment_regex(part) + ("" if last else "/")
    return re.compile(regex, re.IGNORECASE)  # camera names mix cases (DJI_0001.MP4), as discovery allows


def split_pattern(path: Path) -> tuple[Path, str]:
    """(the folder a pattern starts from, the pattern below it): leading parts that exist as folders are
    names even with brackets in them; the first part that does not (a pattern, or a name in another case)
    starts the pattern."""
    parts = path.parts
    start = Path(parts[0])
    for i, part in enumerate(parts[1:], 1):
        candidate = start / part
        if candidate.is_dir():  # as named (brackets and all): the search starts below it
            start = candidate
            continue
        return start, "/".join(parts[i:])
    return start, ""


def expand_pattern(path: Path, on_error: Callable[[Path, OSError], None] | None = None) -> tuple[Path, list[Path]]:
    """(the folder searched, the videos under it matching ``path``), sorted as ``find_videos`` sorts them."""
    root, rest = split_pattern(path)
    if not rest or not root.is_dir():
        return root, []
    regex = pattern_regex(rest)
    found = []
    for video in find_videos([root], on_error=on_error):
        relative = video.relative_to(root).as_posix()
        pieces = relative.split("/")
        if any(regex.fullmatch("/".join(pieces[:k])) for k in range(1, len(pieces) + 1)):
            found.append(video)
    return root, found
