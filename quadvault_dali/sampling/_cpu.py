"""The ``cpu`` backend: PyAV decoding, several videos at once in threads (FFmpeg releases the GIL).

Keyframe mode reads each chosen keyframe's bytes straight from the file (position and size from the
container index) and decodes it alone: no demuxing of the packets in between, no other frames.
Exact mode decodes, per sampling time, only its GOP's prefix from the keyframe to the frame nearest that
time: the same runs the gpu backend cuts for DALI (``_remux``), so past the wanted frame the rest of a
GOP is neither read nor decoded. A file whose runs cannot be cut is decoded in order instead.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import av
from av.video.reformatter import Interpolation
import numpy as np
import torch

from ..errors import DecodeError, QuadvaultError, detached, unexpected_failure
from .._frame_times import FrameClock
from .._geometry import centre_offset
from ..probe import VideoInfo, open_container, probe_open, rewound
from ._base import Sampler, VideoSource, path_of, register_backend
from ._colour import is_hdr, to_sdr
from ._plan import SamplePlan, plan_samples
from ._reader import CountingFile
from ._remux import (decode_clip, exact_clips, largest_gop_bytes, nearest_index, picture_skipper, reads_at_positions,
                     seek_keyframes)
from ._types import FrameBatch, VideoOutcome

log = logging.getLogger(__name__)
_QUEUE_FRAMES = 32  # frames a video worker may run ahead of the consumer
#: Exact mode decodes GOP prefixes held in memory only while no GOP is larger than this; a file with
#: longer GOPs (a single-keyframe recording) is decoded in order, which costs the same decoding there.
MAX_GOP_BYTES_IN_MEMORY = 64 << 20


#: swscale flags for the one scaling + YUV->RGB step: area averaging, with the exact full-chroma converter.
#: With ``AREA`` alone swscale's fast path truncates: frames came out 1-2 levels darker per channel than an
#: exact conversion (1.7 at a 360p -> 64 px downscale, 0.9 at full size), and DALI, which is exact, then
#: looked 2-3 levels too bright next to them on the H100.
SWS_FLAGS = int(Interpolation.AREA) | int(Interpolation.ACCURATE_RND) | int(Interpolation.FULL_CHR_H_INT)
#: the same for a 16-bit RGB result (the reel's HDR frames), without FULL_CHR_H_INT: FFmpeg 8's swscale with it
#: turned 4:2:0 into garbage rgb48le chroma whenever the height stayed the same (green (30,170,30) became
#: (0,0,144); a colour audit's find)
SWS_FLAGS_48 = int(Interpolation.AREA) | int(Interpolation.ACCURATE_RND)


def output_size(info: VideoInfo, size: int) -> tuple[int, int]:
    """(width, height) after scaling the displayed picture so its short side is ``size``."""
    scale = size / min(info.width, info.height)
    return max(size, round(info.width * scale)), max(size, round(info.height * scale))


def to_display(frame: av.VideoFrame, info: VideoInfo, size: int, square: bool) -> np.ndarray:
    """Scaled, upright (rotation applied) RGB ``(H, W, 3)``, centre-cropped to a square if asked."""
    width, height = output_size(info, size)
    coded_w, coded_h = (height, width) if info.rotation in (90, 270) else (width, height)
    image = frame.to_ndarray(width=coded_w, height=coded_h, format="rgb24", interpolation=SWS_FLAGS)
    if is_hdr(info.color_transfer):  # PQ / HLG: tone-mapped to SDR as on the GPU (``_colour.to_sdr``)
        frames = torch.from_numpy(image).permute(2, 0, 1)[None]
        image = to_sdr(frames, info.color_transfer)[0].permute(1, 2, 0).numpy()
    if info.rotation:
        image = np.rot90(image, k=-info.rotation // 90)
    if square:
        top, left = centre_offset(image.shape[0], size), centre_offset(image.shape[1], size)
        image = image[top: top + size, left: left + size]
    return np.ascontiguousarray(image)


@dataclass
class _Done:
    outcome: VideoOutcome


class _VideoJob:
    """Decodes one video in a worker thread into a bounded queue of (image, time) items."""

    def __init__(self, source: VideoSource, sampler: "CpuSampler") -> None:
        self.path = path_of(source)
        self.items: queue.Queue[tuple[np.ndarray, float] | _Done] = queue.Queue(maxsize=_QUEUE_FRAMES)
        self._sampler = sampler
        self._thread = threading.Thread(target=self._run, name=f"decode:{self.path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        outcome = VideoOutcome(self.path, None, None)
        try:
            self._sampler.decode_video(self.path, outcome, self.items.put)
        except QuadvaultError as exc:
            outcome.error = detached(exc)
        except Exception as exc:  # noqa: BLE001 - one broken file must never stop the others
            log.debug("unexpected failure decoding %s", self.path, exc_info=True)
            outcome.error = detached(unexpected_failure(exc, "decoding", self.path))
        self.items.put(_Done(outcome))


#: Keyframes that fail in a row, with none decoded before, after which a video is given up (an index claiming
#: 2,000,000 keyframes over 16 bytes was tried 133,334 times, for a minute, with a warning line each)
KEYFRAME_FAILURES_TO_GIVE_UP = 50
#: Failed keyframes a video warns of one by one; the rest are counted in one line at its end
KEYFRAME_FAILURES_SHOWN = 3


class _KeyframeFailures:
    """Decodes a video's keyframes one by one (``decode_alone``) and keeps those that did not decode: the first
    few named, the rest counted, and the video given up after ``KEYFRAME_FAILURES_TO_GIVE_UP`` in a row with
    none decoded."""

    def __init__(self, plan: SamplePlan) -> None:
        self.plan, self.count, self.any_decoded = plan, 0, False

    def failed(self, t: float, why: str) -> None:
        self.count += 1
        if self.count <= KEYFRAME_FAILURES_SHOWN:
            log.warning("%s: cannot decode the keyframe at %.2fs: %s", self.plan.info.path, t, why)
        if not self.any_decoded and self.count >= KEYFRAME_FAILURES_TO_GIVE_UP:
            raise DecodeError(f"none of its first {self.count} keyframes decode ({self.plan.info.codec}); "
                              f"given up on its {len(self.plan.key_packets)} keyframes", path=self.plan.info.path,
                              hint="the video data or its index is damaged; try playing it, or re-copy it")

    def decode_alone(self, ctx: av.video.codeccontext.VideoCodecContext, packet: av.Packet,
                     t: float) -> av.VideoFrame | None:
        """The picture of one keyframe ``packet`` (at ``t`` s) decoded on its own, the decoder flushed after it;
        ``None``, counted here, where it does not decode."""
        try:
            decoded = ctx.decode(packet) + ctx.decode(None)
        except av.error.FFmpegError as exc:
            self.failed(t, str(exc))
            decoded = []
        ctx.flush_buffers()
        if not decoded:
            return None
        self.any_decoded = True
        return decoded[0]

    def summary(self) -> None:
        if self.count > KEYFRAME_FAILURES_SHOWN:
            log.warning("%s: %d more keyframes did not decode", self.plan.info.path,
                        self.count - KEYFRAME_FAILURES_SHOWN)


@register_backend("cpu")
class CpuSampler(Sampler):
    """PyAV decoding on the CPU; ``streams`` videos are decoded concurrently."""

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def iter_batches(self, videos: Iterable[VideoSource]) -> Iterator[FrameBatch]:
        cfg = self.config
        pending_imgs: list[np.ndarray] = []
        pending_paths: list[Path] = []
        pending_times: list[float] = []
        pending_done: list[VideoOutcome] = []
        source_iter = iter(videos)
        jobs: deque[_VideoJob] = deque()

        def refill() -> None:
            while len(jobs) < cfg.streams:
                source = next(source_iter, None)
                if source is None:
                    return
                jobs.append(_VideoJob(source, self))

        def flush() -> FrameBatch:
            frames = self.stack(pending_imgs)
            batch = FrameBatch(frames, list(pending_paths), list(pending_times), list(pending_done))
            pending_imgs.clear(), pending_paths.clear(), pending_times.clear(), pending_done.clear()
            return batch

        refill()
        while jobs:
            job = jobs[0]
            item = job.items.get()
            if isinstance(item, _Done):
                jobs.popleft()
                pending_done.append(item.outcome)
                refill()
                if not pending_imgs and not jobs:
                    break
                continue
            if pending_imgs and (pending_imgs[0].shape != item[0].shape or pending_paths[-1] != job.path
                                 and not cfg.square):
                yield flush()
            pending_imgs.append(item[0])
            pending_paths.append(job.path)
            pending_times.append(item[1])
            if len(pending_imgs) >= cfg.batch_size:
                yield flush()
        if pending_imgs or pending_done:
            yield flush()

    def stack(self, images: list[np.ndarray]) -> torch.Tensor:
        """``(N, 3, H, W)`` uint8 from the ``(H, W, 3)`` pictures ``decode_video`` emits."""
        if not images:
            size = self.config.size
            return torch.empty((0, 3, size, size), dtype=torch.uint8)
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()

    # --- one video ------------------------------------------------------------------------------

    def decode_video(self, path: Path, outcome: VideoOutcome, emit: Callable[[tuple[np.ndarray, float]], None],
                     *, after_s: float = float("-inf")) -> None:
        """Decodes one video's sampled frames (upright, resized ``(H, W, 3)`` RGB) into ``emit``, in time order.

        Fills ``outcome`` (info, mode, frames, bytes read); raises a ``QuadvaultError`` for a bad file.
        The gpu backend calls it too, for videos its hardware decoder cannot take, and with ``after_s`` to
        finish a video its hardware decoder failed on: only the sampled frames after that time are emitted
        (keyframe mode does not even read the others).
        """
        cfg = self.config
        fh = CountingFile(path) if path.is_file() else None
        try:
            container = open_container(path, fh, quick=True)
            try:
                info, index = probe_open(container, path)
                outcome.info, outcome.decoder = info, "pyav"
                plan = plan_samples(info, index, fps=cfg.fps, mode=cfg.mode)
                outcome.mode, outcome.frames_expected = plan.mode, plan.expected_frames
                container = rewound(container, path, fh, index)
                stream = container.streams[info.stream_index]
                stream.codec_context.thread_count = 2
                skipped = 0
                if after_s > float("-inf") and plan.mode == "keyframe":
                    keys = plan.key_packets
                    plan = dataclasses.replace(plan, key_packets=keys[index.pts[keys] > after_s + 1e-9])
                if plan.mode == "exact":
                    frames = self._exact_runs(plan, container, stream, fh)
                elif reads_at_positions(plan, fh):
                    frames = self._keyframes(plan, stream, fh)
                else:
                    frames = self._keyframes_by_seek(plan, container, stream)
                for frame, t in frames:
                    if t <= after_s + 1e-9:  # exact mode: delivered before the take-over
                        skipped += 1
                        continue
                    emit((to_display(frame, info, cfg.size, cfg.square), t))
                    outcome.frames += 1
            finally:
                container.close()
            expected = plan.expected_frames - skipped
            if expected > 0 and (outcome.frames == 0 or outcome.frames * 2 < expected):
                raise DecodeError(f"decoded only {outcome.frames} of {expected} sampled frames "
                                  f"({info.codec}, {plan.mode} mode)", path=path,
                                  hint="the video data is damaged; try playing it, or re-copy it")
        finally:
            if fh is not None:
                outcome.bytes_read = fh.bytes_read
                fh.close()

    @staticmethod
    def _keyframes(plan: SamplePlan, stream: av.video.stream.VideoStream,
                   fh: CountingFile | None) -> Iterator[tuple[av.VideoFrame, float]]:
        """Decodes each planned keyframe from its own bytes, read at its index position."""
        assert fh is not None
        ctx = stream.codec_context
        index = plan.index
        failures = _KeyframeFailures(plan)
        for row in plan.key_packets:
            data = fh.read_at(int(index.pos[row]), int(index.size[row]))
            if len(data) < int(index.size[row]):
                failures.failed(float(index.pts[row]), "it is cut off by the end of the file")
                continue
            packet = av.Packet(data)
            packet.pts = packet.dts = int(row)
            packet.is_keyframe = True
            frame = failures.decode_alone(ctx, packet, float(index.pts[row]))
            if frame is not None:
                yield frame, round(float(index.pts[row]), 6)
        failures.summary()

    @staticmethod
    def _keyframes_by_seek(plan: SamplePlan, container: av.container.InputContainer,
                           stream: av.video.stream.VideoStream) -> Iterator[tuple[av.VideoFrame, float]]:
        """Keyframe mode for containers without a raw packet index (MKV, WebM, TS): ``seek_keyframes``."""
        ctx = stream.codec_context
        failures = _KeyframeFailures(plan)
        for packet, t in seek_keyframes(plan, container, stream):
            frame = failures.decode_alone(ctx, packet, t)
            if frame is not None:
                yield frame, t
        failures.summary()

    def _exact_runs(self, plan: SamplePlan, container: av.container.InputContainer,
                    stream: av.video.stream.VideoStream, fh: CountingFile | None) -> Iterator[tuple[av.VideoFrame, float]]:
        """Exact mode through the GOP prefixes (``_remux.exact_clips``); in decode order where GOPs are too
        large to hold in memory, or where the runs cannot be cut."""
        info = plan.info
        last = float("-inf")
        if not plan.index.raw_positions or plan.index.hides_inside \
                or largest_gop_bytes(plan.index) > MAX_GOP_BYTES_IN_MEMORY:
            # MKV/WebM/TS: runs found by seeking read more than decoding in order does; an edit list hiding
            # pictures between shown ones: only the decoder knows which pictures it hides
            yield from self._exact(plan, container, stream)
            return
        try:
            # One run per clip, each decoded afresh: runs of open GOPs (HEVC CRA keyframes) far apart in
            # one stream would confuse the decoder's picture order. No frame budget either (frames leave
            # one at a time), so a long GOP is never cut into runs that each decode it again.
            runs = exact_clips(plan, container, stream, max_frames=1 << 30, max_bytes=1, fh=fh)
            for frame, t in (item for clip in runs for item in decode_clip(clip)):
                last = t
                yield frame, t
            return
        except (DecodeError, av.error.FFmpegError, ValueError) as exc:  # ValueError: a run not led by a keyframe
            log.info("%s: its keyframe runs did not decode on their own (%s: %s); decoding the whole stream in "
                     "order instead (slower, the same frames)", info.path, type(exc).__name__, exc)
        if fh is not None:
            fh.seek(0)
        with open_container(info.path, fh, quick=True) as again:
            stream = again.streams[info.stream_index]
            stream.codec_context.thread_count = 2
            yield from ((f, t) for f, t in self._exact(plan, again, stream) if t > last + 1e-9)

    @staticmethod
    def _exact(plan: SamplePlan, container: av.container.InputContainer,
               stream: av.video.stream.VideoStream) -> Iterator[tuple[av.VideoFrame, float]]:
        """Decodes in order and keeps, for each grid time, the nearest decoded frame (once)."""
        grid = plan.grid
        start = stream.start_time or 0
        tb = float(stream.time_base)
        i = 0
        prev: tuple[av.VideoFrame, float] | None = None
        last_emitted: float | None = None

        def pick(cand: tuple[av.VideoFrame, float]) -> Iterator[tuple[av.VideoFrame, float]]:
            nonlocal last_emitted
            if last_emitted is None or cand[1] != last_emitted:
                last_emitted = cand[1]
                yield cand

        decode_errors = 0
        skippable = _Skippable(plan, stream, container.format.name)
        clock = FrameClock(plan.index.decode_order_times)
        packets = container.demux(stream)
        while i < len(grid):
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                raise DecodeError(f"cannot read packets: {exc}", path=plan.info.path) from exc
            if skippable(packet, start, tb):
                continue
            clock.fed(packet)
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                decode_errors += 1
                skippable.stop()
                clock.dropped(packet)
                continue
            for frame in decoded:
                pts = clock.time_of(frame)
                if pts is None:
                    continue
                current = (frame, round((pts - start) * tb, 6))
                while i < len(grid) and current[1] >= grid[i]:
                    near_prev = prev is not None and (grid[i] - prev[1]) <= (current[1] - grid[i])
                    yield from pick(prev if near_prev else current)  # type: ignore[arg-type]
                    i += 1
                prev = current
        if prev is not None and i < len(grid):
            yield from pick(prev)
        if decode_errors:
            log.warning("%s: %d packets could not be decoded and were skipped", plan.info.path, decode_errors)


class _Skippable:
    """Which packets the in-order exact decode may leave out: pictures nothing references (``_remux.picture_skipper``)
    that are neither the nearest to a grid time nor next to one (so a nearest frame that fails to decode has
    the neighbour the full decode would fall back to), known from the packet index before decoding.

    Only where packet times are presentation times that run forward: containers that store them (MP4/MOV,
    Matroska/WebM, MPEG-TS; not AVI, whose times are in decode order), an index without repeated times or a
    jump back (``cat``-joined recordings), and a first packet where the index says it is. After a decode
    error nothing more is skipped: what the full decode picks next then depends on what it could decode."""

    #: containers whose packet times are presentation times (FFmpeg's format names, first part)
    PRESENTATION_TIMES = frozenset({"mov", "matroska", "mpegts"})
    #: how far back a presentation time may lie behind an earlier packet's: B-frames' reordering, not a jump
    MAX_REORDER_S = 1.0

    def __init__(self, plan: SamplePlan, stream: av.video.stream.VideoStream, container_format: str) -> None:
        decode_order = np.round(np.asarray(plan.index.pts, dtype=np.float64), 6)
        pts = np.unique(decode_order)  # as ``_exact`` rounds the decoded frames' times
        self.known = set(pts.tolist())
        self.wanted: set[float] = set()
        self.skips = picture_skipper(stream, plan.info.codec)
        usable = (plan.info.codec in ("h264", "hevc") and container_format.split(",")[0] in self.PRESENTATION_TIMES
                  and len(pts) == len(decode_order) > 1
                  and float(np.max(np.maximum.accumulate(decode_order) - decode_order)) <= self.MAX_REORDER_S)
        self.checked: bool | None = None if usable else False
        for t in plan.grid if usable else ():
            # the nearest and its neighbours (so on a near tie both sides of ``t``, whichever ``_exact`` picks)
            nearest = nearest_index(pts, float(t))
            self.wanted.update(pts[max(0, nearest - 1):nearest + 2].tolist())

    def stop(self) -> None:
        """A packet failed to decode: skip nothing from here on."""
        self.checked = False

    def __call__(self, packet: av.Packet, start: int, tb: float) -> bool:
        if self.checked is False or packet.pts is None or not packet.size:
            return False
        t = round((packet.pts - start) * tb, 6)
        if self.checked is None:  # the first packet with a time: it must be where the index says
            self.checked = t in self.known
            return False
        return t not in self.wanted and self.skips(bytes(packet))
