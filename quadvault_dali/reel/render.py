"""Rendering a planned reel: one pass over the output frames, at most two sources open at a time.

Each output frame ``j`` (shown at ``j / fps``) takes its picture from the clip(s) covering it: one
clip normally, two inside a crossfade. Sources are opened when their clip starts and closed when it
ends, so memory stays at a few frames whatever the reel's length. The file is written under a
temporary name next to ``out`` and renamed into place only when complete.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Literal, Mapping

import av
import numpy as np

from .._files import atomic_path, process_gone, remove_dead_temporaries
from ..errors import OutputError, QuadvaultError
from ..probe import VideoInfo
from ..progress import progress_bar
from .audio import SAMPLE_RATE, audio_frames, build_audio_track
from .encoders import add_video_stream, reel_frame
from .frames import WindowReader, blend
from .select import PlannedClip, ReelPlan
from .sidecar import sidecar_path

AudioChoice = Literal["none", "keep"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderResult:
    path: Path
    frames: int
    encoder: str
    audio: bool
    failed_clips: tuple[int, ...]  # positions whose source broke while encoding (held their last frame)
    decoders: tuple[str, ...] = ()  # per clip position: nvdec or pyav


class SourceUnavailable(QuadvaultError):
    """A clip's source no longer opens, or is another file, when its clip starts: it was deleted, moved, made
    unreadable or replaced while the reel was encoding. ``make_reel`` plans the reel again without it (it showed
    as a black clip the clip list still named: a live-library tester's find)."""


class _ClipSource:
    """A clip's reader that survives a mid-window decode failure by holding its last good picture."""

    def __init__(self, clip: PlannedClip, info: VideoInfo, width: int, height: int, gpu: int | None) -> None:
        self.clip = clip
        self.failed = False
        self.decoder = "none"
        self._last: np.ndarray | None = None
        self._size = (height, width)
        try:
            st = os.stat(info.path)
        except OSError as exc:
            raise SourceUnavailable(f"is gone since the reel was planned ({exc.strerror or exc})",
                                    path=info.path) from None
        if (st.st_size, st.st_mtime_ns) != (info.size_bytes, info.mtime_ns):
            raise SourceUnavailable("was replaced since the reel was planned", path=info.path)
        try:
            self._reader: WindowReader | None = WindowReader(info, clip.window.in_s, width, height, gpu=gpu)
            self.decoder = self._reader.decoder
        except QuadvaultError as exc:  # it decoded when the reel was planned: not this file any more
            raise SourceUnavailable(f"no longer opens ({exc.reason})", path=info.path) from exc

    def _fail(self, exc: Exception) -> None:
        log.warning("clip %d: %s; holding its last good frame", self.clip.position, exc)
        self.failed = True
        self._reader = None

    def frame(self, j: int) -> np.ndarray:
        if self._reader is not None:
            try:
                self._last = self._reader.frame_at(self.clip.source_time(j))
            except QuadvaultError as exc:
                self.close()
                self._fail(exc)
        if self._last is None:
            self._last = np.zeros((*self._size, 3), np.uint8)
        return self._last

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


def temp_path(out: Path, pid: int | None = None) -> Path:
    """Hidden partial file next to ``out``, same suffix so the container format is the same."""
    return out.with_name(f".{out.stem}.partial-{os.getpid() if pid is None else pid}{out.suffix}")


def remove_stale_partials(out: Path) -> None:
    """Removes the partial files of earlier runs for ``out`` whose process is gone (killed: nothing could
    clean up), so they do not pile up beside the reel; a live run's is left alone."""
    for partial in out.parent.glob(f".{glob.escape(out.stem)}.partial-*{glob.escape(out.suffix)}"):
        pid_text = partial.name[len(f".{out.stem}.partial-"): len(partial.name) - len(out.suffix)]
        if not pid_text.isdigit() or partial != temp_path(out, int(pid_text)):
            continue
        if not process_gone(int(pid_text)):
            continue  # maybe another run writing the same reel
        log.info("removing %s, left by a run that was killed", partial)
        partial.unlink(missing_ok=True)
    # the clip list's (``OUT.clips.csv``) temporary, by its whole name: a cut temporary name is told by its hash
    remove_dead_temporaries(out.parent, prefix=f"{sidecar_path(out).name}.")


def render_reel(plan: ReelPlan, infos: Mapping[Path, VideoInfo], out: str | Path, *, width: int, height: int,
                encoder: str, audio: AudioChoice = "none", gpu: int | None = None,
                before_rename: Callable[[], None] | None = None) -> RenderResult:
    """Encodes ``plan`` into ``out`` (atomically). ``infos`` holds the probed sources by path.

    ``gpu``: decode the source windows on this CUDA device's NVDEC where it can take them. ``before_rename`` is
    called once the reel is encoded, just before it is renamed into place.
    """
    out = Path(out)
    if width % 2 or height % 2:
        raise QuadvaultError(f"reel resolution {width}x{height} must have even width and height (H.264 4:2:0)")
    if not plan.clips:
        raise QuadvaultError("nothing to render: the plan has no clips")
    if not out.parent.is_dir():
        raise OutputError("output folder does not exist", path=out.parent)
    track = build_audio_track(plan, infos=infos) if audio == "keep" else None
    remove_stale_partials(out)
    with atomic_path(out, temp_path(out)) as tmp:
        failed, decoders = _encode(plan, infos, tmp, width, height, encoder, track, gpu)
        if before_rename is not None:
            before_rename()
    if gpu is not None:
        log.info("source windows decoded: %d on NVDEC, %d on the CPU", decoders.count("nvdec"),
                 decoders.count("pyav"))
    return RenderResult(out, plan.total_frames, encoder, track is not None, failed, decoders)


def _encode(plan: ReelPlan, infos: Mapping[Path, VideoInfo], tmp: Path, width: int, height: int,
            encoder: str, track: np.ndarray | None, gpu: int | None) -> tuple[tuple[int, ...], tuple[str, ...]]:
    options = {"movflags": "+faststart"} if tmp.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
    try:
        # absolute: FFmpeg takes a relative "Alps: best.mp4" for a URL of protocol "Alps" (opened at the first
        # packet, so the failure came as a traceback after the whole plan had been checked)
        container = av.open(os.path.abspath(tmp), "w", options=options)
    except (av.error.FFmpegError, OSError) as exc:
        raise OutputError(f"cannot create the reel ({exc})", path=tmp) from exc
    failed: list[int] = []
    decoders: dict[int, str] = {}
    with container:
        vstream = add_video_stream(container, encoder, width, height, plan.fps)
        frame_tb = vstream.codec_context.time_base  # the muxer may change the stream's own time base
        astream = None
        if track is not None:
            astream = container.add_stream("aac", rate=SAMPLE_RATE, layout="stereo")
            astream.time_base = Fraction(1, SAMPLE_RATE)
        pending_audio = audio_frames(track) if track is not None else iter(())
        next_audio: av.AudioFrame | None = next(pending_audio, None)
        active: dict[int, _ClipSource] = {}
        clips = list(plan.clips)
        with progress_bar(plan.total_frames, "encoding reel", unit="frame") as bar:
            for j in range(plan.total_frames):
                for clip in clips:
                    if clip.start_frame == j:
                        active[clip.position] = _ClipSource(clip, infos[clip.window.path], width, height, gpu)
                        decoders[clip.position] = active[clip.position].decoder
                picture = _compose(j, active, plan.fade_frames)
                frame = reel_frame(picture)
                frame.pts = j
                frame.time_base = frame_tb
                container.mux(vstream.encode(frame))
                while astream is not None and next_audio is not None and next_audio.pts <= (j + 1) / plan.fps * SAMPLE_RATE:
                    container.mux(astream.encode(next_audio))
                    next_audio = next(pending_audio, None)
                for pos, src in list(active.items()):
                    if j + 1 >= src.clip.start_frame + src.clip.frames:
                        if src.failed:
                            failed.append(pos)
                        src.close()
                        del active[pos]
                bar.update(1)
        container.mux(vstream.encode(None))
        if astream is not None:
            while next_audio is not None:
                container.mux(astream.encode(next_audio))
                next_audio = next(pending_audio, None)
            container.mux(astream.encode(None))
    return tuple(sorted(failed)), tuple(decoders[c.position] for c in plan.clips if c.position in decoders)


def _compose(j: int, active: Mapping[int, _ClipSource], fade_frames: int) -> np.ndarray:
    """One clip's picture, or the crossfade of the outgoing and incoming clips."""
    sources = sorted(active.values(), key=lambda s: s.clip.start_frame)
    if len(sources) == 1:
        return sources[0].frame(j)
    outgoing, incoming = sources[0], sources[-1]
    weight = (j - incoming.clip.start_frame + 1) / (fade_frames + 1)
    return blend(outgoing.frame(j), incoming.frame(j), weight)
