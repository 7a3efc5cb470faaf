"""The scan engine: discovery -> resume plan -> sampling + batched inference -> shard pairs -> report.

``scan_library`` is what ``quadvault scan`` calls. Probing happens inside the sampler's decode
streams (each stream probes its next video while the others decode), batches mix frames of several
videos so the model always sees full batches, and each finished video's rows go to the shard writer.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch

from .._files import remove_dead_temporaries
from .._mounts import within_on_disk
from ..discovery import find_videos, non_utf8_name
from ..errors import DecodeError, OutputError, VideoOpenError
from ..sampling import SamplingMode, VideoOutcome, create_sampler
from ..model._scorer import DEFAULT_THRESHOLD, mean_threshold, warn_repeated
from ..scoring import sampling_size
from .aggregate import Aggregator
from .compact import compact_shards, job_tags
from .crashguard import CrashJournal, StallWatch, isolate_suspects, journal_path, take_suspects
from .report import HIGHLIGHTS_FILE, FolderTotals, highlights_document, summary_line, write_json_atomic
from .rescore import rescore_stored, stored_columns
from .resume import FileState, ResumePlan, drop_superseded, plan_resume, refingerprint_rows, relocate_rows
from .schema import SCHEMA_VERSION, ModelRef, ScanMetadata, combined_fingerprint
from .shards import (DAMAGED_FOLDER, LayoutLock, ShardWriter, TagLock, cleanup_partial, describe_models, model_names,
                     shard_tag)
from .upgrade import upgrade_shards

log = logging.getLogger(__name__)


class Scorer(Protocol):
    """What the scan needs of a model (``HighlightModel`` satisfies it; tests use simple scorers)."""

    name: str
    fingerprint: str
    image_size: int

    def score_frames(self, frames: torch.Tensor) -> torch.Tensor: ...


@dataclass
class ScanOptions:
    """Everything that shapes a scan apart from the library and the models."""

    out_dir: Path
    #: a highlight scores at least this; ``None``: the models' card threshold (the mean over an ensemble), as the
    #: CLI and test-video use (a fixed 0.7 here ignored the card for callers of the library)
    threshold: float | None = None
    device: str = "auto"
    mode: SamplingMode = "auto"
    fps: float = 1.0
    streams: int = 4
    processes: int = 1  # decoding processes (per GPU), each with ``streams`` streams
    stream_decode: bool = False  # experimental gpu decoding (``SamplerConfig.stream_decode``); benchmarks only
    prepare_processes: int = 0  # experimental: clips cut in worker processes (``SamplerConfig``; gpu backend)
    spread_min_frames: int | None = None  # experimental (``SamplerConfig``); benchmarks only
    budget_samples: int | None = None  # experimental (``SamplerConfig``); benchmarks only
    decode_client: str = "dali"  # experimental (``SamplerConfig``): "ffmpeg" decodes with FFmpeg's NVDEC decoders
    batch_size: int = 64
    resume: bool = True
    retry_errors: bool = False
    #: rows of this library's unchanged files that other models scored are retired and the files scored again;
    #: without it the scan refuses, as those results would be lost (``--replace-models``)
    replace_models: bool = False
    shard: tuple[int, int] = (0, 1)
    shard_videos: int = 200
    shard_seconds: float = 60.0
    device_id: int = 0
    highlights_path: Path | None = None  # default: out_dir / highlights.json

    def __post_init__(self) -> None:
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within 0..1, got {self.threshold}")

    @property
    def tag(self) -> str:
        return shard_tag(self.shard)


@dataclass
class RunStats:
    """What this run did (as opposed to what the folder holds)."""

    videos: int = 0
    errors: int = 0
    highlights: int = 0
    frames: int = 0
    bytes_read: int = 0
    file_bytes: int = 0
    video_seconds: float = 0.0
    cpu_fallbacks: int = 0  # videos a GPU scan decoded on the CPU (NVDEC cannot take them)
    dali_samples: int = 0  # DALI samples the in-process gpu backend decoded, and their frames (benchmarks)
    dali_frames: int = 0
    dali_wait_s: float = 0.0  # time its decode streams waited for a prepared clip, summed (benchmarks)
    shards: list[str] = field(default_factory=list)
    #: ``time.monotonic()`` (one clock for every process of the machine) when the scanning loop reached each
    #: ``SCAN_MARKS`` milestone: where a scan's start-up goes
    marks: dict[str, float] = field(default_factory=dict)

    def merge(self, other: "RunStats") -> None:
        for name in ("videos", "errors", "highlights", "frames", "bytes_read", "file_bytes", "video_seconds",
                     "cpu_fallbacks", "dali_samples", "dali_frames", "dali_wait_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.shards.extend(other.shards)
        for name, when in other.marks.items():  # the first worker to get there
            self.marks[name] = min(when, self.marks.get(name, when))

    def mark(self, name: str) -> None:
        """Notes the first time the run reached ``name``."""
        self.marks.setdefault(name, time.monotonic())


#: The scanning loop's milestones (``RunStats.marks``), in the order a scan reaches them
SCAN_MARKS = ("sampler_created", "first_batch", "first_frames_scored", "first_video_done")


@dataclass
class ScanSummary:
    out_dir: Path
    totals: FolderTotals
    run: RunStats
    skipped: int
    superseded: int
    wall_s: float
    highlights_path: Path
    #: folders (or linked files) discovery could not read: their videos are in no row of this run
    unreadable: list[Path] = field(default_factory=list)
    #: videos whose path is not valid UTF-8 (shown with ``\xNN``): Parquet text cannot hold it, so no row
    not_utf8: list[str] = field(default_factory=list)
    #: seconds from the call's start to each milestone it reached, in order: ``models_loaded``, ``files_found``,
    #: ``resume_planned``, ``scanning`` (the loop starts), ``SCAN_MARKS``, ``scanned``, ``report_written``
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def line(self) -> str:
        return summary_line(self.totals, self.out_dir)


# --- choosing the work ------------------------------------------------------------------------

#: The folders the scan writes its shards into, under --out.
SHARD_FOLDERS = ("videos", "seconds")
#: How long a scan waits for another job sharing --out to finish writing highlights.json
REPORT_LOCK_WAIT_S = 600.0


def check_output_location(out: Path, libraries: Sequence[Path], *, shard_folders: bool = True) -> None:
    """Refuses an output inside (or equal to) a library, and a library inside one of the folders the scan
    writes into (``scan ~/drone/videos --out ~/drone``; ``damaged/`` too): the scan never writes into the
    user's footage. Folders are compared where they are on their disk as well as by real path, so a bind
    mount (a Docker volume) or a second mount of the same disk is seen through."""
    out_real = Path(os.path.realpath(out))
    writes = [out_real / name for name in (*SHARD_FOLDERS, DAMAGED_FOLDER)] if shard_folders else []
    for lib in libraries:
        lib_real = Path(os.path.realpath(lib))
        root = lib_real if lib_real.is_dir() else lib_real.parent
        if out_real == root or root in out_real.parents or within_on_disk(out_real, root):
            raise OutputError(f"the output {out} is inside the library {lib}", path=out,
                              hint="the scan never writes into LIBRARY; choose an output folder outside it")
        for folder in writes:
            if root == folder or folder in root.parents or within_on_disk(root, folder):
                raise OutputError(f"the scan writes its shards into {folder}, which holds the library {lib}",
                                  path=out, hint="choose an output folder that does not contain the library")


def in_shard(relative: str, shard: tuple[int, int]) -> bool:
    """Deterministic split by a hash of the path relative to its library (same on every machine)."""
    i, n = shard
    return n == 1 or int(hashlib.sha1(relative.encode()).hexdigest()[:12], 16) % n == i


def select_files(libraries: Sequence[Path], shard: tuple[int, int] = (0, 1), *,
                 unreadable: list[Path] | None = None, not_utf8: list[str] | None = None) -> list[FileState]:
    """The library's videos in this shard, with the size and mtime resume compares; folders that could not
    be read are appended to ``unreadable`` (and logged)."""
    files: list[FileState] = []
    seen: set[str] = set()

    def report(path: Path, exc: OSError) -> None:
        # os.path.isdir, not Path.is_dir: a folder that can be listed but not entered, or a path past PATH_MAX,
        # cannot be stat'ed either, and Path.is_dir raised that, stopping the scan
        log.warning("cannot read folder %s: %s" if os.path.isdir(path) else "cannot read %s: %s", path,
                    exc.strerror or exc)
        if unreadable is not None:
            unreadable.append(path)

    for lib in libraries:
        lib = Path(os.path.abspath(lib))
        base = lib if lib.is_dir() else lib.parent
        for path in find_videos([lib], on_error=report):
            key = str(path)
            shown = non_utf8_name(key)
            if shown is not None:
                log.warning("skipping %s: its path is not valid UTF-8; rename the file (or its folder) to scan it",
                            shown)
                if not_utf8 is not None:
                    not_utf8.append(shown)
                continue
            real = os.path.realpath(key)  # LIBRARY arguments that reach the same files (a link and its target)
            if key in seen or real in seen:
                continue
            seen.update((key, real))  # before the shard test: under nested LIBRARY arguments the first one decides
            if not in_shard(os.path.relpath(path, base), shard):
                continue
            try:
                st = path.stat()
            except OSError as exc:
                log.warning("skipping %s: %s", path, exc.strerror or exc)
                continue
            files.append(FileState(path, st.st_size, st.st_mtime_ns, real))
    return sorted(files, key=lambda f: str(f.path))


def vanished(libraries: Sequence[Path], files: Sequence[FileState], shard: tuple[int, int],
             unreadable: Sequence[Path]) -> Callable[[str], bool]:
    """A test for paths that have rows but were not found now: ``True`` only when the path is in this run's
    part of a library folder that was read (not an unreadable folder, not a library in which nothing was
    found, as an unmounted disk's empty mount point) and the file really is not there.

    A library is known by its path as given and by its real path: rows may hold either (scanned through a
    link to it, or not), and this run may reach its files through either."""
    roots = library_roots(libraries)
    populated = set(library_roots(libraries, files))

    def gone(path_s: str) -> bool:
        path = Path(path_s)
        root = next((r for r in roots if r in path.parents), None)
        if root is None or root not in populated:
            return False
        if any(u == path or u in path.parents for u in unreadable):
            return False
        # a folder now where the video was (replaced by one of that name) is not the video: its row goes
        if not in_shard(os.path.relpath(path, root), shard) or (os.path.lexists(path) and not os.path.isdir(path)):
            return False
        return _folder_is_there(path.parent, root)

    return gone


def _under(root: Path) -> str:
    return str(root).rstrip(os.sep) + os.sep


def library_roots(libraries: Sequence[Path], files: Sequence[FileState] | None = None) -> list[Path]:
    """The library folders, each as given and as its real path (rows may hold either: scanned through a link to
    it, or not); with ``files``, only the libraries in which this run found videos, not an unplugged disk's empty
    mount point, whose rows are neither retired nor counted as this run's."""
    pairs = [(Path(os.path.abspath(lib)), Path(os.path.realpath(lib))) for lib in libraries if Path(lib).is_dir()]
    if files is not None:
        reached = [str(f.path) for f in files] + [f.real_path for f in files]
        pairs = [pair for pair in pairs if any(p.startswith(tuple(_under(r) for r in pair)) for p in reached)]
    # the folders as given first: discovery names files under them, and nested arguments go by the first that fits
    return list(dict.fromkeys([*(given for given, _ in pairs), *(real for _, real in pairs)]))


def _in_libraries(libraries: Sequence[Path], shard: tuple[int, int] = (0, 1),
                  files: Sequence[FileState] | None = None) -> Callable[[str], bool]:
    """Whether a path is in this run's part of ``libraries`` (as given or their real paths): under one of them,
    in this ``shard``, and, with ``files``, under a library in which this run found videos (not an unplugged
    disk's empty mount point, which the scan reports on its own)."""
    roots = library_roots(libraries, files)

    def within(path: str) -> bool:
        root = next((r for r in roots if path.startswith(_under(r))), None)
        return root is not None and in_shard(os.path.relpath(path, root), shard)

    return within


def _folder_is_there(folder: Path, root: Path) -> bool:
    """Whether a missing file's folder is really there, so the file was deleted or moved: not behind a link
    whose target is gone, and not under an empty folder (an unmounted disk's mount point) below the root."""
    while True:
        if os.path.islink(folder) and not os.path.exists(folder):
            return False  # a linked folder whose disk is unplugged
        if os.path.isdir(folder):
            break
        if folder == root or root not in folder.parents:
            return False
        folder = folder.parent
    try:
        with os.scandir(folder) as entries:
            return any(True for _ in entries)  # an empty folder may be a mount point without its disk
    except OSError:
        return False


def model_refs(scorers: Sequence[Scorer]) -> tuple[ModelRef, ...]:
    return tuple(ModelRef(str(s.name), str(s.fingerprint)) for s in scorers)


def combined_older_fingerprints(scorers: Sequence[Scorer], attribute: str) -> frozenset[str]:
    """The combined fingerprints these models had under older scoring code, from each model's ``attribute``:
    ``nvdec_fingerprints``, whose rows decoded by DALI on NVDEC still hold (a release that moved only the CPU
    paths' pixels must not rescan a GPU user's library), ``sdr_fingerprints``, whose rows of SDR videos still hold
    (one that moved only HDR videos' pixels), or ``older_fingerprints``, every older version's."""
    older = [tuple(getattr(s, attribute, ())) for s in scorers]
    if not all(older):
        return frozenset()
    return frozenset(combined_fingerprint([ModelRef(str(s.name), o[k]) for s, o in zip(scorers, older)])
                     for k in range(min(len(o) for o in older)))


def metadata_for(table: str, models: Sequence[ModelRef], threshold: float) -> ScanMetadata:
    return ScanMetadata(SCHEMA_VERSION, table, tuple(models), threshold, combined_fingerprint(models))  # type: ignore[arg-type]


# --- the scanning loop ------------------------------------------------------------------------

ProgressFn = Callable[[RunStats], None]


def score_batch(scorers: Sequence[Scorer], frames: torch.Tensor) -> np.ndarray:
    """(N, n_models) float32 probabilities on the CPU."""
    cols = [torch.as_tensor(s.score_frames(frames)).detach().float().cpu().reshape(-1).numpy() for s in scorers]
    return np.stack(cols, axis=1).astype(np.float32)


def scan_files(files: Sequence[FileState], scorers: Sequence[Scorer], options: ScanOptions, *, tag: str,
               on_progress: ProgressFn | None = None, crashed: Mapping[Path, str] | None = None) -> RunStats:
    """Scans ``files`` into new shard pairs tagged ``tag``; the caller has planned resume already.

    ``crashed``: files known to crash the decoder (``crashguard``), recorded as error rows unopened.
    """
    crashed = crashed or {}
    models = model_refs(scorers)
    fingerprint = combined_fingerprint(models)
    sampler = create_sampler(options.device, fps=options.fps, mode=options.mode, size=sampling_size(scorers),
                             square=True, batch_size=options.batch_size, streams=options.streams,
                             processes=options.processes, device_id=options.device_id,
                             stream_decode=options.stream_decode, prepare_processes=options.prepare_processes,
                             spread_min_frames=options.spread_min_frames, budget_samples=options.budget_samples,
                             decode_client=options.decode_client)
    stats = RunStats()
    stats.mark("sampler_created")
    writer = ShardWriter(options.out_dir, tag=tag, seconds_meta=metadata_for("seconds", models, options.threshold),
                         videos_meta=metadata_for("videos", models, options.threshold),
                         max_videos=options.shard_videos, max_seconds=options.shard_seconds)
    agg = Aggregator(threshold=options.threshold, model_fingerprint=fingerprint, fps=options.fps)
    by_path = {f.path: f for f in files}
    journal = CrashJournal(options.out_dir, tag)

    def record(state: FileState, outcome: VideoOutcome | None, error: DecodeError | None = None) -> None:
        if outcome is None:
            agg.start(state.path)
            rows = agg.finish(state.path, info=None, mode=None, bytes_read=0, error=error,
                              size_bytes=state.size_bytes, mtime_ns=state.mtime_ns, real_path=state.real_path)
        else:
            error = outcome.error
            if error is None and changed_since(state):  # its scores would stand under the stat seen before
                error = DecodeError("changed while it was being scanned (still being copied, or edited)",
                                    path=state.path, hint="it is scanned again next run")
            rows = agg.finish(state.path, info=outcome.info, mode=outcome.mode, bytes_read=outcome.bytes_read,
                              error=error, size_bytes=state.size_bytes, mtime_ns=state.mtime_ns,
                              decoder=outcome.decoder, decoder_note=outcome.fallback_reason,
                              frames_expected=outcome.frames_expected, real_path=state.real_path)
        _count(stats, rows, state, outcome.bytes_read if outcome else 0)
        if not rows.ok:
            log.warning("%s", rows.video["error_message"])
        writer.add(rows)

    try:
        for path, why in crashed.items():
            if path in by_path:
                record(by_path[path], None, DecodeError(why, path=path, hint="check the file in a player; "
                                                                             "re-copy it if it is damaged"))
        if crashed:
            writer.flush()  # the verdicts are on disk before the journal lets the suspects go
            for path in crashed:
                journal.finished(path)

        def sources() -> Iterator[Path]:
            for f in files:
                if f.path in crashed:
                    continue
                agg.start(f.path)
                journal.started(f.path)
                yield f.path

        with torch.inference_mode(), StallWatch(journal) as watch:
            for batch in sampler.iter_batches(sources()):
                watch.beat()
                stats.mark("first_batch")
                if len(batch):
                    agg.add(batch.paths, batch.timestamps, score_batch(scorers, batch.frames))
                    stats.frames += len(batch)
                    stats.mark("first_frames_scored")
                for outcome in batch.completed:
                    state = by_path.get(outcome.path) or by_path[Path(outcome.path)]
                    record(state, outcome)
                    journal.finished(state.path)
                    stats.mark("first_video_done")
                writer.tick()
                if on_progress is not None:
                    on_progress(stats)
    except BaseException as exc:
        # Ctrl-C, or a failure that stops the run: every finished video is kept, the rest resumes next time
        # (not when writing is what failed: a full disk stays full)
        if not isinstance(exc, OutputError):
            try:
                writer.flush()
            except Exception as flush_exc:  # noqa: BLE001 - the failure that stopped the run is the one raised
                log.warning("the videos finished since the last shard could not be saved: %s", flush_exc)
        raise
    finally:
        sampler.close()
        journal.discard()  # ended in Python: nothing in flight crashed the decoder (unless a stall was seen)
        decoded = getattr(sampler, "decode_stats", None)
        if decoded is not None:
            stats.dali_samples, stats.dali_frames = decoded.samples, decoded.frames
            stats.dali_wait_s = decoded.wait_s
    writer.flush()
    stats.shards = list(writer.written)
    return stats


def changed_since(state: FileState) -> bool:
    """Whether the file's size or modification time is no longer what discovery saw: a clip still being copied
    into the library, or edited, while it was decoded (a live-library tester's find: its scores were kept under
    the old stat, and a copy restored to it later would never be scanned again). A file gone meanwhile is not
    changed: the next run retires its row."""
    try:
        st = os.stat(state.path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) != (state.size_bytes, state.mtime_ns)


def _count(stats: RunStats, rows: "object", state: FileState, bytes_read: int) -> None:
    video = rows.video  # type: ignore[attr-defined]
    stats.videos += 1
    stats.errors += video["status"] == "error"
    stats.highlights += bool(video["is_highlight"])
    stats.bytes_read += int(bytes_read)
    stats.file_bytes += state.size_bytes
    stats.video_seconds += float(video["duration_s"] or 0.0)
    stats.cpu_fallbacks += video.get("decoder_note") is not None


# --- the whole scan ---------------------------------------------------------------------------

def scan_library(libraries: Sequence[str | os.PathLike[str]], options: ScanOptions, *,
                 scorers: Sequence[Scorer] | None = None, model_paths: Sequence[str | os.PathLike[str]] = (),
                 gpus: Sequence[int] | None = None, on_progress: "Callable[[RunStats, int], None] | None" = None,
                 ) -> ScanSummary:
    """Scans ``libraries`` into ``options.out_dir``; resumable, never writing into the libraries.

    Give either loaded ``scorers`` or ``model_paths`` (loaded here, or in each GPU worker with ``gpus``).
    ``on_progress(stats, total_todo)`` is called after every batch.
    """
    began = time.monotonic()  # the clock of ``RunStats.marks``: the phases and the wall time both count from here
    marks: dict[str, float] = {}
    libs = [Path(os.path.abspath(p)) for p in libraries]  # as given: resume matches files by their real path too
    for lib in libs:
        if not lib.exists():
            raise VideoOpenError("library folder not found", path=lib, hint="check the path and that the disk is mounted")
    out = Path(os.path.abspath(options.out_dir))
    options.out_dir = out
    check_output_location(out, libs)
    if any("=" in part for part in out.parts):
        log.warning("%s has a folder named key=value in its path: DuckDB's read_parquet takes it for a Hive "
                    "partition column, which can override a real column (status, path); query it with "
                    "hive_partitioning = false, or scan into a folder without '='", out)
    if set("*?[") & set(str(out)):
        log.warning("%s has *, ? or [ in its path: DuckDB's read_parquet (and polars) read them as a pattern, so "
                    "read_parquet('%s/videos/*.parquet') finds no file; write each as [*], [?] or [[] there, or scan "
                    "into a folder without them", out, out)
    if options.highlights_path is not None:
        check_output_location(options.highlights_path, libs, shard_folders=False)
    if scorers is None:  # first: a model that does not load, or --device gpu without one, leaves no empty --out
        scorers = _load_scorers(model_paths, options, gpus)
        warn_repeated(scorers)
        marks["models_loaded"] = time.monotonic()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder: {exc.strerror or exc}", path=out) from exc
    if options.threshold is None:
        options.threshold = mean_threshold(float(getattr(s, "threshold", DEFAULT_THRESHOLD)) for s in scorers)
    models = model_refs(scorers)
    fingerprint = combined_fingerprint(models)
    layout = LayoutLock(out, options.shard[1])
    other_parts = layout.acquire()
    if other_parts is not None:
        raise OutputError(f"another scan is writing into this folder with --shard i/{other_parts}" if other_parts > 1
                          else "another scan without --shard is writing into this folder", path=out,
                          hint=f"wait for it, or scan into another --out (a job of the same library may share "
                               f"the folder by splitting it the same way: --shard i/{other_parts})")
    lock = TagLock(out, options.tag)
    if not lock.acquire():
        layout.release()
        same = f" with the same --shard {options.shard[0]}/{options.shard[1]}" if options.shard[1] > 1 else ""
        raise OutputError(f"another scan is writing into this folder{same}", path=out,
                          hint="wait for it to finish, or scan into another --out (--shard i/n splits one library "
                               "between jobs, each with its own i: it does not let two scans of different "
                               "libraries share a folder)")
    try:
        cleanup_partial(out, options.tag)
        unreadable: list[Path] = []
        not_utf8: list[str] = []
        files = select_files(libs, options.shard, unreadable=unreadable, not_utf8=not_utf8)
        marks["files_found"] = time.monotonic()
        reached = {str(f.path) for f in files} | {f.real_path for f in files}
        for lib in libs:
            under = {str(lib) + os.sep, os.path.realpath(lib) + os.sep}  # as given, or the files' real paths
            if lib.is_dir() and not any(p.startswith(tuple(under)) for p in reached):
                log.warning("found no videos under %s%s (is the disk mounted?)", lib,
                            " in this shard" if options.shard[1] > 1 else "")
        plan = plan_resume(files, out, fingerprint=fingerprint, fps=options.fps, mode=options.mode,
                           resume=options.resume, gone=vanished(libs, files, options.shard, unreadable),
                           retry_errors=options.retry_errors, within=_in_libraries(libs, options.shard, files),
                           nvdec_fingerprints=combined_older_fingerprints(scorers, "nvdec_fingerprints"),
                           sdr_fingerprints=combined_older_fingerprints(scorers, "sdr_fingerprints"),
                           older_fingerprints=combined_older_fingerprints(scorers, "older_fingerprints"))
        marks["resume_planned"] = time.monotonic()
        if plan.other_models and not options.replace_models:
            refuse_other_models(out, plan.other_models, models, reusable=reusable_count(out, plan, models))
        rescored = _rescore_stored(out, plan, models, options)
        highlights_path = options.highlights_path or out / HIGHLIGHTS_FILE
        leaving = ({path for paths in plan.superseded.values() for path in paths} | {
            path for moves in plan.relocated.values() for path in moves}) - {str(f.path) for f in rescored}
        if leaving and highlights_path.exists():  # first: a run stopped while retiring must not leave it listing them
            write_report(out, options, models, libs, warn=False, excluding=leaving)
        superseded = drop_superseded(out, plan.superseded, own_tag=options.tag)
        refingerprint_rows(out, plan.refingerprinted, fingerprint, own_tag=options.tag)
        moved = relocate_rows(out, plan.relocated, own_tag=options.tag)
        if moved:
            log.info("%d scanned videos were found under another path (the library moved or was mounted elsewhere):"
                     " their results are kept under the new paths, e.g. %s", len(moved), moved[0].path)
        planned = [f for moves in plan.relocated.values() for f in moves.values()]
        if len(moved) < len(planned):  # their rows went meanwhile (another --shard job) or their pair was busy
            unmoved = set(planned) - set(moved)
            plan.skipped = [f for f in plan.skipped if f not in unmoved]
            plan.todo = sorted([*plan.todo, *unmoved], key=lambda f: str(f.path))
        upgrade_shards(out, own_tag=options.tag)  # one schema per folder, whatever version wrote the old shards
        log.info("%d videos found, %d already scanned, %d to scan, %d old rows retired",
                 len(files), len(plan.skipped), len(plan.todo), superseded)
        rescanned = superseded - len(plan.gone) - len(rescored)
        if rescanned >= 100 and options.resume:  # a model, scoring version, --fps or --sampling change: say the cost
            log.warning("%d videos' earlier results were removed to be scored again (changed files, other models, a "
                        "newer scoring version, another --fps or --sampling): until this scan reaches them they are "
                        "not in %s; an interrupted scan picks up where it stopped", rescanned, out)
        if plan.kept_missing:
            log.warning("%d scanned videos are missing, but their rows are kept: their folder is empty or unreadable "
                        "now, as an unplugged disk's mount point is (e.g. %s). Once the disk is back they count "
                        "again; if the clips were deleted, delete the empty folder too and the next scan drops "
                        "their rows", len(plan.kept_missing), plan.kept_missing[0])
        if plan.gone:
            log.info("%d scanned videos are no longer in the library (deleted or moved); their rows are "
                     "removed, e.g. %s", len(plan.gone), plan.gone[0])
        progress = (lambda s: on_progress(s, len(plan.todo))) if on_progress else None
        crashed = _isolate_crashers(out, plan.todo, scorers, options)
        marks["scanning"] = time.monotonic()
        if gpus and len(gpus) > 1:
            from .parallel import scan_on_gpus
            stats = scan_on_gpus(plan.todo, [Path(p) for p in model_paths], options, gpus, on_progress=progress,
                                 crashed=crashed)
            journal_path(out, options.tag).unlink(missing_ok=True)  # the workers settled every suspect
        else:
            stats = scan_files(plan.todo, scorers, options, tag=options.tag, on_progress=progress, crashed=crashed)
        marks.update(stats.marks)
        marks["scanned"] = time.monotonic()
        totals = write_report(out, options, models, libs)  # first: a stop while merging leaves it current
        marks["report_written"] = time.monotonic()
        compact_shards(out, job_tags(out, options.tag), options.shard_videos, held=options.tag)
    finally:
        lock.release()
        layout.release()
    phases = {name: round(when - began, 3) for name, when in sorted(marks.items(), key=lambda item: item[1])}
    log.debug("start-up and end of the scan, seconds from its start: %s",
              ", ".join(f"{name.replace('_', ' ')} {at:.2f}" for name, at in phases.items()))
    return ScanSummary(out, totals, stats, len(plan.skipped), superseded, time.monotonic() - began,
                       highlights_path, unreadable, not_utf8, phases)


def _rescore_stored(out: Path, plan: ResumePlan, models: Sequence[ModelRef], options: ScanOptions) -> set[FileState]:
    """Rebuilds the rows of ``plan.other_rows`` whose stored per-model scores hold this run's models (``rescore``),
    moving those files from ``plan.todo`` to ``plan.skipped``; their old rows stay superseded. Returns them."""
    if not plan.other_rows:
        return set()
    writer = ShardWriter(out, tag=options.tag, seconds_meta=metadata_for("seconds", models, options.threshold),
                         videos_meta=metadata_for("videos", models, options.threshold),
                         max_videos=options.shard_videos, max_seconds=float("inf"))
    rebuilt = set(rescore_stored(out, plan.other_rows, models, writer=writer, threshold=options.threshold,
                                 fingerprint=combined_fingerprint(models)))
    if rebuilt:
        plan.todo = [f for f in plan.todo if f not in rebuilt]
        plan.skipped = sorted([*plan.skipped, *rebuilt], key=lambda f: str(f.path))
        log.info("%d videos were rescored from the per-model scores an earlier scan stored (an ensemble that "
                 "included these models): no decoding needed", len(rebuilt))
    return rebuilt


def reusable_count(out: Path, plan: ResumePlan, models: Sequence[ModelRef]) -> int:
    """How many of ``plan.other_rows`` a scan with ``models`` would rebuild from stored scores (``rescore``)."""
    return sum(len(files) for shard, files in plan.other_rows.items() if stored_columns(out, shard, models))


def refuse_other_models(out: Path, other_models: Mapping[str, int], models: Sequence[ModelRef], *,
                        reusable: int = 0) -> None:
    """Raises ``OutputError``: ``out`` holds this library's results by other models (fingerprint -> videos), which a
    scan with ``models`` would retire before scoring the files again; an interrupted rescan would lose them.
    ``reusable``: how many of them hold these models' scores already (rebuilt without decoding)."""
    n = sum(other_models.values())
    quick = "" if not reusable else (f"; it rebuilds {'them' if reusable == n else f'{reusable} of them'} from the "
                                     "per-model scores stored already, without decoding")
    names, ours = model_names(out), "+".join(m.name for m in models)
    orders = {combined_fingerprint(list(order)): order for order in itertools.permutations(models)} \
        if 1 < len(models) <= 5 else {}
    if all(fp in orders for fp in other_models):  # the same ensemble, its -m options in another order
        earlier = orders[next(iter(other_models))]
        raise OutputError(
            f"holds the results of {n} video{'s' if n != 1 else ''} of this library scored by the same models "
            f"given in another order", path=out,
            hint="give them in the earlier order (" + " ".join(f"-m {m.name}" for m in earlier) + "), or add "
                 f"--replace-models to score the videos again in this order{quick}")
    if all(names.get(fp) == ours for fp in other_models):  # retrained in place, its card edited, or a namesake
        by = (f"a model also named {ours} (another model, or this one retrained or its card edited: "
              f"{', '.join(fp[:8] + '…' for fp in sorted(other_models))})")
    else:
        by = f"other models ({describe_models(dict(other_models), names)})"
    raise OutputError(
        f"holds the results of {n} video{'s' if n != 1 else ''} of this library scored by {by}; scanning with "
        f"{ours} would replace them", path=out,
        hint="scan into another output folder to keep both (one per model), or add --replace-models to score "
             f"them again with this scan's models{quick}")


def write_report(out: Path, options: ScanOptions, models: Sequence[ModelRef], libs: Sequence[Path], *,
                 warn: bool = True, excluding: set[str] | None = None) -> FolderTotals:
    """Writes ``highlights.json`` from every complete shard; ``warn``: say when it includes other models' rows;
    ``excluding``: paths whose rows are about to be retired or moved, left out."""
    # --shard jobs sharing OUT each write the document from every shard at their end: one at a time, so the
    # last written was read last (a job that read the shards first could replace a later job's document)
    report_lock = TagLock(out, "report")
    if not report_lock.acquire(timeout_s=REPORT_LOCK_WAIT_S):
        log.warning("another scan of %s held the report lock for %.0f s; writing %s anyway", out,
                    REPORT_LOCK_WAIT_S, HIGHLIGHTS_FILE)
    try:
        threshold = options.threshold if options.threshold is not None else DEFAULT_THRESHOLD
        doc, totals = highlights_document(out, threshold=threshold, models=models,
                                          inside=_in_libraries(libs), excluding=excluding)
        if totals.other_models and warn:  # outside this library: another --shard job's half is rescanned by that job
            log.warning("%d of the %d videos in %s were scored by other models than this scan's (earlier scans "
                        "of files outside %s): the totals and %s include their scores, which are another "
                        "model's; scan them with these models too, or use another --out for each model",
                        totals.other_models, totals.total, out, ", ".join(str(lib) for lib in libs),
                        HIGHLIGHTS_FILE)
        path = options.highlights_path or out / HIGHLIGHTS_FILE
        remove_dead_temporaries(path.parent, path.name)  # a killed run's half-written document
        write_json_atomic(path, doc)
    finally:
        report_lock.release()
    return totals


def _isolate_crashers(out: Path, todo: Sequence[FileState], scorers: Sequence[Scorer],
                      options: ScanOptions) -> dict[Path, str]:
    """The to-do videos that were in flight when the last run died and crash (or hang) a decoder alone."""
    todo_paths = {f.path for f in todo}
    suspects = [p for p in take_suspects(out, options.tag) if p in todo_paths]
    if not suspects:
        return {}
    from ..device import resolve_device

    return isolate_suspects(suspects, device=resolve_device(options.device), mode=options.mode, fps=options.fps,
                            size=sampling_size(scorers), device_id=options.device_id,
                            decode_client=options.decode_client)


def _load_scorers(model_paths: Sequence[str | os.PathLike[str]], options: ScanOptions,
                  gpus: Sequence[int] | None) -> list[Scorer]:
    if not model_paths:
        raise ValueError("give at least one model (--model PATH)")
    from ..device import resolve_device, torch_device
    from ..model import load_model

    if gpus and len(gpus) > 1:  # the workers load their own copies; here only names and fingerprints
        return [load_model(p, device="cpu") for p in model_paths]
    backend = resolve_device(options.device)
    if gpus:
        options.device_id = gpus[0]
    return [load_model(p, device=torch_device(backend, options.device_id)) for p in model_paths]
