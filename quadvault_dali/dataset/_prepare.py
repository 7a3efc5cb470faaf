"""``prepare-dataset``: labelled videos -> one JPEG per sampled second + ``dataset.parquet``.

``--merge`` turns a re-run into an update: a video whose content is unchanged (same ``video_id``,
see ``_identity``; a moved or renamed file keeps it) and whose frames are all on disk is not decoded
again; every known video keeps its split; a
re-labelled video only changes its label; videos no longer labelled are dropped and their frames
deleted. Deletion is limited to ``OUT/frames/<video_id>/`` folders this dataset wrote, and happens
only after the new ``dataset.parquet`` is in place, so a crash leaves a consistent dataset.

A labelled file that crashes the decoder in native code costs one run: the next one finds it in the
journal of videos in flight, checks it alone in a child process and leaves it out (``_crashes``).

An interrupted run loses no finished video: each video's folder gets a manifest (``.frames.json``: the
settings, its rows) once all its frames are written, and a re-run of the same command reuses the folders
whose manifest matches (``dataset.parquet`` is only written at the end: a run killed at 95 % used to start
over). ``--overwrite`` removes the old ``dataset.parquet`` before it writes a frame, so an interrupted rebuild
never leaves the old table pointing at frames of the new size; run the command again without
``--overwrite`` to go on.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .._files import FolderLock, remove_dead_temporaries
from .._mounts import within_on_disk
from ..errors import DatasetError, OutputError, QuadvaultError
from ..probe import read_color_transfer
from ..progress import progress_bar
from ..sampling import SamplingMode, create_sampler
from ..sampling._colour import is_hdr
from ..scan.crashguard import CrashJournal, StallWatch
from ._crashes import JOURNAL_TAG, DecoderCrashes, isolate_crashers
from ._jpeg import JPEG_QUALITY, encode_jpegs, write_atomic
from ._labels import Labels, LabelledVideo, load_labels
from ._recordings import recording_groups
from ._shared_footage import (FINGERPRINT_BYTES, NARROW_ASPECT, WIDE_ASPECT, SharedFootage, frame_aspect,
                              frame_fingerprints, join_groups, shared_footage)
from ._split import TEST_FRACTION, Split, assign_splits
from ._table import DATASET_FILE, FRAMES_DIR, MANIFEST, read_dataset, table_format_version, write_dataset

log = logging.getLogger(__name__)
#: pairs of videos named one by one in the warnings about shared footage; the rest are counted
_LISTED_PAIRS = 10


@dataclass
class PrepareResult:
    """What ``prepare_dataset`` did; the CLI prints it, tests check it."""

    path: Path
    frames: int
    frames_by_label: dict[int, int]
    videos_by_split: dict[str, int]
    extracted: list[Path] = field(default_factory=list)
    reused: list[Path] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # video paths no longer labelled
    relabelled: list[Path] = field(default_factory=list)  # reused videos whose label changed (--merge)
    failed: list[tuple[Path, QuadvaultError]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: labelled videos that show the same footage (trimmed or re-encoded copies): kept on one side of the split
    shared_footage: list[SharedFootage] = field(default_factory=list)


def frame_name(timestamp_s: float) -> str:
    """File name of the frame at ``timestamp_s``: sortable, millisecond precision (``000012.033.jpg``)."""
    return f"{timestamp_s:010.3f}.jpg"


def _check_out(out: Path, labels: Labels) -> None:
    """Outputs never go into the footage: not into a labelled folder nor a labelled video's folder, and the
    folder the frames go into (and stale ones are removed from) holds no footage (as ``scan`` refuses)."""
    forbidden = set(labels.roots) | {v.path.parent for v in labels.videos}
    frames = out / FRAMES_DIR
    for root in forbidden:
        root = root.resolve()
        # where each is on its disk too: a bind mount (a Docker volume) of a footage folder is that folder
        if out == root or root in out.parents or within_on_disk(os.path.realpath(out), root):
            raise OutputError(f"output folder is inside the footage folder {root}", path=out,
                              hint="choose an output folder outside the library")
        if root == frames or frames in root.parents or within_on_disk(root, os.path.realpath(frames)):
            raise OutputError(f"the frames go into {frames}, which holds the footage folder {root}", path=out,
                              hint="choose an output folder that does not contain the labelled videos")


def _durations(paths: dict[str, Path]) -> dict[str, float]:
    """Each video's duration from its container (about a millisecond a file), for ``recording_groups``."""
    from ..probe import probe_video

    found: dict[str, float] = {}
    for vid, path in paths.items():
        try:
            info = probe_video(path)
        except (QuadvaultError, OSError):
            continue
        if info.duration_s:  # type: ignore[union-attr]
            found[vid] = float(info.duration_s)  # type: ignore[union-attr]
    return found


def _settings(fps: float, size: int, mode: str, quality: int) -> dict[str, Any]:
    return {"fps": float(fps), "size": int(size), "mode": mode, "jpeg_quality": int(quality)}


def _previous(out: Path, merge: bool, overwrite: bool, settings: dict[str, Any]) -> dict[str, list[dict]]:
    """Rows of the existing dataset grouped by video id (empty unless merging)."""
    file = out / DATASET_FILE
    if not file.exists():
        if merge:
            log.info("no dataset at %s yet; --merge starts a new one", file)
        return {}
    if not merge and not overwrite:
        raise DatasetError("a dataset already exists here", path=file,
                           hint="use --merge to update it with the labels, or --overwrite to rebuild it")
    try:
        old = read_dataset(file)
    except DatasetError as exc:
        if merge:
            raise DatasetError(f"{exc.reason}; it cannot be merged into", path=file,
                               hint="rebuild it with --overwrite") from None
        log.warning("rebuilding an unreadable dataset (%s)", exc.reason)
        folders = out / FRAMES_DIR
        # every frame folder this tool could have written goes, as the old rows would have said
        return {d.name: [] for d in (folders.iterdir() if folders.is_dir() else ()) if _is_id(d.name)}
    grouped: dict[str, list[dict]] = defaultdict(list)
    for row in old.rows():
        grouped[row["video_id"]].append(row)
    if overwrite and not merge:
        return {vid: [] for vid in grouped}  # known only so that their frames get deleted
    mismatch = [f"{k} {old.settings.get(k)} -> {v}" for k, v in settings.items()
                if k in old.settings and k != "jpeg_quality" and old.settings[k] != v]
    if mismatch:
        raise DatasetError(f"cannot merge: the dataset was prepared with other settings ({', '.join(mismatch)})",
                           path=file, hint="use the same --fps/--size/--sampling, or --overwrite to rebuild")
    return grouped


def _match_previous(previous: dict[str, list[dict]], videos: list[LabelledVideo]) -> dict[str, list[dict]]:
    """``previous`` keyed by the labelled videos' ids: by content id, else (a dataset written when ids
    were path hashes) by the same path with the same size and mtime. Unmatched groups keep their key,
    so their frames are deleted as dropped videos'."""
    matched = dict(previous)
    by_path = {rs[0]["video_path"]: vid for vid, rs in previous.items() if rs}
    for video in videos:
        old = by_path.get(str(video.path))
        if video.video_id in previous or old is None or old not in matched:
            continue
        rows = matched[old]
        try:
            st = video.path.stat()
        except OSError:
            continue
        if rows[0].get("video_size_bytes") == st.st_size and rows[0].get("video_mtime_ns") == st.st_mtime_ns:
            matched[video.video_id] = [{**r, "video_id": video.video_id} for r in matched.pop(old)]
    return matched


def _is_id(name: str) -> bool:
    """A frame folder's name: a 16-hex video id."""
    return len(name) == 16 and all(c in "0123456789abcdef" for c in name)


#: Held by the run writing a dataset folder (``FolderLock``): a second run into it is refused
LOCK_FILE = ".prepare.lock"


def _complete_jpeg(path: Path) -> bool:
    """A frame file that is there and ends as a JPEG does (a crash or a full disk can leave it cut short)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-2, os.SEEK_END)
            return fh.read(2) == b"\xff\xd9"
    except (OSError, ValueError):  # ValueError: a path with a NUL byte (a hand-edited manifest)
        return False


#: 2: HDR frames tone-mapped (``_table.FORMAT_VERSION`` 2)
MANIFEST_FORMAT = 2


def _untone_mapped(video: Path) -> bool:
    """Whether ``video`` is HDR, so its frames written before tone mapping (dataset format 1) are grey and dim:
    extracted again rather than trained on beside tone-mapped ones (1-2 ms: a probe)."""
    transfer = read_color_transfer(video)
    return transfer is not None and is_hdr(transfer)


def _reusable(rows: list[dict], out: Path) -> bool:
    return bool(rows) and all(_complete_jpeg(out / r["frame_path"]) for r in rows)


def _write_manifest(folder: Path, vid: str, settings: dict[str, Any], rows: list[dict]) -> None:
    """Says the folder holds all of ``vid``'s frames for ``settings`` (written last, atomically)."""
    keep = ("frame_path", "timestamp_s", "video_size_bytes", "video_mtime_ns")
    doc = {"format": MANIFEST_FORMAT, "video_id": vid, "settings": settings,
           "rows": [{k: r[k] for k in keep} for r in rows]}
    write_atomic(folder / MANIFEST, json.dumps(doc).encode())


def _manifest_rows(out: Path, video: LabelledVideo, settings: dict[str, Any]) -> list[dict]:
    """The rows of ``video`` from its folder's manifest, where it was written for these settings and every frame
    it lists is complete; ``[]`` otherwise (then the video is extracted again)."""
    try:
        doc = json.loads((out / FRAMES_DIR / video.video_id / MANIFEST).read_text(encoding="utf-8"))
        if doc.get("video_id") != video.video_id or doc.get("settings") != settings:
            return []
        if doc.get("format", 1) < MANIFEST_FORMAT and _untone_mapped(video.path):
            return []
        rows = [{"frame_path": str(r["frame_path"]), "video_path": str(video.path), "video_id": video.video_id,
                 "timestamp_s": float(r["timestamp_s"]), "label": video.label, "label_name": video.label_name,
                 "split": "train", "video_size_bytes": r["video_size_bytes"], "video_mtime_ns": r["video_mtime_ns"]}
                for r in doc["rows"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    # each row is the frame of its own time, once: a damaged manifest (rows doubled, dropped by a stray
    # edit, times swapped) must not become the table's rows
    names = [f"{FRAMES_DIR}/{video.video_id}/{frame_name(r['timestamp_s'])}" for r in rows]
    if [r["frame_path"] for r in rows] != names or len(set(names)) != len(names) \
            or [r["timestamp_s"] for r in rows] != sorted(r["timestamp_s"] for r in rows):
        return []
    return rows if _reusable(rows, out) else []


def prepare_dataset(labels_path: str | os.PathLike[str], out: str | os.PathLike[str], *, merge: bool = False,
                    overwrite: bool = False, fps: float = 1.0, size: int = 256, mode: SamplingMode = "auto",
                    device: str = "auto", skip_missing: bool = False, quality: int = JPEG_QUALITY,
                    streams: int = 4, test_fraction: float | None = None) -> PrepareResult:
    """Validates the labels, extracts frames of new or changed videos and writes ``dataset.parquet``;
    ``test_fraction`` of each class is held out for the final measurement (``_split``). ``None``: ``TEST_FRACTION``,
    but none when ``merge`` adds to a dataset that has no test split (all of its new videos would be owed to it)."""
    labels = load_labels(labels_path, skip_missing=skip_missing)
    out_dir = Path(out).expanduser().resolve()
    _check_out(out_dir, labels)
    settings = _settings(fps, size, mode, quality)
    try:
        (out_dir / FRAMES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder: {exc.strerror or exc}", path=out_dir) from None
    lock = FolderLock(out_dir / LOCK_FILE)
    try:
        locked = lock.acquire()
    except OSError as exc:
        raise OutputError(f"cannot lock the output folder: {exc.strerror or exc}", path=out_dir) from None
    if not locked:  # two runs removed each other's frames and both said they had succeeded
        raise OutputError("another prepare-dataset is writing into this folder", path=out_dir,
                          hint="wait for it to finish (then run this command again), or give another output folder")
    try:
        # read under the lock: another run may just have written it. Its refusals ("already exists", other settings)
        # change nothing but the frames folder and the lock file, which a dataset folder has anyway
        previous = _previous(out_dir, merge, overwrite, settings)
        return _prepare_locked(labels, labels_path, out_dir, previous, settings, merge=merge, overwrite=overwrite,
                               fps=fps, size=size, mode=mode, device=device, quality=quality, streams=streams,
                               test_fraction=test_fraction)
    finally:
        lock.release()


def _changed_in_place(rows: list[dict], video: LabelledVideo) -> bool:
    """Whether the file its rows were extracted from is still at its path but now has another size or mtime: the
    content id reads three 64-KiB pieces, so damage elsewhere (a re-copy gone wrong) keeps the id."""
    if not rows or rows[0].get("video_path") != str(video.path):
        return False  # a moved copy: a new mtime, the same content
    try:
        st = video.path.stat()
    except OSError:
        return False
    return (rows[0].get("video_size_bytes"), rows[0].get("video_mtime_ns")) != (st.st_size, st.st_mtime_ns)


def _prepare_locked(labels: Labels, labels_path: str | os.PathLike[str], out_dir: Path,
                    previous: dict[str, list[dict]], settings: dict[str, Any], *, merge: bool, overwrite: bool,
                    fps: float, size: int, mode: SamplingMode, device: str, quality: int,
                    streams: int, test_fraction: float | None = None) -> PrepareResult:
    remove_dead_temporaries(out_dir)  # a table a killed run was writing

    by_id = {v.video_id: v for v in labels.videos}
    previous = _match_previous(previous, labels.videos)
    reuse: set[str] = set()
    changed: list[Path] = []
    resumed: set[str] = set()  # finished by a killed run: reused, but their split is assigned now
    before_tone_mapping = bool(previous) and table_format_version(out_dir) < 2
    regraded: list[Path] = []
    for vid, video in by_id.items():
        if _changed_in_place(previous.get(vid, []), video):
            changed.append(video.path)
        elif before_tone_mapping and previous.get(vid) and _untone_mapped(video.path):
            regraded.append(video.path)  # extracted again; keeps its split, as a changed video does
        elif _reusable(previous.get(vid, []), out_dir):
            reuse.add(vid)
        elif not overwrite or merge:  # what a killed run finished (its table is written only at the end)
            finished = _manifest_rows(out_dir, video, settings)  # its frames checked complete there
            if finished and _changed_in_place(finished, video):
                changed.append(video.path)
            elif finished:
                previous[vid] = finished
                resumed.add(vid)
                reuse.add(vid)
    if changed:  # a re-copy without its mtimes (cp -r) looks the same: said once, with a count
        log.warning("%d labelled video(s) changed since their frames were extracted (size or modification time), "
                    "e.g. %s: extracting them again (they keep their split)", len(changed), changed[0])
    if regraded:
        log.warning("%d HDR video(s) were extracted by an earlier version without tone mapping (grey and dim), "
                    "e.g. %s: extracting them again (they keep their split)", len(regraded), regraded[0])
    todo = [vid for vid in by_id if vid not in reuse]
    result = PrepareResult(path=out_dir / DATASET_FILE, frames=0, frames_by_label={1: 0, 0: 0},
                           videos_by_split={"train": 0, "val": 0, "test": 0}, warnings=list(labels.warnings))
    log.info("%d labelled videos: %d to extract, %d already extracted", len(by_id), len(todo), len(reuse))

    rows: dict[str, list[dict]] = {vid: [] for vid in reuse}
    for vid in reuse:
        video = by_id[vid]
        try:  # a moved copy has a new mtime; keep the rows true to the file
            st = video.path.stat()
            now = {"video_size_bytes": st.st_size, "video_mtime_ns": st.st_mtime_ns}
        except OSError:
            now = {}
        if previous[vid] and previous[vid][0].get("label") != video.label:
            result.relabelled.append(video.path)
        rows[vid] = [{**r, "video_path": str(video.path), "label": video.label, "label_name": video.label_name,
                      **now} for r in previous[vid]]
        result.reused.append(video.path)
    if todo:
        # --overwrite: the old table goes just before the first frame is rewritten (an interrupted rebuild must
        # not leave it naming new frames; a run that cannot start, --device gpu without one, keeps it)
        _extract(todo, by_id, out_dir, rows, result, settings, fps=fps, size=size, mode=mode, device=device,
                 quality=quality, streams=streams, crashes=DecoderCrashes(out_dir, forget=overwrite and not merge),
                 invalidate=out_dir / DATASET_FILE if overwrite and not merge else None)

    # Split among the videos that made it (a failed video must not take a class's only val slot);
    # videos already in the dataset keep theirs.
    kept_splits: dict[str, Split] = {vid: rs[0]["split"] for vid, rs in previous.items()
                                     if rs and vid in rows and vid not in resumed}
    # chunks of one recording (a flight split into 4-GB files) stay on one side
    paths = {vid: by_id[vid].path for vid in rows}
    groups = recording_groups(paths, _durations(paths))
    # and so do copies of one footage under other bytes (a trimmed export, a re-encode for the phone)
    result.shared_footage = _shared_footage(out_dir, rows, fps)
    groups = join_groups(groups, result.shared_footage)
    result.warnings += _footage_warnings(result.shared_footage, by_id, kept_splits)
    if test_fraction is None:  # the newly labelled clips (often the hard ones) would all go to a new test split
        test_fraction = TEST_FRACTION if not kept_splits or "test" in kept_splits.values() else 0.0
        if not test_fraction:
            log.info("the dataset has no test split and --merge keeps its splits: none is started (--test-fraction "
                     "0.15 starts one from the new videos, of both classes only if both have new ones; --overwrite "
                     "splits everything again)")
    splits = assign_splits({vid: by_id[vid].label for vid in rows}, existing=kept_splits, groups=groups,
                           test_fraction=test_fraction)
    for vid, video_rows in rows.items():
        for r in video_rows:
            r["split"] = splits[vid]

    final = [r for vid in by_id if vid in rows for r in sorted(rows[vid], key=lambda r: r["timestamp_s"])]
    if not final:
        raise DatasetError("no frames could be extracted from any labelled video", path=Path(labels_path),
                           hint="see the list of failed videos above")
    labelled_paths = {str(v.path) for v in by_id.values()}  # a labelled file whose content changed is not dropped
    result.dropped = sorted({rs[0]["video_path"] for vid, rs in previous.items()
                             if rs and vid not in by_id and rs[0]["video_path"] not in labelled_paths})
    write_dataset(out_dir, final, settings)
    _remove_stale_frames(out_dir, final)

    result.frames = len(final)
    for r in final:
        result.frames_by_label[r["label"]] += 1
    for vid in rows:
        result.videos_by_split[splits[vid]] += 1
    for label, name in ((1, "highlight"), (0, "normal")):
        if result.frames_by_label[label] == 0:
            result.warnings.append(f"no {name} frames in the dataset: every {name} video failed")
            continue
        members = [vid for vid in rows if by_id[vid].label == label]
        if len(members) == 1:  # the split keeps a class's only video for training
            result.warnings.append(f"only one {name} video: it trains, and validation has no {name}s to measure, "
                                   "so train will refuse this dataset; label at least 2 of each (5+ for "
                                   "meaningful validation)")
        elif not any(splits[vid] == "val" for vid in members):
            # --merge keeps splits: re-labelling the class's validation videos can leave it none
            result.warnings.append(f"no {name} video in the validation split ({len(members)} in training), so "
                                   f"validation cannot measure {name}s; --overwrite splits the dataset again")
    return result


@contextmanager
def _reading_frames(out_dir: Path) -> Iterator[None]:
    """Stored frames were all checked complete: an error reading one now is the disk failing under us."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot read a stored frame: {exc}", path=out_dir / FRAMES_DIR) from None


def _shared_footage(out_dir: Path, rows: dict[str, list[dict]], fps: float) -> list[SharedFootage]:
    """Fingerprints the frames that have none yet (new ones, and a dataset written before fingerprints), then
    finds the videos that show the same footage."""
    missing = [r for video_rows in rows.values() for r in video_rows
               if r.get("frame_fingerprint") is None or len(r["frame_fingerprint"]) not in (0, FINGERPRINT_BYTES)]
    if missing:
        with _reading_frames(out_dir):
            found = frame_fingerprints([out_dir / r["frame_path"] for r in missing], workers=os.cpu_count() or 1)
        for r, fingerprint in zip(missing, found):
            r["frame_fingerprint"] = fingerprint
    pairs = shared_footage({vid: [(r["timestamp_s"], r["frame_fingerprint"]) for r in video_rows]
                            for vid, video_rows in rows.items()}, fps=fps)
    pairs += _vertical_exports(out_dir, rows, fps)
    if pairs:
        log.info("%d pair(s) of labelled videos show the same footage (a trimmed or re-encoded copy): each set "
                 "stays on one side of the train/validation/test split", len(pairs))
        for pair in pairs[:_PAIRS_NAMED]:  # which: a count alone cannot be checked (a README review's find)
            log.info("  %s and %s: %d sampled frames alike%s", _video_path(rows, pair.a), _video_path(rows, pair.b),
                     pair.frames, f", {pair.offset_s:+g} s apart" if pair.aligned and pair.offset_s else "")
        if len(pairs) > _PAIRS_NAMED:
            log.info("  and %d more pairs", len(pairs) - _PAIRS_NAMED)
    return pairs


#: How many pairs of videos showing the same footage prepare-dataset names
_PAIRS_NAMED = 10


def _video_path(rows: dict[str, list[dict]], vid: str) -> str:
    return str(rows[vid][0].get("video_path", vid)) if rows.get(vid) else vid


def _vertical_exports(out_dir: Path, rows: dict[str, list[dict]], fps: float) -> list[SharedFootage]:
    """Vertical and square videos that show the centre of a landscape one: the exports for phones and social
    media (9:16, 4:5, 1:1) a pilot keeps beside the flight. Their frames are compared with that centre of the
    landscape videos' frames, cut to their shape (fingerprinted now, about a millisecond a frame, only where the
    labels hold such a video)."""
    with _reading_frames(out_dir):
        aspects = {vid: frame_aspect(out_dir / video_rows[0]["frame_path"])
                   for vid, video_rows in rows.items() if video_rows}
    shapes = {vid: round(aspect, 2) for vid, aspect in aspects.items() if aspect < NARROW_ASPECT}
    wide = [vid for vid, aspect in aspects.items() if aspect >= WIDE_ASPECT]
    pairs: list[SharedFootage] = []
    for shape in sorted(set(shapes.values())) if wide else ():
        jpegs = [out_dir / r["frame_path"] for vid in wide for r in rows[vid]]
        with _reading_frames(out_dir):
            centres = iter(frame_fingerprints(jpegs, workers=os.cpu_count() or 1, crop_aspect=shape))
        cut = {vid: [(r["timestamp_s"], next(centres)) for r in rows[vid]] for vid in wide}
        exports = {vid: [(r["timestamp_s"], r["frame_fingerprint"]) for r in rows[vid]]
                   for vid, its in shapes.items() if its == shape}
        # a narrow strip of a picture tells less than the whole: only a match in step counts, and an export is
        # of one flight, the one it matches best
        best: dict[str, SharedFootage] = {}
        for pair in shared_footage(exports, fps=fps, against=cut):
            if pair.aligned and (pair.a not in best or pair.frames > best[pair.a].frames):
                best[pair.a] = pair
        pairs += best.values()
    return pairs


#: Sampled frames alike from which two videos surely show the same footage: two short clips of smooth, textureless
#: scenes (a review found distinct synthetic ones) can match in the three that otherwise suffice
SURE_MATCH_FRAMES = 5


def _footage_warnings(pairs: list[SharedFootage], by_id: dict[str, LabelledVideo],
                      kept_splits: dict[str, Split]) -> list[str]:
    """What a user should fix: one footage labelled both ways, or (``--merge``) already split across sides."""
    warnings = []
    for pair in pairs:
        a, b = by_id[pair.a], by_id[pair.b]
        if a.label != b.label and not pair.aligned:  # two cuts of one hover: a fair pair of labels, not a mistake
            warnings.append(f"{a.path} ({a.label_name}) and {b.path} ({b.label_name}) look alike throughout "
                            f"({pair.frames} sampled frames alike at any moment: a fixed or hovering shot of one "
                            "scene?): they stay on one side of the split, so validation is not measured on "
                            "near-identical views")
        elif a.label != b.label and pair.frames < SURE_MATCH_FRAMES:  # smooth skies alike in a few frames
            warnings.append(f"{a.path} ({a.label_name}) and {b.path} ({b.label_name}) may show the same footage "
                            f"(only {pair.frames} sampled frames alike, too few to be sure): if one is a copy of "
                            "the other, its frames are labelled both ways; then keep one of the two in the labels")
        elif a.label != b.label:
            warnings.append(f"{a.path} ({a.label_name}) and {b.path} ({b.label_name}) show the same footage "
                            f"({pair.frames} sampled frames): those frames are labelled both ways; keep one of the "
                            "two in the labels")
        elif pair.a in kept_splits and pair.b in kept_splits and kept_splits[pair.a] != kept_splits[pair.b]:
            warnings.append(f"{a.path} ({kept_splits[pair.a]}) and {b.path} ({kept_splits[pair.b]}) show the same "
                            "footage but keep the splits they had before (--merge); --overwrite splits the dataset "
                            "again")
    if len(warnings) > _LISTED_PAIRS:
        warnings[_LISTED_PAIRS:] = [f"... and {len(warnings) - _LISTED_PAIRS} more pairs of videos like these"]
    return warnings


def _extract(todo: list[str], by_id: dict[str, LabelledVideo], out_dir: Path,
             rows: dict[str, list[dict]], result: PrepareResult, settings: dict[str, Any], *, fps: float, size: int,
             mode: SamplingMode, device: str, quality: int, streams: int, crashes: DecoderCrashes,
             invalidate: Path | None = None) -> None:
    """Samples the ``todo`` videos and writes their frames; fills ``rows`` for the ones that succeed. Videos that
    crash the decoder (``_crashes``) are left out unopened."""
    sampler = create_sampler(device, fps=fps, mode=mode, size=size, square=False, batch_size=64,
                             streams=streams)
    id_of = {by_id[vid].path: vid for vid in todo}
    pending: dict[str, list[dict]] = defaultdict(list)
    stats: dict[str, os.stat_result] = {}
    journal = CrashJournal(out_dir, JOURNAL_TAG)
    left_out: dict[Path, QuadvaultError] = {}

    def sources() -> Iterator[Path]:
        for vid in todo:
            path = by_id[vid].path
            if path not in left_out:
                journal.started(path)
                yield path

    try:  # stopped during the checks, the journal stays: its suspects are checked again next time
        left_out.update(isolate_crashers(out_dir, {by_id[vid].path: vid for vid in todo}, crashes,
                                         device=sampler.backend, mode=mode, fps=fps, size=size))
    except BaseException:
        sampler.close()
        raise
    for path, error in left_out.items():
        result.failed.append((path, error))
    try:
        with progress_bar(len(todo), desc="Extracting frames", unit="video") as bar, StallWatch(journal) as watch:
            bar.update(len(left_out))
            for batch in sampler.iter_batches(sources()):
                watch.beat()
                if len(batch):
                    encoded = encode_jpegs(batch.frames, quality)
                    for data, path, t in zip(encoded, batch.paths, batch.timestamps):
                        vid = id_of[Path(path)]
                        video = by_id[vid]
                        folder = out_dir / FRAMES_DIR / vid
                        if invalidate is not None:  # --overwrite: the old frames, then the old table, then the
                            # record of the old crashers go (a crash between the first two must not leave a
                            # resumed rebuild the old folders to reuse)
                            _retire_manifests(out_dir)
                            invalidate.unlink(missing_ok=True)
                            invalidate = None
                            crashes.forget_on_disk()
                        if vid not in stats:
                            folder.mkdir(parents=True, exist_ok=True)
                            (folder / MANIFEST).unlink(missing_ok=True)  # the folder is no longer complete
                            stats[vid] = video.path.stat()
                        name = frame_name(t)
                        write_atomic(folder / name, data)
                        pending[vid].append({
                            "frame_path": f"{FRAMES_DIR}/{vid}/{name}", "video_path": str(video.path),
                            "video_id": vid, "timestamp_s": float(t), "label": video.label,
                            "label_name": video.label_name, "split": "train",
                            "video_size_bytes": stats[vid].st_size, "video_mtime_ns": stats[vid].st_mtime_ns})
                for outcome in batch.completed:
                    vid = id_of[Path(outcome.path)]
                    bar.update(1)
                    if outcome.error is not None:
                        log.debug("failed: %s", outcome.error)  # listed by the caller at the end
                        result.failed.append((by_id[vid].path, outcome.error))
                        pending.pop(vid, None)
                    elif not pending.get(vid):
                        err = QuadvaultError("no frames could be sampled", path=by_id[vid].path)
                        result.failed.append((by_id[vid].path, err))
                    else:
                        rows[vid] = pending.pop(vid)
                        _write_manifest(out_dir / FRAMES_DIR / vid, vid, settings, rows[vid])
                        result.extracted.append(by_id[vid].path)
                    journal.finished(by_id[vid].path)
    finally:
        sampler.close()
        journal.discard()  # ended in Python: nothing in flight crashed the decoder (unless a stall was seen)


def _retire_manifests(out_dir: Path) -> None:
    """Removes every frame folder's manifest: a rebuild (``--overwrite``) has begun, and the same command without
    ``--overwrite`` goes on after an interruption, so only the folders this rebuild completes may be reused (the
    old ones were made with the old decoder, or the old settings). Their frames go with the final sweep."""
    frames_root = out_dir / FRAMES_DIR
    for manifest in (frames_root.glob(f"*/{MANIFEST}") if frames_root.is_dir() else ()):
        if _is_id(manifest.parent.name):
            manifest.unlink(missing_ok=True)


def _remove_stale_frames(out_dir: Path, final: list[dict]) -> None:
    """Deletes the frame files in ``OUT/frames/<video_id>/`` folders that the new dataset does not reference
    (with the manifest of a folder it no longer uses). Every such folder is looked at, not only the ones this
    run knew of: a --merge killed between the new table and this sweep left the dropped videos' frames for
    good. Only plain files directly inside 16-hex folders are removed (then the empty folder), never anything
    elsewhere, whatever the old dataset said.
    """
    referenced = {r["frame_path"] for r in final}
    used = {Path(p).parent.name for p in referenced}
    frames_root = out_dir / FRAMES_DIR
    for folder in (frames_root.iterdir() if frames_root.is_dir() else ()):
        vid = folder.name
        if not _is_id(vid) or not folder.is_dir() or folder.is_symlink():
            continue
        for entry in folder.iterdir():
            if entry.name == MANIFEST and vid in used:
                continue
            if entry.is_file() and not entry.is_symlink() and f"{FRAMES_DIR}/{vid}/{entry.name}" not in referenced:
                entry.unlink()
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            pass
