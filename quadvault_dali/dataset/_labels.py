"""Reading and validating ``labels.json``: every problem is found before any work starts.

The file users write is ``{"highlights": [...], "normal": [...]}``. Each entry is a video file, a
folder (every video under it) or a glob pattern (``"beach/**/*.mp4"``, expanded through discovery:
see ``_patterns``); relative entries resolve
against the labels file's folder, ``~`` expands to the home folder. A labelling mistake found after an
hour of frame extraction is an hour lost, so validation collects *all* problems and raises one
``LabelsError`` whose ``problems`` list names each one:

- ``<class>[i]: <path> does not exist`` (a missing file or folder; skipped with ``skip_missing``)
- ``<class>[i]: <path> is not readable`` (permission; skipped with ``skip_missing``)
- ``<class>[i]: <path> is not a video file (expected one of .mp4, .mov, ...)``
- ``<class>[i]: folder <path> holds no videos`` / ``pattern <p> matches no videos``
  (skipped with ``skip_missing``)
- ``<path> is labelled both highlight and normal (highlights[i], normal[j])``
- ``<a> (highlights[i]) and <b> (normal[j]) are copies of the same video, labelled highlight and normal``
- ``<class>[i]: cannot read <path>: <reason>`` / ``<class>[i]: cannot access <path>: <reason>``
- ``<class>[i]: <path> has a name that is not valid UTF-8; rename the file``
- ``"<class>" appears twice: merge its lists into one (only the last would count)``
- ``"<class>" is empty: label at least one video as <class>``
- ``unknown key "<key>" (expected "highlights" and "normal"; did you mean "..."?)``
- ``"<class>" must be a list of paths, got <type>`` / ``<class>[i]: expected a path string, got <type>``

A video listed twice in one class is not an error (a folder and a file in it, say): it is kept once
and reported in ``Labels.warnings``. So is a copy of a video (a hard link, or a file with the same
content under another name, see ``_identity``): one clip on both sides of the split would inflate
validation accuracy.
"""

from __future__ import annotations

import codecs
import difflib
import json
import logging
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..discovery import VIDEO_EXTENSIONS, find_videos, is_video_file, non_utf8_name
from ..probe import special_file_kind
from ..errors import LabelsError
from ._identity import content_ids
from ._patterns import GLOB_CHARS, expand_pattern, missing_folder

log = logging.getLogger(__name__)

LabelName = Literal["highlight", "normal"]
#: labels.json key -> (label value, label name). Highlight is the positive class (1).
CLASSES: dict[str, tuple[int, LabelName]] = {"highlights": (1, "highlight"), "normal": (0, "normal")}


@dataclass(frozen=True)
class LabelledVideo:
    """One video and its class; ``path`` is absolute and resolved, ``video_id`` its ``content_id``."""

    path: Path
    label: int
    entry: str  # where it came from, e.g. 'highlights[3]', for messages
    video_id: str

    @property
    def label_name(self) -> LabelName:
        return "highlight" if self.label == 1 else "normal"


@dataclass
class Labels:
    """The validated labels: videos in a stable order (highlights first, then normal, each sorted)."""

    source: Path
    videos: list[LabelledVideo]
    #: folders and files named by the entries; outputs must never be written inside them
    roots: list[Path] = field(default_factory=list)
    #: entries skipped with ``skip_missing``, and duplicates (kept once)
    warnings: list[str] = field(default_factory=list)

    def count(self, label: int) -> int:
        return sum(1 for v in self.videos if v.label == label)


def _type_name(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


def _resolve(entry: str, base: Path) -> Path:
    path = Path(os.path.expanduser(entry))
    return path if path.is_absolute() else base / path


def _in_other_unicode_form(path: Path) -> Path | None:
    """``path`` as it exists with its accented letters composed (NFC) or decomposed (NFD), if it does only so:
    macOS writes names decomposed, Linux and Windows keep what they are given, and a labels file typed on one
    names files copied from the other."""
    for form in ("NFC", "NFD"):
        other = Path(unicodedata.normalize(form, str(path)))
        if other != path:
            try:
                if other.exists():
                    return other
            except OSError:
                continue
    return None


def _other_case(path: Path) -> str:
    """`` (did you mean NAME?)`` when the folder holds ``path``'s name in another case (UPPER.MP4 typed upper.mp4)."""
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.lower() == path.name.lower()]
    except OSError:
        return ""
    return f" (did you mean {names[0]!r}? names are case-sensitive here)" if names else ""


def _expand(entry: str, where: str, base: Path, problems: list[str], soft: list[str],
            roots: list[Path]) -> list[Path]:
    """The videos one entry names; problems go to ``problems``, the ones ``--skip-missing`` skips (missing,
    unreadable, matching nothing) to ``soft``."""
    path = _resolve(entry, base)
    try:
        exists = path.exists()
    except OSError as exc:  # a folder on the way that cannot be entered, a name too long
        soft.append(f"{where}: cannot access {path}: {exc.strerror or exc}")
        return []
    if not exists:  # "Küste" typed on a Mac (decomposed) names the folder a Linux disk holds composed, or back
        other = _in_other_unicode_form(path)
        if other is not None:
            path, exists = other, True
    unreadable: list[str] = []

    def unreadable_folder(p: Path, exc: OSError) -> None:
        unreadable.append(f"{where}: {p} is not readable")

    if GLOB_CHARS & set(entry) and not exists:  # "DJI_0001 [edited].mp4" is a name, not a pattern
        _, found = expand_pattern(path, on_error=unreadable_folder)
        for form in ("NFC", "NFD"):  # the pattern in the other Unicode form
            if not found and unicodedata.normalize(form, str(path)) != str(path):
                _, found = expand_pattern(Path(unicodedata.normalize(form, str(path))), on_error=unreadable_folder)
        roots.extend(sorted({video.parent for video in found}))  # outputs may still go beside them
        soft.extend(unreadable)
        if not found and not unreadable:
            missing = missing_folder(path)
            literal = str(path).replace("[", "[[]")  # "[2023]*.mp4": a class of 2, 0 and 3, not "[2023]"
            hint = ""
            if "[" in entry and expand_pattern(Path(literal))[1]:
                hint = (f" ('[...]' matches one of the letters inside; to match a '[' in a name write '[[]': "
                        f"{entry.replace('[', '[[]')!r})")
            soft.append(f"{where}: pattern {entry!r} matches no videos"
                        + (f" ({missing} does not exist)" if missing is not None else "") + hint)
        return found
    if not exists:
        soft.append(f"{where}: {path} does not exist" + _other_case(path))
        return []
    if not os.access(path, os.R_OK):
        soft.append(f"{where}: {path} is not readable")
        return []
    if path.is_dir():
        roots.append(path)
        found = find_videos([path], on_error=unreadable_folder)
        soft.extend(unreadable)
        if not found and not unreadable:
            soft.append(f"{where}: folder {path} holds no videos")
        return found
    if path.name.startswith(".") and path.suffix.lower() in VIDEO_EXTENSIONS:
        problems.append(f"{where}: {path} is a hidden file (its name starts with '.', as macOS's ._ metadata files' "
                        "do): QuadVault skips those; rename it without the leading '.'")
        return []
    if not is_video_file(path):
        problems.append(f"{where}: {path} is not a video file (expected one of "
                        f"{', '.join(sorted(VIDEO_EXTENSIONS))})")
        return []
    roots.append(path.parent)
    return [path]


def _dedupe_copies(first_seen: dict[Path, tuple[int, str]], problems: list[str],
                   duplicates: list[str]) -> list[LabelledVideo]:
    """One ``LabelledVideo`` per distinct content; copies in one class are kept once, copies in both
    classes are a problem (like one path listed in both)."""
    ids = content_ids(first_seen)
    by_content: dict[str, LabelledVideo] = {}
    for path, (label, where) in first_seen.items():
        vid = ids[path]
        if isinstance(vid, OSError):
            problems.append(f"{where}: cannot read {path}: {vid.strerror or vid}")
            continue
        prior = by_content.get(vid)
        if prior is None:
            by_content[vid] = LabelledVideo(path, label, where, vid)
        elif prior.label != label:
            problems.append(f"{prior.path} ({prior.entry}) and {path} ({where}) are copies of the same "
                            f"video, labelled {prior.label_name} and {'highlight' if label else 'normal'}")
        else:
            duplicates.append(f"{where}: {path} is a copy of {prior.path} ({prior.entry}); kept once")
    return list(by_content.values())


def parse_labels(data: object, *, base: Path, source: Path, skip_missing: bool = False,
                 problems: list[str] | None = None, one_class: bool = False) -> Labels:
    """Validates already-parsed JSON ``data``; relative entries resolve against ``base``. ``problems``
    found while reading the file are reported with the rest. ``one_class``: one class may be empty (evaluating
    recall on a batch of new highlights needs no normal video; training does)."""
    problems = list(problems or [])
    skipped: list[str] = []
    duplicates: list[str] = []
    roots: list[Path] = []
    if not isinstance(data, dict):
        raise LabelsError("invalid labels file", path=source, problems=[
            f'the top level must be an object like {{"highlights": [...], "normal": [...]}}, '
            f"got {_type_name(data)}"])
    for key in data:
        if key not in CLASSES:
            close = difflib.get_close_matches(str(key), list(CLASSES), n=1)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            problems.append(f'unknown key "{key}" (expected "highlights" and "normal"{hint})')

    first_seen: dict[Path, tuple[int, str]] = {}  # path -> (label, entry)
    identity: dict[tuple[int, int], Path] = {}  # (device, inode): a hard link is the same footage
    by_class: dict[str, int] = {}
    missing = 0  # problems --skip-missing would have skipped: only then is it the hint
    for key, (label, name) in CLASSES.items():
        entries = data.get(key, [])
        if not isinstance(entries, list):
            problems.append(f'"{key}" must be a list of paths, got {_type_name(entries)}')
            by_class[key] = -1  # do not also report it as empty
            continue
        count = 0
        problems_before = len(problems)
        for i, entry in enumerate(entries):
            where = f"{key}[{i}]"
            if not isinstance(entry, str) or not entry.strip():
                problems.append(f"{where}: expected a path string, got {_type_name(entry)}"
                                + (" (empty)" if isinstance(entry, str) else ""))
                continue
            soft: list[str] = []
            expanded = _expand(entry.strip(), where, base, problems, soft, roots)
            (skipped if skip_missing else problems).extend(soft)
            missing += 0 if skip_missing else len(soft)
            # a folder or pattern's file is skipped by --skip-missing, as a missing one is: one oddly named file must
            # not block a 500-clip folder; a file named on its own is the user's to rename
            listed = any(c in entry for c in "*?[") or len(expanded) != 1 or expanded[0].name != Path(entry).name
            for found in expanded:
                shown = non_utf8_name(found)  # the dataset table stores paths as UTF-8 text
                if shown is not None:
                    line = f"{where}: {shown} has a name that is not valid UTF-8; rename the file"
                    if listed and skip_missing:
                        skipped.append(line)
                    else:
                        problems.append(line + (" (or leave it out with --skip-missing)" if listed else ""))
                    continue
                resolved = own = found.resolve()
                try:
                    st = resolved.stat()
                except OSError:
                    pass  # reported by the dataset step that reads it
                else:
                    kind = special_file_kind(st.st_mode)
                    if kind is not None:  # opened to read, a named pipe waits for a writer for ever
                        problems.append(f"{where}: {found} is {kind}, not a video file")
                        continue
                    resolved = identity.setdefault((st.st_dev, st.st_ino), resolved)
                prior = first_seen.get(resolved)
                if prior is None:
                    first_seen[resolved] = (label, where)
                    count += 1
                elif prior[0] != label:
                    shown = resolved if own == resolved else f"{resolved} (and its hard link {own})"
                    problems.append(f"{shown} is labelled both highlight and normal ({prior[1]}, {where})")
                else:
                    duplicates.append(f"{where}: {resolved} is already listed ({prior[1]}); kept once")
        # a class whose entries all failed is already explained by those problems
        by_class[key] = count if count or len(problems) == problems_before else -1
    videos = _dedupe_copies(first_seen, problems, duplicates)
    for key, (_, name) in CLASSES.items():
        if by_class.get(key, 0) == 0 and not (one_class and any(n > 0 for n in by_class.values())):
            problems.append(f'"{key}" is empty: label at least one video as {name}'
                            + (" (after skipping missing entries)" if skipped else ""))
    if problems:
        raise LabelsError(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in labels file",
                          path=source, problems=problems,
                          hint="fix them and run again" + ("; --skip-missing skips missing entries" if missing
                                                           else ""))
    for message in [*skipped, *duplicates]:  # the caller reports Labels.warnings (once)
        log.debug("labels: %s", message)
    videos.sort(key=lambda v: (-v.label, str(v.path)))
    return Labels(source=source, videos=videos, roots=sorted(set(roots)),
                  warnings=[f"skipped: {m}" for m in skipped] + duplicates)


#: A labels file is a list of paths; anything this big is something else (a video given by mistake).
MAX_LABELS_BYTES = 64 * 1024 * 1024


_UNICODE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                 (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _labels_text(raw: bytes, source: Path) -> str:
    """The labels file as text. UTF-8 (with or without the BOM Windows editors write) and UTF-16/32 with a BOM
    (Notepad's "Unicode") are read; a file in a legacy code page is named with the byte and where it is, since its
    accented folder names would not match the library's; anything with NUL bytes is binary (a video, most
    likely, given where the labels go)."""
    for bom, encoding in _UNICODE_BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise LabelsError(f"is not valid {encoding.upper()} text ({exc.reason} at byte {exc.start})",
                                  path=source, hint="save it as UTF-8") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if b"\0" in raw[:65536]:
            raise LabelsError("is not a labels file (binary, not JSON text)", path=source,
                              hint='a labels file looks like {"highlights": [...], "normal": [...]}; to score one '
                                   "video, use quadvault test-video") from None
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise LabelsError(f"is not UTF-8 text: byte 0x{raw[exc.start]:02X} at line {line}, column {column} (saved in "
                          "another encoding, such as Windows-1252 or Latin-1)", path=source,
                          hint="save it as UTF-8: in most editors, Save As with the encoding UTF-8") from None


def load_labels(path: str | os.PathLike[str], *, skip_missing: bool = False, one_class: bool = False) -> Labels:
    """Reads and validates a labels file; raises ``LabelsError`` listing every problem at once. ``one_class``: as
    ``parse_labels``."""
    source = Path(path)
    try:
        size = source.stat().st_size
        if size > MAX_LABELS_BYTES:
            raise LabelsError(f"is {size / 2**20:,.0f} MiB: not a labels file (expected a small JSON file)",
                              path=source, hint='a labels file looks like {"highlights": [...], "normal": [...]}')
        raw = source.read_bytes()
    except FileNotFoundError:
        raise LabelsError("labels file does not exist", path=source) from None
    except OSError as exc:
        raise LabelsError(f"cannot read labels file: {exc}", path=source) from None
    text = _labels_text(raw, source)
    repeated: list[str] = []

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        seen: dict[str, object] = {}
        for key, value in items:
            if key in seen and key in CLASSES:
                repeated.append(f'"{key}" appears twice: merge its lists into one (only the last would count)')
            seen[key] = value
        return seen

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise LabelsError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                          path=source) from None
    except RecursionError:
        raise LabelsError("not a labels file: JSON nested too deeply", path=source) from None
    return parse_labels(data, base=source.resolve().parent, source=source, skip_missing=skip_missing,
                        problems=repeated, one_class=one_class)
