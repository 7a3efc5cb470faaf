"""Finding the videos in a library: recursive, case-insensitive, stable order, never fatal."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Callable, Iterable, Iterator

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".mov", ".m4v", ".mkv", ".avi", ".mts", ".m2ts", ".ts", ".webm", ".mpg", ".mpeg", ".3gp",
    ".insv", ".lrv", ".lrf", ".wmv", ".flv",
})
#: Low-resolution proxies cameras write beside each recording (GoPro .LRV, DJI .LRF).
PROXY_EXTENSIONS = frozenset({".lrv", ".lrf"})
#: The clip list ``quadvault reel`` writes beside each reel (``best.mp4`` -> ``best.mp4.clips.csv``; before
#: 2026-11-27 ``best.clips.csv``, which discovery still recognises by stem).
REEL_SIDECAR_SUFFIX = ".clips.csv"
#: Folders that hold system or application data, never footage.
SKIPPED_DIRS = frozenset({
    "$recycle.bin", "system volume information", "lost+found", ".trashes", ".spotlight-v100", ".fseventsd",
    "@eadir", "#recycle", "__macosx",
})


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(("._", "."))


def proxy_original_stems(proxy: Path) -> tuple[str, ...]:
    """Lower-case stems the full-resolution original of a proxy file may have in the same folder.

    DJI and older GoPros keep the stem (``DJI_0001.LRF`` / ``DJI_0001.MP4``); GoPro HERO5+ swaps the
    prefix (``GL010001.LRV`` / ``GX010001.MP4`` for HEVC, ``GH010001.MP4`` for H.264).
    """
    stem = proxy.stem.lower()
    if len(stem) == 8 and stem.startswith("gl"):
        return stem, "gx" + stem[2:], "gh" + stem[2:]
    return (stem,)


def non_utf8_name(path: str | os.PathLike[str]) -> str | None:
    """The path as it can be shown (undecodable bytes as ``\\xNN``) when it is not valid UTF-8, else ``None``.

    Parquet stores text as UTF-8, so such a name (an old NAS or Windows copy) cannot be a scan or
    dataset row.
    """
    name = os.fspath(path)
    try:
        name.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def _linked(path: Path) -> bool:
    """Whether ``path`` reaches its file through a symbolic link (itself or a folder on the way)."""
    return os.path.realpath(path) != os.path.abspath(path)


def find_videos(roots: Iterable[str | os.PathLike[str]], *,
                on_error: Callable[[Path, OSError], None] | None = None,
                descend: Callable[[Path], bool] | None = None) -> list[Path]:
    """Every video file under ``roots`` (files are taken as given), sorted, each real file once.

    Hidden and system folders are skipped; symlinked folders are followed, but a folder already seen
    (by device and inode) is not entered again, so link loops end. Linked folders are entered after every
    real one, and a file met through links and under its own name keeps its own, so its path stays the same
    whatever links come and go. Unreadable folders are reported through ``on_error`` (default: a warning)
    and skipped. A camera's low-resolution proxy (.LRV, .LRF)
    is skipped when its original is in the same folder: scoring both would list every highlight twice.
    So is a reel this tool made (its ``.clips.csv`` beside it): made of highlights, it would top the next
    scan. Files named as roots are always taken. ``descend`` (a folder below a root -> whether to enter it)
    prunes the walk: a glob pattern need not read folders that cannot match.
    """
    report = on_error or (lambda p, e: log.warning("cannot read folder %s: %s", p, e.strerror or e))
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: dict[tuple[int, int], int] = {}  # (device, inode) -> its index in ``found``
    found: list[Path] = []
    skipped = {"proxy": 0, "reel": 0}  # proxies beside their originals, reels beside their clip lists

    def add_file(path: Path) -> None:
        try:
            st = path.stat()
        except OSError as exc:
            report(path, exc)
            return
        key = (st.st_dev, st.st_ino)
        if key not in seen_files:
            seen_files[key] = len(found)
            found.append(path)
        elif _linked(found[seen_files[key]]) and not _linked(path):
            # the file itself, not a link met first: a new link sorting earlier must not change its path
            # (a scan would then record the same video twice)
            found[seen_files[key]] = path

    def visit(folder: Path) -> Iterator[Path]:
        """Takes ``folder``'s videos in name order, yielding each real subfolder where it comes: the caller walks
        it there (a stack of these, not recursion: a library 1,000 folders deep passed Python's recursion
        limit and the scan died)."""
        try:
            st = folder.stat()
        except OSError as exc:
            report(folder, exc)
            return
        if (st.st_dev, st.st_ino) in seen_dirs:
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            report(folder, exc)
            return
        originals = {Path(e.name).stem.lower() for e in entries
                     if is_video_file(Path(e.name)) and Path(e.name).suffix.lower() not in PROXY_EXTENSIONS}
        reels = {e.name[: -len(REEL_SIDECAR_SUFFIX)].lower() for e in entries
                 if e.name.lower().endswith(REEL_SIDECAR_SUFFIX)}
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                dangling = not is_dir and entry.is_symlink() and not path.exists()
            except OSError as exc:
                report(path, exc)
                continue
            if dangling and not is_video_file(path):  # a linked folder whose disk is not there
                report(path, FileNotFoundError(errno.ENOENT, "link target not found", str(path)))
                continue
            if is_dir:
                if entry.name.startswith(".") or entry.name.lower() in SKIPPED_DIRS:
                    continue
                if descend is not None and not descend(path):
                    continue
                if entry.is_symlink():  # after every real folder: a link sorting first must not claim them
                    linked.append(path)
                else:
                    yield path
            elif is_video_file(path):
                if path.suffix.lower() in PROXY_EXTENSIONS and originals.intersection(proxy_original_stems(path)):
                    skipped["proxy"] += 1
                elif path.name.lower() in reels or path.stem.lower() in reels:
                    skipped["reel"] += 1
                else:
                    add_file(path)

    def walk(top: Path) -> None:
        stack = [visit(top)]
        while stack:
            folder = next(stack[-1], None)
            if folder is None:
                stack.pop()
            else:
                stack.append(visit(folder))

    linked: list[Path] = []  # symlinked folders met on the way, walked once the real ones are
    for root in roots:
        root_path = Path(root)
        try:
            st = root_path.stat()
        except FileNotFoundError:
            report(root_path, FileNotFoundError(errno.ENOENT, "No such file or folder", str(root_path)))
            continue
        except (OSError, ValueError) as exc:  # a folder above it that cannot be entered, a path past PATH_MAX
            report(root_path, exc if isinstance(exc, OSError) else OSError(errno.EINVAL, str(exc)))
            continue
        if stat.S_ISDIR(st.st_mode):
            walk(root_path)
        else:
            add_file(root_path)
    while linked:
        walk(linked.pop(0))
    if skipped["proxy"]:
        log.info("skipped %d low-resolution proxy files (.LRV/.LRF) whose originals are beside them",
                 skipped["proxy"])
    if skipped["reel"]:
        log.info("skipped %d highlight reels made by quadvault (a %s beside them)", skipped["reel"],
                 REEL_SIDECAR_SUFFIX)
    return sorted(found, key=lambda p: str(p))
