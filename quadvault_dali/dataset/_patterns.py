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

import os
import re
from pathlib import Path
from typing import Callable

from ..discovery import find_videos

GLOB_CHARS = frozenset("*?[")


def _class_regex(body: str) -> str | None:
    """A ``[...]`` body as a regex class, as fnmatch reads it (``!`` negates, ``^`` is literal); ``None``
    when it is no valid class ("[2023-10-05]": a bad range), so the bracket is taken literally."""
    negate = body.startswith("!")
    # "^" (literal in a glob), "\\", "[", "&", "~" and "|" are members, never a negation, an escape, the start of
    # a nested set or a set operation: ``re`` warns (FutureWarning, on the user's terminal) that it may one day
    # read "[[" as a nested set, and "[[]" is how fnmatch escapes "["
    regex = "[" + "^" * negate + "".join("\\" + c if c in "^\\[&~|" else c for c in body[negate:]) + "]"
    try:
        re.compile(regex)
    except re.error:
        return None
    return regex


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
            j = i + 1  # as fnmatch: a "]" first in the class (after a "!") is a member, not its end
            j += segment[j:j + 1] == "!"
            j += segment[j:j + 1] == "]"
            end = segment.find("]", j)
            cls = _class_regex(segment[i + 1:end]) if end > i else None
            if cls is None:
                out.append(re.escape(c))
            else:
                out.append(cls)
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A ``/``-separated glob (``**`` = any number of folders) as a full-match regex, ignoring case."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    regex = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
        else:
            regex += _segment_regex(part) + ("" if last else "/")
    return re.compile(regex, re.IGNORECASE)  # camera names mix cases (DJI_0001.MP4), as discovery allows


def could_lead_to_a_match(pattern: str, relative: str) -> bool:
    """Whether a folder at ``relative`` (below the pattern's start) can hold a match: its parts match the
    pattern's first parts (anything does after a ``**``)."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    for i, name in enumerate(p for p in relative.split("/") if p):
        if i >= len(parts):
            return False
        if parts[i] == "**":
            return True
        if not re.fullmatch(_segment_regex(parts[i]), name, re.IGNORECASE):
            return False
    return True


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


def missing_folder(path: Path) -> Path | None:
    """The folder a pattern names literally that does not exist in any case (``/typo/*.mp4`` -> ``/typo``),
    for the message when it matches nothing; ``None`` where its first missing part is a pattern."""
    root, rest = split_pattern(path)
    first = rest.split("/")[0] if rest else ""
    if not first or GLOB_CHARS & set(first) or "/" not in rest:
        return None
    try:
        if any(entry.name.lower() == first.lower() for entry in os.scandir(root)):
            return None
    except OSError:
        return None
    return root / first


def expand_pattern(path: Path, on_error: Callable[[Path, OSError], None] | None = None) -> tuple[Path, list[Path]]:
    """(the folder searched, the videos under it matching ``path``), sorted as ``find_videos`` sorts them.

    ``on_error`` hears only of unreadable folders that could hold a match.
    """
    root, rest = split_pattern(path)
    if not rest or not root.is_dir():
        return root, []
    regex = pattern_regex(rest)

    def relevant_error(folder: Path, exc: OSError) -> None:
        try:
            relative = folder.relative_to(root).as_posix()
        except ValueError:
            relative = ""
        if on_error is not None and could_lead_to_a_match(rest, relative):
            on_error(folder, exc)

    def matched(relative: str) -> bool:  # the path, or a folder above it, matches (a matched folder is taken whole)
        pieces = relative.split("/")
        return any(regex.fullmatch("/".join(pieces[:k])) for k in range(1, len(pieces) + 1))

    def may_match(folder: Path) -> bool:  # "/typo/*.mp4" searches "/": only folders named like "typo"
        relative = folder.relative_to(root).as_posix()
        return could_lead_to_a_match(rest, relative) or matched(relative)

    found = [video for video in find_videos([root], on_error=relevant_error, descend=may_match)
             if matched(video.relative_to(root).as_posix())]
    return root, found
