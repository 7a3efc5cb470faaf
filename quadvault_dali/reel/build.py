"""``make_reel``: scores in, reel and clip list out — plan, check the sources, encode, write the sidecar.

Sources are checked (probed, and the window's first frame decoded) before anything is encoded; one
that fails is left out with a warning and the next best window takes its place, so a broken file
never costs the user the reel.
"""

from __future__ import annotations

import dataclasses
import os
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from .._files import NAME_MAX, atomic_path, dead_temporaries
from .._lifetime import stop_signals_deferred
from ..device import resolve_device
from ..errors import OutputError, QuadvaultError
from ..probe import VideoInfo, probe_video
from ..scan.schema import video_id
from .encoders import EncoderChoice, choose_encoder
from .frames import check_window
from .render import AudioChoice, RenderResult, SourceUnavailable, render_reel, temp_path
from .scores import ScoreSource, VideoScores, load_scores
from .select import EmptySelectionError, Order, ReelPlan, plan_reel
from .sidecar import sidecar_path, write_sidecar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReelOptions:
    """Everything ``quadvault reel`` asks for; defaults are the CLI's."""

    top: int = 50
    #: ``None``: the highlight threshold of the scan that scored the videos (``ScoreSource.threshold``), else
    #: ``DEFAULT_MIN_SCORE``: a window as good as a highlight video, by the model's own tuned measure
    min_score: float | None = None
    max_duration_s: float | None = None
    clip_seconds: float = 4.0
    transitions: bool = True
    fade_s: float = 0.5
    order: Order = "score"
    width: int = 1920
    height: int = 1080
    fps: float = 30.0
    audio: AudioChoice = "none"
    encoder: EncoderChoice = "auto"
    device: Literal["auto", "gpu", "cpu"] = "auto"
    per_video: int = 1

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise QuadvaultError(f"reel resolution {self.width}x{self.height}: width and height must be even "
                                 "and at least 16", hint="e.g. 1920x1080 or 1280x720")
        for name, value, allowed in (("order", self.order, ("score", "time")), ("audio", self.audio, ("none", "keep")),
                                     ("encoder", self.encoder, ("auto", "nvenc", "x264")),
                                     ("device", self.device, ("auto", "gpu", "cpu"))):
            if value not in allowed:
                raise QuadvaultError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        if self.max_duration_s is not None and self.max_duration_s <= 0:
            raise QuadvaultError(f"--duration must be positive, got {self.max_duration_s}")


@dataclass(frozen=True)
class PreparedReel:
    plan: ReelPlan
    infos: dict[Path, VideoInfo]
    skipped: tuple[str, ...]  # one message per source left out
    source: ScoreSource


@dataclass(frozen=True)
class ReelResult:
    render: RenderResult
    sidecar: Path
    prepared: PreparedReel


def _probe(path: Path, infos: dict[Path, VideoInfo], skipped: list[str], bad: set[Path]) -> VideoInfo | None:
    if path in bad:
        return None
    if path not in infos:
        try:
            infos[path] = probe_video(path)  # type: ignore[assignment]
        except QuadvaultError as exc:
            log.warning("skipping %s", exc)
            skipped.append(str(exc))
            bad.add(path)
            return None
    return infos[path]


def _changed_since_scan(video: VideoScores, info: VideoInfo) -> str | None:
    """Why the file is no longer the one the scores describe (another size or mtime), or ``None``."""
    if video.size_bytes is not None and video.size_bytes != info.size_bytes:
        what = f"its size changed from {video.size_bytes:,} to {info.size_bytes:,} bytes"
    elif video.size_bytes is not None and video.mtime_ns is not None and video.mtime_ns != info.mtime_ns:
        what = "it was modified"
    elif video.size_bytes is None and video.scanned_id is not None \
            and video_id(str(video.path), info.size_bytes, info.mtime_ns) != video.scanned_id:
        what = "it changed (its size or modification time)"  # a highlights.json holds the scan's id of the file
    else:
        return None
    return f"{info.path}: {what} since it was scanned; scan it again to cut it into a reel"


def _with_left_out(exc: EmptySelectionError, left_out: list[VideoScores], min_score: float) -> EmptySelectionError:
    """The empty-selection error, led by the sources that would have qualified but were left out: gone from where
    the scan found them (a library moved or renamed since), or unreadable or changed. Said after the reason about
    the rest, it read as if --fade or --min-score were the problem when none of the best videos existed."""
    qualified = sorted((v for v in left_out if (v.video_score or 0.0) >= min_score or
                        (v.scores.size and float(v.scores.max()) >= min_score)),
                       key=lambda v: -(v.video_score or 0.0))
    if not qualified:
        return exc

    def names(group: list[VideoScores]) -> str:
        return ", ".join(v.path.name for v in group[:3]) + (" ..." if len(group) > 3 else "")

    def videos(n: int) -> str:
        return f"{n} video{'s' if n != 1 else ''} that scored ≥ {min_score:g}"

    missing = [v for v in qualified if not os.path.lexists(v.path)]
    gone = {id(v) for v in missing}
    other = [v for v in qualified if id(v) not in gone]
    reasons, hints = [], []
    if missing:
        reasons.append(f"{videos(len(missing))} no longer exist where the scan found them ({names(missing)})")
        hints.append("if the library moved, scan it at its new place into the same output folder: its videos keep "
                     "their scores without being decoded again")
    if other:
        reasons.append(f"{videos(len(other))} could not be used (unreadable or changed since the scan: "
                       f"{names(other)}; see the warnings above)")
        hints.append("scan again to score changed videos anew")
    if exc.hint:
        hints.append(f"for the others: {exc.hint}")
    return EmptySelectionError("; ".join(reasons) + f"; of the others: {exc.reason}", path=exc.path,
                               hint="; ".join(hints))


def _nearest_root_first(path: Path) -> tuple[int, str]:
    """The order copies are used in: the one nearest the library's root, then by name."""
    return len(path.parts), str(path)


def _copy_sets(videos: list[VideoScores]) -> dict[Path, list[VideoScores]]:
    """The sets of copies among ``videos`` (the same clip in the card dump and in backup/): each would be picked,
    and the reel showed the same shot twice. Keyed by the copy to use first (the one nearest the library's root,
    then by name), with the others in that order behind it. Only files of equal size are compared
    (``content_id``: three 64-KiB reads)."""
    by_size: dict[int, list[VideoScores]] = {}
    for v in videos:
        try:
            size = v.size_bytes if v.size_bytes is not None else v.path.stat().st_size
        except OSError:
            continue
        by_size.setdefault(size, []).append(v)
    alike = {v.path: v for group in by_size.values() if len(group) > 1 for v in group}
    if not alike:
        return {}
    from ..dataset._identity import content_ids  # here: the dataset package imports torch (0.5 GB, 1-3 s)

    by_content: dict[str, list[VideoScores]] = {}
    for path, cid in content_ids(sorted(alike, key=_nearest_root_first)).items():
        if isinstance(cid, str):  # unreadable: the plan's probe says so
            by_content.setdefault(cid, []).append(alike[path])
    return {group[0].path: group for group in by_content.values() if len(group) > 1}


def _copies_note(left_out: list[Path]) -> str:
    if not left_out:
        return ""
    log.info("left out %d copies of videos listed under another path (e.g. %s)", len(left_out), left_out[0])
    return (f"{len(left_out)} cop{'ies' if len(left_out) != 1 else 'y'} of another listed video left out "
            f"({left_out[0]})")


#: ``--min-score`` where the scores name no threshold (a hand-made highlights.json)
DEFAULT_MIN_SCORE = 0.85


def min_score_for(options: ReelOptions, source: ScoreSource) -> float:
    """The window score a clip must reach: ``--min-score``, else the scan's threshold, else 0.85."""
    if options.min_score is not None:
        return options.min_score
    return source.threshold if source.threshold is not None else DEFAULT_MIN_SCORE


def prepare_reel(scores: str | Path | ScoreSource, options: ReelOptions, *, decode_check: bool = True) -> PreparedReel:
    """Loads the scores, plans the reel and checks every chosen source, re-planning around bad ones."""
    source = scores if isinstance(scores, ScoreSource) else load_scores(scores)
    if options.min_score is None:
        options = dataclasses.replace(options, min_score=min_score_for(options, source))
        log.info("clips must score at least %.4g (%s; --min-score to change)", options.min_score,
                 "the scan's highlight threshold" if source.threshold is not None else "the default")
    infos: dict[Path, VideoInfo] = {}
    skipped: list[str] = []
    bad: set[Path] = set()
    videos: list[VideoScores] = []
    for v in source.videos:
        if not v.duration_s:  # highlights.json without durations: the container knows
            info = _probe(v.path, infos, skipped, bad)
            if info is None:
                continue
            v = dataclasses.replace(v, duration_s=info.duration_s, rotation=info.rotation)
        videos.append(v)
    copy_sets = _copy_sets(videos)  # kept path -> its copies, the kept one first
    spare = {v.path for group in copy_sets.values() for v in group[1:]}
    videos = [v for v in videos if v.path not in spare]
    if not videos:
        raise EmptySelectionError(f"{source.origin}: no scored video to cut a reel from "
                                  f"({source.failed_videos} failed or unscored, {len(skipped)} unreadable)")
    without = sum(not v.has_seconds for v in videos)
    if without == len(videos):
        log.warning("no per-second scores in %s: each window is centred on the video's best second where "
                    "known, else on its middle, and scored with the video's score", source.origin)
    elif without:  # a list whose scan folder holds some of its videos as they are now
        log.warning("%d of the %d videos from %s have no per-second scores (changed since the scan, or not in its "
                    "folder): their windows are centred on the best second where known, else on the middle",
                    without, len(videos), source.origin)
    by_path = {v.path: v for v in videos}
    while True:
        bad_before = len(bad)
        try:
            plan = plan_reel([v for v in videos if v.path not in bad], clip_seconds=options.clip_seconds,
                             top=options.top, min_score=float(options.min_score), max_duration_s=options.max_duration_s,
                             fade_s=options.fade_s, transitions=options.transitions, fps=options.fps,
                             order=options.order, per_video=options.per_video)
        except EmptySelectionError as exc:  # the sources not yet opened may be gone as well (a moved library)
            gone = [v for v in videos if v.path not in bad and not os.path.lexists(v.path)]
            raise _with_left_out(exc, [by_path[p] for p in bad if p in by_path] + gone,
                                 float(options.min_score)) from None
        newly_bad = False

        def lose(path: Path) -> None:
            """``path`` cannot be used: its next copy, if any, stands in for it (left out before, as a copy)."""
            bad.add(path)
            for group in copy_sets.values():
                members = {v.path for v in group}
                if path not in members or any(p not in bad and p not in spare for p in members):
                    continue  # not its set, or a copy of the set is in use already (its other window lost it)
                stand_in = next((v for v in group if v.path not in bad and v.path in spare), None)
                if stand_in is not None:
                    spare.discard(stand_in.path)
                    videos.append(stand_in)
                    by_path[stand_in.path] = stand_in
                    log.info("using %s, a copy of %s, instead", stand_in.path, path)

        for clip in plan.clips:
            info = _probe(clip.window.path, infos, skipped, bad)
            if info is None:
                lose(clip.window.path)
                newly_bad = True
                continue
            changed = _changed_since_scan(by_path[clip.window.path], info)
            if changed is not None:
                log.warning("skipping %s", changed)
                skipped.append(changed)
                lose(clip.window.path)
                newly_bad = True
                continue
            listed = by_path[clip.window.path]
            if listed.duration_s and info.duration_s < listed.duration_s - 0.5 / options.fps:
                # a hand-made highlights.json's duration_s past the file's end: the window ran past it too and the
                # reel held the last picture (1.5 s frozen for a 4-s video listed as 10 s)
                log.warning("%s: lasts %.2f s, not the %.2f s its scores say; its window is cut within it",
                            info.path, info.duration_s, listed.duration_s)
                by_path[listed.path] = dataclasses.replace(listed, duration_s=info.duration_s)
                videos = [by_path.get(v.path, v) for v in videos]
                newly_bad = True
                continue
            if decode_check:
                try:
                    check_window(info, clip.window.in_s)
                except QuadvaultError as exc:
                    log.warning("skipping %s", exc)
                    skipped.append(str(exc))
                    lose(clip.window.path)
                    newly_bad = True
        if not newly_bad:
            copies = _copies_note(sorted(spare, key=_nearest_root_first))
            if copies:
                plan = dataclasses.replace(plan, notes=plan.notes + (copies,))
            return PreparedReel(plan, infos, tuple(skipped), source)
        if len(bad) > bad_before:
            log.info("re-planning without %d unreadable or changed source(s)", len(bad))


#: Containers the reel (H.264, optional AAC) is written in; the suffix picks the muxer.
REEL_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def refuse_overwriting_inputs(out: Path, prepared: PreparedReel) -> None:
    """The reel and its sidecar are renamed over their paths: never over footage or the scores, whether or not
    this reel uses that video (a stray OUT.clips.csv beside a scanned video let the reel replace it)."""
    inputs = ([clip.window.path for clip in prepared.plan.clips] + [prepared.source.origin]
              + [v.path for v in prepared.source.videos if v.path.name in (out.name, sidecar_path(out).name)])
    for target in (out, sidecar_path(out)):
        for source in inputs:
            if _same_file(target, source):
                raise OutputError(f"would overwrite {source}, scored footage or the scores this reel reads", path=target,
                                  hint="write the reel somewhere else")


def _killed_between_renames(out: Path) -> bool:
    """A run killed after renaming its reel into place, before its cut list: the list is still under the killed
    run's temporary name beside it (the next run's sweep removes it)."""
    return bool(dead_temporaries(out.parent, f"{sidecar_path(out).name}."))


def check_output(out: Path) -> None:
    """Why ``out`` cannot be the reel, raised before anything is decoded (``--dry-run`` too)."""
    if out.is_dir():
        raise OutputError("is a folder; give the reel a file name like best.mp4", path=out)
    if not out.parent.exists():
        raise OutputError("output folder does not exist", path=out.parent)
    if not out.parent.is_dir():
        raise OutputError("is not a folder, so the reel cannot go into it", path=out.parent)
    if not os.access(out.parent, os.W_OK | os.X_OK):  # before any probing and test decoding, not after
        raise OutputError("output folder is not writable", path=out.parent)
    longest = max(len(os.fsencode(sidecar_path(out).name)), len(os.fsencode(temp_path(out, 4194304).name)))
    if longest > NAME_MAX:  # found after the whole encode before: its cut list's rename failed
        room = NAME_MAX - (longest - len(os.fsencode(out.name)))
        raise OutputError(f"the name is {len(os.fsencode(out.name))} bytes: its cut list ({sidecar_path(out).name}) "
                          f"and the encoder's temporary file need {longest} of the {NAME_MAX} a file name may have",
                          path=out, hint=f"choose a name of at most {room} bytes")
    # a reel made here before has its cut list beside it
    if out.exists() and not sidecar_path(out).exists() and not _killed_between_renames(out):
        raise OutputError(f"exists and is not a reel this command made (no {sidecar_path(out).name} beside it); "
                          "it would be replaced", path=out, hint="choose another name, or delete the file first")
    if out.suffix.lower() not in REEL_SUFFIXES:
        raise OutputError(f"a reel is H.264 video in {', '.join(REEL_SUFFIXES)}; "
                          f"{out.suffix or 'no extension'} cannot hold it", path=out,
                          hint=f"name it like {out.stem or 'best'}.mp4")


def plan_reel_for(scores: str | Path | ScoreSource, out: str | Path,
                  options: ReelOptions = ReelOptions()) -> PreparedReel:
    """``--dry-run``: the plan ``make_reel`` would encode, after the same checks of ``out`` (a dry run that
    said the reel "would be written" where the real run refuses it was no rehearsal)."""
    out = Path(out)
    check_output(out)
    resolve_device(options.device)  # what the real run refuses, the rehearsal refuses: --device gpu without one,
    choose_encoder(options.encoder, options.width, options.height, options.fps,  # --encoder nvenc without NVENC
                   gpu_allowed=options.device != "cpu")
    return _plan_for_checked(scores, out, options)


def _plan_for_checked(scores: str | Path | ScoreSource, out: Path, options: ReelOptions) -> PreparedReel:
    """The plan for an ``out`` that passed ``check_output``, never one made from ``out`` itself."""
    prepared = prepare_reel(scores, options)
    refuse_overwriting_inputs(out, prepared)
    return prepared


def make_reel(scores: str | Path | ScoreSource, out: str | Path, options: ReelOptions = ReelOptions(), *,
              on_written: Callable[[], None] | None = None) -> ReelResult:
    """Plans, encodes ``out`` and writes ``OUT.clips.csv``; raises ``EmptySelectionError`` when nothing fits.
    ``on_written`` is called once both are in place, before a stop signal that came meanwhile takes effect."""
    out = Path(out)
    check_output(out)
    # gpu raises, naming why, on a machine without a usable GPU; auto decodes on NVDEC where there is one
    gpu = 0 if resolve_device(options.device) == "gpu" else None
    source = scores if isinstance(scores, ScoreSource) else load_scores(scores)
    encoder = choose_encoder(options.encoder, options.width, options.height, options.fps,
                             gpu_allowed=options.device != "cpu")
    sidecar = sidecar_path(out)
    vanished: list[str] = []
    while True:
        prepared = _plan_for_checked(source, out, options)
        try:
            result = _encode_with_list(prepared, out, sidecar, options, encoder, gpu, on_written)
        except SourceUnavailable as exc:  # deleted, made unreadable or replaced while encoding: the reel again
            if len(vanished) >= MAX_REPLANS:
                raise
            log.warning("%s; encoding the reel again without it", exc)
            vanished.append(str(exc))
            source = dataclasses.replace(source, videos=[v for v in source.videos if v.path != exc.path])
            continue
        prepared = dataclasses.replace(prepared, skipped=prepared.skipped + tuple(vanished))
        return ReelResult(result, sidecar, prepared)


#: How many sources may vanish during encoding before the reel gives up (each costs an encode from the start)
MAX_REPLANS = 5


def _encode_with_list(prepared: PreparedReel, out: Path, sidecar: Path, options: ReelOptions, encoder: str,
                      gpu: int | None, on_written: Callable[[], None] | None) -> RenderResult:
    """Encodes the reel and writes its clip list, both renamed into place only once both are complete."""
    # the list is written before the reel is renamed into place and renamed after it: a full disk while
    # writing it used to leave a new reel without a list, which the next run then refused to replace
    # and a stop signal between the two renames waits for the second: it left a new reel without its list (or
    # with the earlier reel's), which the next run refused to replace
    with stop_signals_deferred(from_start=False) as hold_stops:
        with atomic_path(sidecar) as sidecar_tmp:
            write_sidecar(prepared.plan, sidecar_tmp, atomic=False, shown_as=sidecar)
            result = render_reel(prepared.plan, prepared.infos, out, width=options.width, height=options.height,
                                 encoder=encoder, audio=options.audio, gpu=gpu, before_rename=hold_stops)
        if on_written is not None:
            on_written()
    return result
