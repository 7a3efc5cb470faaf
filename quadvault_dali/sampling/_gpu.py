"""The ``gpu`` backend: DALI's video decoder on NVDEC, frames land as CUDA tensors.

Work flows through three stages, all bounded:

1. *prepare* threads probe each video, plan it and cut it into small in-memory MP4 clips holding only
   the packets needed (``_remux``): keyframe mode reads just the chosen keyframes' bytes. Queued clips
   hold at most a byte budget of host memory (``_budget``: 2 GB or an eighth of the RAM, per process share);
2. ``streams`` *decode* threads, each owning one DALI pipeline (one hardware decode stream), decode
   a few DALI samples per run, resize them on the GPU and hand them to PyTorch through DLPack. Every
   sample pays a fixed set-up in DALI (demuxer, NVDEC parser, frame buffers: ~10 ms on an H200, ~80 ms
   while DALI's decoder cache missed on 1080p H.264), so clips are as long as the card's memory allows
   and consecutive clips of short videos with the same codec set-up share one sample (``_samples``);
   ``stream_decode`` (experimental) decodes merged clips with DALI's streaming operator instead
   (``_stream_decoder``);
3. the caller's thread puts frames into batches in input order and reports every video once.

A clip that DALI cannot decode fails its whole DALI batch, so a failed batch is retried clip by clip
on a fresh pipeline and only the video that owns the bad clip gets an error outcome.

Videos the hardware decoder cannot take at all (AV1 on an H100, 4:2:2 chroma, sizes outside NVDEC's
range: ``_nvdec``) are known from the probe. With ``cpu_fallback`` (the default) a prepare thread decodes
just those with the ``cpu`` backend's decoder and hands their frames over on the GPU, and the video's
outcome says so (``decoder="pyav"``, ``fallback_reason``); without it they are error outcomes. A video
the hardware decoder fails on anyway (a limit the table does not know, a driver quirk, damaged data, a
clip that cannot be cut from the file) is finished on the CPU from the first frame not yet handed over
(``decoder="nvdec+pyav"``, see ``_handover``): the CPU decoder either decodes it or reports the damage in
its own words.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np
import torch

from ..device import nvdec_status, resolve_device
from ..errors import BackendUnavailableError, DecodeError, QuadvaultError, UnsupportedCodecError
from ..probe import VideoInfo, probe_open
from ._base import Sampler, SamplerConfig, VideoSource, register_backend
from ._budget import ByteBudget, clip_bytes, queued_bytes_for
from ._clip_decoder import CLIPS_PER_RUN, DECODE_THREADS, ClipDecoder, DecodeStats, error_summary
from ._colour import convert_from_bt601, to_sdr
from ._cpu import CpuSampler
from ._ffmpeg_decoder import FfmpegDecoder, ffmpeg_limitation
from ._handover import Abandoned, TakeOver, VideoTask
from ._nvdec import dali_cpu_limitation, nvdec_limitation
from ._plan import plan_samples
from ._prepare_pool import CutSettings, Job, PoolUnavailable, PreparePool
from ._reader import CuttingSource
from ._remux import CLIP_PIXELS, Clip, start_clips
from ._samples import (MERGE_PIXELS, STREAM_MAX_FRAMES, STREAM_MERGE_FRAMES, _Work, group_clips, joins,
                       merged_samples, sample_pixels_for, spread_pixels)
from ._stream_decoder import StreamClipDecoder
from ._types import FrameBatch, VideoOutcome

log = logging.getLogger(__name__)

#: Frames per hand-over when a video is decoded on the CPU instead (see ``cpu_fallback``).
FALLBACK_CHUNK = 16
#: Videos the hardware decoder may fail on before it has decoded anything at all, before the sampler
#: concludes it does not work on this machine (rather than decode a whole library on the CPU).
FAILURES_BEFORE_GIVING_UP = 8
#: Codecs the streaming decoder takes on NVDEC (``_streams``): one picture per packet.
STREAMED_ON_NVDEC = frozenset({"h264", "hevc"})
#: Queued clips per decode stream: room for several short videos' clips to be merged into one sample.
QUEUED_PER_STREAM = 8
#: Decode streams per process beyond which the gpu backend warns. On an H100 (2026-11-26) 16 streams sampled
#: no faster than 8 (1080p H.264 1,635-1,983 frames/s against 1,743-2,006), 8 halved 2160p HEVC against 4
#: (samples sized down to one video each), and twice DALI aborted the process (CUDA_ERROR_ILLEGAL_ADDRESS) in
#: the next sampler after 16-stream ones had run in the same process.
TESTED_STREAMS = 8
_STOP = object()
AnyClipDecoder = ClipDecoder | StreamClipDecoder


class DaliSampler(Sampler):
    """The DALI sampling engine with a chosen decoder device; ``gpu`` is this with NVDEC ("mixed").

    ``decoder_device="cpu"`` (DALI's CPU decoder: VP8/VP9/MJPEG only) exists so tests run the same
    graph and the same machinery without a GPU; it is not registered as a backend.
    """

    decoder_device: ClassVar[str] = "cpu"
    decoder_name: ClassVar[str] = "dali-cpu"

    def __init__(self, config: SamplerConfig | None = None, **overrides: object) -> None:
        super().__init__(config, **overrides)
        self.clips_per_run = CLIPS_PER_RUN  # DALI samples per run of one stream's pipeline
        self.decode_threads = DECODE_THREADS  # that pipeline's threads: it decodes a run's samples on them
        self.merge_clips = True  # several short videos per DALI sample (``group_clips``)
        self.merge_pixels = MERGE_PIXELS
        self.stream_merge_frames = STREAM_MERGE_FRAMES  # streamed merges: wanted frames per fed clip
        #: samples in flight the card's memory is shared between when sizing samples (``sample_pixels_for``);
        #: ``None``: streams x ``clips_per_run``. Experimental (stop 18): on an H100, 8 streams cut 2160p samples
        #: to one video's 8 keyframes and sampled at half the rate of 4 (layout suffix ``b`` in the benchmarks)
        self.budget_samples: int | None = self.config.budget_samples
        #: spread a run's per-sample clips over its ``clips_per_run`` samples, each at least this many frames
        #: (``spread_pixels``), instead of filling the first; ``None``: fill. Experimental (stop 18): on an H100,
        #: 1080p runs held 1.2-1.5 samples (NVDEC 37-55 % busy) where 2160p runs held 3.5 (NVDEC 80 %)
        self.spread_min_frames: int | None = self.config.spread_min_frames
        self.clip_pixels = CLIP_PIXELS  # what one video's clip may hold (``frame_budget``)
        self._streaming = False  # this run's ``config.stream_decode`` (the decode threads read it)
        #: FFmpeg's decoders instead of DALI's (``config.decode_client``): fed packets, no MP4s, no uncropping
        self._ffmpeg = self.config.decode_client == "ffmpeg"
        #: its decoders between runs (each NVDEC one holds a CUDA context: ~0.3 s to open), taken by the streams
        self._idle_decoders: list[FfmpegDecoder] = []
        self._idle_lock = threading.Lock()
        self.decode_stats = DecodeStats()  # DALI runs, samples, frames over all streams (benchmarks read it)
        #: host bytes queued clips may hold (``_budget``; ``None``: from the machine's memory and ``memory_share``)
        self.queued_bytes_limit: int | None = None
        self.queued_bytes_peak = 0  # the most they held in any run so far (benchmarks read it)
        self._budget = ByteBudget(0)  # this run's (``iter_batches``)
        #: H.264/HEVC clips without their SPS's cropping, so DALI finds its NVDEC decoders again (``_uncrop``)
        self.uncrop_sps = self.decoder_device == "mixed" and not self._ffmpeg
        self._uncropped_worked = False  # set once an uncropped clip decoded (see _retry_cropped)
        self._uncrop_refused = False  # set when a clip failed uncropped and decoded cropped back
        self._hardware_worked = False  # set once any clip decoded on this sampler's DALI decoder
        self._hardware_failures: dict[Path, str] = {}  # video -> its first failure, until one worked
        self._prepare_pool: PreparePool | None = None  # ``config.prepare_processes`` workers, kept across runs
        self._prepare_pool_finalizer: weakref.finalize | None = None
        self._prepare_pool_failed = False  # its workers could not start: not tried again

    def close(self) -> None:
        """Stops the prepare workers, if any (a later ``iter_batches`` starts new ones), and closes the FFmpeg
        client's decoders."""
        with self._idle_lock:
            idle, self._idle_decoders = self._idle_decoders, []
        for decoder in idle:
            decoder.close()
        if self._prepare_pool_finalizer is not None:
            self._prepare_pool_finalizer()
        self._prepare_pool = self._prepare_pool_finalizer = None
        self._prepare_pool_failed = False

    @property
    def device(self) -> torch.device:
        if self.decoder_device == "mixed":
            return torch.device(f"cuda:{self.config.device_id}")
        return torch.device("cpu")

    # --- stage 1: probe, plan, cut into clips (prepare threads) ----------------------------------

    @property
    def _uncropping(self) -> bool:
        """Whether clips are cut uncropped: for DALI only (FFmpeg's decoders crop by themselves and are given
        the packets as the file has them), whatever a benchmark set ``uncrop_sps`` to."""
        return self.uncrop_sps and not self._ffmpeg

    def _limitation(self, info: VideoInfo) -> str | None:
        """Why this sampler's DALI decoder cannot take the video, or ``None``."""
        return dali_cpu_limitation(info)

    def _client_limitation(self, info: VideoInfo) -> str | None:
        """Why this sampler's decode client cannot take the video: DALI's (``_limitation``), or FFmpeg's
        (its codecs, and on NVDEC the hardware's limits too; its CPU stand-in decodes them all)."""
        if not self._ffmpeg:
            return self._limitation(info)
        return ffmpeg_limitation(info.codec) or (nvdec_limitation(info) if self.decoder_device == "mixed" else None)

    def _prepare(self, task: VideoTask, work: "queue.Queue[Any]", stop: threading.Event) -> None:
        clips = 0
        try:
            with task.failures_reported("preparing for GPU decoding"):
                pool = self._prepare_pool
                try:
                    if pool is None or not pool.usable:
                        raise PoolUnavailable()
                    why_not, clips = self._cut_clips_in_worker(pool, task, work, stop)
                except PoolUnavailable:  # no workers (or none left): cut here, as without them
                    with CuttingSource(task.path) as source:
                        try:
                            why_not, clips = self._cut_clips(task, source, work, stop)
                        finally:
                            task.add_bytes(source.bytes_read())
                if why_not is not None:
                    clips = self._decode_on_cpu(task, why_not, stop)
        finally:
            task.prepared(clips)

    def _cut_clips(self, task: VideoTask, source: CuttingSource, work: "queue.Queue[Any]",
                   stop: threading.Event) -> tuple[str | None, int]:
        """Probes and plans the video and queues its clips; returns (why DALI cannot take it, clips queued)."""
        cfg = self.config
        clips = 0
        fh = source.file
        container = source.open()
        try:
            info, index = probe_open(container, task.path)
            why_not = self._accept(task, info)
            if why_not is not None:
                return why_not, 0
            plan = plan_samples(info, index, fps=cfg.fps, mode=cfg.mode)
            task.outcome.mode, task.outcome.frames_expected = plan.mode, plan.expected_frames
            stream_cap = STREAM_MAX_FRAMES if self._streams(info.codec) else None
            container, cut = start_clips(plan, container, fh, stream_cap=stream_cap, clip_pixels=self.clip_pixels,
                                         uncrop=self._uncropping, by_path=source.by_path, mux=not self._ffmpeg)
            while True:
                try:
                    clip = next(cut)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - the CPU decoder may still read what the cutter cannot
                    if not cfg.cpu_fallback:
                        raise
                    summary = str(exc).removeprefix(f"{task.path}: ")
                    task.hardware_failed(clips, f"cutting clips for {self.decoder_name} failed: {summary}")
                    break
                clip.stream_cap = stream_cap
                if not self._queue_clip(task, clips, clip, work, stop):
                    break
                clips += 1
            return None, clips
        finally:
            container.close()

    def _accept(self, task: VideoTask, info: VideoInfo) -> str | None:
        """Records the probe; why this backend cannot take the video (``None``: it can), raised instead
        without CPU fallback."""
        task.outcome.info = info
        why_not = self._client_limitation(info)
        if why_not is None:
            task.outcome.decoder = self.decoder_name
        elif not self.config.cpu_fallback:
            raise UnsupportedCodecError(why_not, path=task.path, hint="sample it with --device cpu")
        return why_not

    def _queue_clip(self, task: VideoTask, seq: int, clip: Clip, work: "queue.Queue[Any]",
                    stop: threading.Event) -> bool:
        """Queues clip ``seq`` of ``task`` for the decode streams once the video has a slot and the byte budget
        room; ``False`` (the clip dropped, the rest not wanted) when the run stopped or the video no longer
        wants it."""
        task.slots.acquire()
        cost = clip_bytes(clip)
        if stop.is_set() or not task.wants(seq) or not self._budget.acquire(cost):
            task.discard()
            return False
        item = _Work(task, seq, clip, cost)
        while True:  # never blocked for good on a full queue no stream takes from (every stream died)
            try:
                work.put(item, timeout=0.5)
                return True
            except queue.Full:
                if stop.is_set() or not task.wants(seq):
                    self._budget.release(cost)
                    task.discard()
                    return False

    def _cut_clips_in_worker(self, pool: PreparePool, task: VideoTask, work: "queue.Queue[Any]",
                             stop: threading.Event) -> tuple[str | None, int]:
        """``_cut_clips``, with the probing and cutting done by a worker process (``_prepare_pool``): this thread
        decides what the backend takes and relays the clips, under the same slots and byte budget."""
        cfg = self.config
        settings = CutSettings(cfg.fps, cfg.mode, self._uncropping, self.clip_pixels, mux=not self._ffmpeg)
        job: Job | None = None
        try:
            with pool.job(task.path, settings, stop) as job:
                return self._relay_clips(job, task, work, stop)
        finally:
            if job is not None:
                task.add_bytes(job.bytes_read)

    def _relay_clips(self, job: Job, task: VideoTask, work: "queue.Queue[Any]",
                     stop: threading.Event) -> tuple[str | None, int]:
        cfg = self.config
        kind, *payload = job.recv()
        if kind == "error":
            raise payload[0]
        info = payload[0]
        why_not = self._accept(task, info)  # raised without fallback: the job's end tells the worker to stop
        if why_not is not None:
            job.send("skip")
            return why_not, 0
        job.send("cut", STREAM_MAX_FRAMES if self._streams(info.codec) else None)
        clips = 0
        while True:
            kind, *payload = job.recv()
            if kind == "end":
                return None, clips
            if kind == "error":
                raise payload[0]
            if kind == "plan":
                task.outcome.mode, task.outcome.frames_expected = payload
            elif kind == "cut_error":
                if not cfg.cpu_fallback:
                    raise payload[1]
                task.hardware_failed(clips, f"cutting clips for {self.decoder_name} failed: {payload[0]}")
            else:
                if not self._queue_clip(task, clips, payload[0], work, stop):
                    return None, clips
                clips += 1

    def _sample_on_cpu(self, task: VideoTask, stop: threading.Event, *, first_seq: int = 0,
                       after_s: float = float("-inf")) -> int:
        """Decodes one video with the ``cpu`` backend's decoder; returns the sequence number after its last chunk.

        Frames move to this sampler's device in chunks, through the same ordered, bounded hand-over as
        decoded clips, so callers see no difference but the outcome's ``decoder``. Taking over from the
        hardware decoder mid-video, chunks continue at ``first_seq`` and frames up to ``after_s`` (already
        handed over) are not emitted: both decoders follow the same plan, so the times line up.
        """
        cpu = CpuSampler(self.config)
        own = VideoOutcome(task.path, None, None)  # the CPU decoder's own counts, merged below
        images: list[np.ndarray] = []
        times: list[float] = []
        seq = first_seq

        def hand_over() -> None:
            nonlocal seq
            task.slots.acquire()
            if task.failed or stop.is_set():
                raise Abandoned
            frames = cpu.stack(images).to(self.device)
            task.deliver(seq, frames, list(times), from_cpu=True)
            seq += 1
            images.clear(), times.clear()

        def emit(item: tuple[np.ndarray, float]) -> None:
            if task.failed or stop.is_set():  # do not decode a whole video nobody will take
                raise Abandoned
            images.append(item[0])
            times.append(item[1])
            if len(images) >= FALLBACK_CHUNK:
                hand_over()

        try:
            cpu.decode_video(task.path, own, emit, after_s=after_s)
            if images:
                hand_over()
        finally:
            task.outcome.mode = own.mode
            if task.outcome.frames_expected is None:  # planned by the CPU decoder alone
                task.outcome.frames_expected = own.frames_expected
            task.add_bytes(own.bytes_read)
        return seq

    def _decode_on_cpu(self, task: VideoTask, why_not: str, stop: threading.Event) -> int:
        """A video the probe says the DALI decoder cannot take, decoded on the CPU from the start."""
        log.info("%s: %s; decoding this video on the CPU", task.path, why_not)
        task.outcome.decoder, task.outcome.fallback_reason = "pyav", why_not
        return self._sample_on_cpu(task, stop)

    def _finish_on_cpu(self, task: VideoTask, takeover: TakeOver, stop: threading.Event) -> None:
        """The hardware decoder failed mid-video: the CPU decoder delivers the frames not yet handed over."""
        first_seq, after_s = takeover.first_seq, takeover.after_s
        where = f"after {after_s:.2f}s" if first_seq else "from the start"
        log.warning("%s: %s; decoding the rest of this video on the CPU", task.path, takeover.failure)
        task.outcome.decoder = f"{self.decoder_name}+pyav" if first_seq else "pyav"
        task.outcome.fallback_reason = f"{takeover.failure}; decoded on the CPU {where}"
        with task.failures_reported("decoding on the CPU", cpu_takeover=True):
            task.prepared(self._sample_on_cpu(task, stop, first_seq=first_seq, after_s=after_s), from_cpu=True)

    # --- stage 2: decode (one thread and one DALI pipeline per stream) ---------------------------

    def _ffmpeg_decode_loop(self, work: "queue.Queue[Any]") -> None:
        """One decode stream on the FFmpeg client (``_ffmpeg_decoder``): clips are fed one at a time into
        decoders that stay open across videos; those held back come out when the queue runs dry (never does
        this thread wait for work while it holds clips: their videos' slots would block their preparers)."""
        cfg = self.config
        if self.decoder_device == "mixed":
            torch.cuda.set_device(cfg.device_id)
        with self._idle_lock:
            decoder = self._idle_decoders.pop() if self._idle_decoders else None
        if decoder is None:
            decoder = self._ffmpeg_decoder()
        budget = self._budget  # this run's (see ``_decode_loop``)
        try:
            while True:
                try:
                    item, waited = work.get_nowait(), 0.0
                except queue.Empty:
                    self._ffmpeg_results(decoder.drain())
                    waiting = time.perf_counter()
                    item = work.get()
                    waited = time.perf_counter() - waiting
                if item is _STOP:
                    self.decode_stats.note_wait(waited)
                    break
                self.decode_stats.note_take(work.qsize() + 1, waited)
                try:
                    if not item.task.wants(item.seq):
                        item.task.discard()
                        continue
                    info = item.task.outcome.info
                    try:
                        results = decoder.feed(item, item.clip, info)
                    except Exception as exc:  # noqa: BLE001 - nothing a clip does may end the loop
                        results = [(item, exc)]
                    self._ffmpeg_results(results)
                finally:
                    budget.release(item.cost)  # its packets are in the decoder (or dropped): not held on
                    item.clip.runs = []
            self._ffmpeg_results(decoder.drain(end=True))  # the stop marker: what is held comes out
        except BaseException:
            decoder.close()  # not trusted after a failure, nor kept for the next run; the run stops (``stream``)
            raise
        with self._idle_lock:
            if len(self._idle_decoders) < cfg.streams:  # for the next run, drained
                self._idle_decoders.append(decoder)

    def _ffmpeg_decoder(self) -> FfmpegDecoder:
        """A decode stream's FFmpeg client (``prep_bench`` puts one in that decodes nothing)."""
        cfg = self.config
        return FfmpegDecoder(self.device, cfg.size, cfg.square, hardware=self.decoder_device == "mixed",
                             stats=self.decode_stats)

    def _ffmpeg_results(self, results: list[tuple[Any, torch.Tensor | Exception]]) -> None:
        """Hands the FFmpeg client's finished clips over (upright, in the tagged matrix already), or records
        their failures."""
        for w, res in results:
            self._hand_over(w, res, displayed=True)

    def _hand_over(self, w: _Work, result: torch.Tensor | Exception, *, displayed: bool = False) -> None:
        """A decoded clip's frames to its video (``displayed``: already upright, in the stream's tagged matrix;
        else ``_displayed`` makes them so), or its failure recorded (``_clip_failed``)."""
        if not isinstance(result, Exception):
            self._hardware_worked = True
            try:
                w.task.deliver(w.seq, result if displayed else _displayed(result, w.task.outcome.info), w.clip.times)
                return
            except Exception as exc:  # noqa: BLE001 - e.g. CUDA out of memory while rotating
                result = exc
        self._clip_failed(w, result)

    def _decode_loop(self, work: "queue.Queue[Any]") -> None:
        """One decode stream: clips in, frames delivered; nothing a clip does may end the loop (the
        consumer would wait for that clip forever)."""
        decoder: AnyClipDecoder | None = None
        carry: list[_Work] = []  # a clip taken for the next run (see _next_work)
        budget = self._budget  # this run's: a thread outliving its run must not give bytes to the next one's
        try:
            while True:
                items, stop_seen = self._next_work(work, carry)
                live = [w for w in items if w.task.wants(w.seq)]
                for w in items:
                    if w not in live:
                        w.task.discard()
                if self._uncrop_refused:
                    self._crop_back(live)
                results: list[torch.Tensor | Exception] = []
                try:
                    if decoder is None and live:
                        decoder = self._clip_decoder()
                    if live and decoder:
                        results = self._decode_samples(decoder, live)
                        results = [self._retry_cropped(decoder, w, res) for w, res in zip(live, results)]
                except Exception as exc:  # noqa: BLE001 - e.g. a CUDA or DALI set-up failure: every clip fails
                    results = [exc] * len(live)
                for w, res in zip(live, results):
                    self._hand_over(w, res)
                for w in items:
                    budget.release(w.cost)
                del items, live, results  # the clips' bytes and frames: not held while the next run waits
                if stop_seen:
                    return
        finally:
            if decoder is not None:
                decoder.close()

    def _decode_samples(self, decoder: AnyClipDecoder, items: list[_Work]) -> list[torch.Tensor | Exception]:
        """Frames (or the error) for each item, decoded ``clips_per_run`` samples per DALI run, short videos'
        clips merged into shared samples. A merged sample that fails is decoded again clip by clip, so
        one damaged video fails alone."""
        groups = group_clips(items, merge=self.merge_clips, max_pixels=self.merge_pixels,
                             stream_frames=self.stream_merge_frames)
        if self.spread_min_frames and len(groups) < self.clips_per_run:  # room in the run: spread the clips
            cap = spread_pixels(items, self.clips_per_run, self.spread_min_frames, self.merge_pixels)
            spread = group_clips(items, merge=self.merge_clips, max_pixels=cap, stream_frames=self.stream_merge_frames)
            if len(spread) <= self.clips_per_run:  # never a DALI run more (mixed set-ups can split further)
                groups = spread
        samples = merged_samples(groups)
        results: list[torch.Tensor | Exception] = []
        for lo in range(0, len(samples), self.clips_per_run):
            chunk = samples[lo:lo + self.clips_per_run]
            for sample, res in zip(chunk, decoder.decode([x.clip for x in chunk])):
                if len(sample.parts) == 1:
                    results.append(res)
                elif isinstance(res, Exception):
                    log.debug("a sample of %d merged clips failed (%s); decoding them one by one",
                              len(sample.parts), error_summary(res))
                    for part in sample.parts:
                        results.extend(decoder.decode([part.clip]))
                else:
                    results.extend(torch.split(res, [len(part.clip) for part in sample.parts]))
        return results

    def _next_work(self, work: "queue.Queue[Any]", carry: list[_Work]) -> tuple[list[_Work], bool]:
        """The clips for one DALI run (waits for the first): at most ``clips_per_run`` samples, short clips
        merged into them; and whether the stop marker came. A clip that would need one sample more is
        kept in ``carry`` for this stream's next run, so a stream never takes work for several runs while
        the others wait idle. A streamed clip is a run of its own (the streaming decoder decodes a run's
        clips one after another, so more would only keep them from idle streams)."""
        waited = 0.0
        if carry:
            items = [carry.pop()]
        else:
            waiting = time.perf_counter()
            first = work.get()
            waited = time.perf_counter() - waiting
            if first is _STOP:
                self.decode_stats.note_wait(waited)
                return [], True
            items = [first]
        self.decode_stats.note_take(work.qsize() + 1, waited)  # the clips this take could choose from
        per_take = 1 if items[0].clip.stream_cap is not None else self.clips_per_run
        group, samples = [items[0]], 1
        while True:
            try:
                more = work.get_nowait()
            except queue.Empty:
                break
            if more is _STOP:
                return items, True
            if self.merge_clips and joins(group, more, self.merge_pixels, self.stream_merge_frames):
                group.append(more)
            elif samples < per_take and more.clip.stream_cap is None:
                group, samples = [more], samples + 1
            else:
                carry.append(more)
                break
            items.append(more)
        return items, False

    def _streams(self, codec: str) -> bool:
        """Whether this run decodes ``codec``'s clips with the streaming decoder (cut up to ``STREAM_MAX_FRAMES``
        wanted frames whatever the resolution) rather than per DALI sample (within the pixel budget).

        On NVDEC only H.264 and HEVC: DALI's streaming operator counts every picture NVDEC puts out as a frame
        of the clip, and VP9's hidden alt-ref frames would be extra pictures, written past the sample DALI
        sized from the packet count (read from DALI's source; nothing checks it on the GPU).
        """
        return self._streaming and (self.decoder_device != "mixed" or codec in STREAMED_ON_NVDEC)

    def _clip_decoder(self) -> AnyClipDecoder:
        cfg = self.config
        if self.decoder_device == "mixed":
            torch.cuda.set_device(cfg.device_id)
        if self._streaming:
            return StreamClipDecoder(self.decoder_device, cfg.device_id, cfg.size, cfg.square,
                                     sequences_per_run=self.clips_per_run, num_threads=self.decode_threads,
                                     stats=self.decode_stats)
        return ClipDecoder(self.decoder_device, cfg.device_id, cfg.size, cfg.square, self.clips_per_run,
                           num_threads=self.decode_threads, stats=self.decode_stats)

    def _retry_cropped(self, decoder: AnyClipDecoder, w: _Work, result: torch.Tensor | Exception
                       ) -> torch.Tensor | Exception:
        """A clip that failed uncropped (``_uncrop``), while none has worked yet, is decoded again as the file
        has it. If that works, the decoder refuses the rewrite itself (a DALI or driver we have not met):
        uncropping is switched off, with one warning, and clips already cut uncropped are cropped back
        before they are decoded (``_crop_back``), all still on the hardware decoder. If it fails too, the
        failure is the clip's own (damaged data, or a decoder that does not work at all), as without the
        rewrite."""
        if not isinstance(result, Exception):
            self._uncropped_worked |= w.clip.roi != (1.0, 1.0)
            return result
        if self._uncropped_worked or not w.clip.can_crop_back:
            return result
        try:
            cropped = w.clip.cropped()
        except Exception as exc:  # noqa: BLE001 - cannot build it: the first failure stands
            log.debug("cannot crop a clip back: %s", exc)
            return result
        (again,) = decoder.decode([cropped])
        if isinstance(again, Exception):
            return result
        if not self._uncrop_refused:
            self._uncrop_refused, self.uncrop_sps = True, False
            log.warning("%s failed on a clip whose SPS cropping was removed (%s) and decoded it as the file has "
                        "it: keeping the cropping from now on (DALI then sets up a hardware decoder per sample)",
                        self.decoder_name, error_summary(result))
        w.clip = cropped
        return again

    @staticmethod
    def _crop_back(items: list[_Work]) -> None:
        """Clips cut uncropped before the decoder was found to refuse that, cropped back before decoding."""
        for w in items:
            if w.clip.can_crop_back:
                try:
                    w.clip = w.clip.cropped()
                except Exception as exc:  # noqa: BLE001 - decoded as cut; a failure then takes its usual path
                    log.debug("cannot crop a clip back: %s", exc)

    def _clip_failed(self, w: _Work, error: Exception) -> None:
        """A clip the hardware decoder failed on: recorded for a CPU take-over, or the video's error."""
        w.task.discard()  # the failed clip's slot
        failure = f"{self.decoder_name} failed at {w.clip.times[0]:.2f}s: {error_summary(error)}"
        if not self._hardware_worked:
            self._hardware_failures.setdefault(w.task.path, failure)
        if self.config.cpu_fallback:
            w.task.hardware_failed(w.seq, failure)  # the consumer hands over to the CPU there
        else:
            w.task.fail(DecodeError(f"GPU decoding failed ({failure})", path=w.task.path,
                                    hint="the video data may be damaged; try --device cpu"))

    # --- stage 3: batches in input order (the caller's thread) -----------------------------------

    def _size_samples(self) -> None:
        """Sets ``clip_pixels`` and ``merge_pixels`` for this run (the gpu backend: from the card's memory)."""

    def iter_batches(self, videos: Iterable[VideoSource]) -> Iterator[FrameBatch]:
        cfg = self.config
        self._size_samples()  # here, not in __init__: layouts set clips_per_run after construction
        streams = cfg.streams
        queued = streams * self.clips_per_run * (QUEUED_PER_STREAM if self.merge_clips else 2)
        self._streaming = cfg.stream_decode and not self._ffmpeg
        self._budget = budget = ByteBudget(self.queued_bytes_limit or queued_bytes_for(cfg.memory_share))
        if cfg.prepare_processes and self._prepare_pool is None and not self._prepare_pool_failed:
            try:
                self._prepare_pool = PreparePool(cfg.prepare_processes)
                self._prepare_pool_finalizer = weakref.finalize(self, self._prepare_pool.close)
            except Exception as exc:  # noqa: BLE001 - also OSError (EAGAIN...): the videos are cut in threads
                self._prepare_pool_failed = True
                log.warning("%s; clips are cut in this process instead", exc)
        work: queue.Queue[Any] = queue.Queue(maxsize=queued)
        stop = threading.Event()
        lookahead = max(2, queued)  # videos in flight: enough to fill the queue with mergeable clips
        # with worker processes, one prepare thread per worker: a thread holds its worker while it waits for its
        # video's slots, so a later video holding the last worker would starve the one the consumer waits for
        pool = self._prepare_pool
        preparing = cfg.prepare_processes if pool is not None and pool.usable else max(4, streams)
        preparers = ThreadPoolExecutor(max_workers=min(lookahead, preparing), thread_name_prefix="gpu-prepare")
        loop = self._ffmpeg_decode_loop if self._ffmpeg else self._decode_loop
        sources = iter(videos)
        tasks: deque[VideoTask] = deque()
        takeovers: list[threading.Thread] = []
        crashes: list[BaseException] = []  # what ended a decode stream: the run stops (``_stream``)

        def stream() -> None:
            """A decode stream. Its loop guards every clip, so an exception out of it is a bug; the clips the
            stream held would never come, and the consumer would wait for them all night: instead every video
            in flight fails and the run stops with the error."""
            try:
                loop(work)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the consumer
                what = f"{type(exc).__name__}: {error_summary(exc)}"
                log.error("%s stopped: %s", threading.current_thread().name, what, exc_info=exc)
                crashes.append(exc)  # before the videos fail: the consumer checks it when one wakes it
                error = QuadvaultError(f"sampling stopped: a decode stream failed ({what})")
                for task in tasks.copy():  # one C call: the consumer cannot change it meanwhile
                    task.fail(error)

        decoders = [threading.Thread(target=stream, name=f"gpu-decode-{i}", daemon=True) for i in range(streams)]
        for thread in decoders:
            thread.start()

        def refill() -> None:
            while len(tasks) < lookahead and not stop.is_set():
                source = next(sources, None)
                if source is None:
                    return
                task = VideoTask(source)
                tasks.append(task)
                preparers.submit(self._prepare, task, work, stop)

        pending: list[torch.Tensor] = []
        paths: list[Path] = []
        times: list[float] = []
        done: list[VideoOutcome] = []

        def flush(count: int) -> FrameBatch:
            frames = torch.cat(pending) if pending else self._empty()
            batch = FrameBatch(frames[:count], paths[:count], times[:count], list(done))
            rest = frames[count:]
            pending[:] = [rest] if len(rest) else []
            del paths[:count], times[:count]
            done.clear()
            return batch

        try:
            refill()
            while tasks:
                if crashes:
                    crash = crashes[0]
                    raise BackendUnavailableError(
                        f"a decode stream stopped: {type(crash).__name__}: {error_summary(crash)}",
                        hint="a bug in quadvault: please report it with the log of a run with -v; finished videos "
                             "are kept, and the same command resumes (or scan with --device cpu)") from crash
                task = tasks[0]
                item = task.take()
                if isinstance(item, TakeOver):
                    self._check_hardware_works()
                    takeovers.append(threading.Thread(target=self._finish_on_cpu, args=(task, item, stop),
                                                      name=f"cpu-takeover:{task.path.name}", daemon=True))
                    takeovers[-1].start()
                    continue
                if item is None:
                    if crashes:
                        continue  # failed by the crash, not finished: raised at the top, never reported as done
                    tasks.popleft()
                    if task.outcome.error is None and task.outcome.frames == 0:
                        task.outcome.error = DecodeError("no frames decoded", path=task.path)
                    done.append(task.outcome)
                    refill()
                    continue
                frames, stamps = item
                if paths and not cfg.square and paths[-1] != task.path:
                    yield flush(len(paths))  # without square crops a batch holds one video's shapes
                pending.append(frames)
                paths.extend([task.path] * len(stamps))
                times.extend(round(t, 6) for t in stamps)
                task.outcome.frames += len(stamps)
                while len(paths) >= cfg.batch_size:
                    yield flush(cfg.batch_size)
            if paths or done:
                yield flush(len(paths))
        finally:
            stop.set()
            budget.close()  # wakes a preparer waiting for room
            for task in tasks:
                task.fail(QuadvaultError("sampling stopped before this video finished", path=task.path))
            preparers.shutdown(wait=True, cancel_futures=True)
            while True:  # drop queued work so the stop markers fit
                try:
                    work.get_nowait()
                except queue.Empty:
                    break
            for _ in decoders:
                work.put(_STOP)
            for thread in decoders + takeovers:
                thread.join(timeout=30)
            self.queued_bytes_peak = max(self.queued_bytes_peak, budget.peak)

    def _check_hardware_works(self) -> None:
        """Stops the run when the hardware decoder failed on every one of the first videos: a broken
        driver or DALI install must not quietly turn a GPU scan into a CPU scan 50 times slower."""
        failures = dict(self._hardware_failures)
        if self._hardware_worked or len(failures) < FAILURES_BEFORE_GIVING_UP:
            return
        raise BackendUnavailableError(
            f"the {self.decoder_name} decoder failed on the first {len(failures)} videos and decoded none "
            f"(last: {list(failures.values())[-1]})",
            hint="check the NVIDIA driver and the DALI install; or scan on the CPU with --device cpu")

    def _empty(self) -> torch.Tensor:
        size = self.config.size
        return torch.empty((0, 3, size, size), dtype=torch.uint8, device=self.device)


def _displayed(frames: torch.Tensor, info: VideoInfo | None) -> torch.Tensor:
    """``(F, 3, H, W)`` frames as the CPU decoder gives them: in the stream's tagged colour matrix (DALI
    converts as BT.601, see ``_colour``), HDR tone-mapped to SDR, and turned by the display rotation
    (clockwise degrees)."""
    if info is None:
        return frames
    frames = to_sdr(convert_from_bt601(frames, info.color_matrix), info.color_transfer)
    rotation = info.rotation
    return torch.rot90(frames, k=-(rotation // 90), dims=(2, 3)).contiguous() if rotation else frames


@register_backend("gpu")
class GpuSampler(DaliSampler):
    """DALI + NVDEC sampling; refuses to start without CUDA and DALI (never falls back to the CPU)."""

    decoder_device: ClassVar[str] = "mixed"
    decoder_name: ClassVar[str] = "nvdec"

    def _limitation(self, info: VideoInfo) -> str | None:
        return nvdec_limitation(info)

    def __init__(self, config: SamplerConfig | None = None, **overrides: object) -> None:
        resolve_device("gpu")  # raises BackendUnavailableError naming what is missing
        usable, reason = nvdec_status()
        if not usable:
            raise BackendUnavailableError(reason, hint="use --device cpu to decode on the CPU")
        super().__init__(config, **overrides)
        if self.config.device_id >= torch.cuda.device_count():
            raise BackendUnavailableError(f"CUDA device {self.config.device_id} does not exist "
                                          f"({torch.cuda.device_count()} visible)")
        if self.config.streams > TESTED_STREAMS:
            log.warning("%d decode streams per process: more than %d sampled no faster on an H100, and DALI "
                        "crashed the process after 16-stream runs there (CUDA_ERROR_ILLEGAL_ADDRESS); 4 is the "
                        "default", self.config.streams, TESTED_STREAMS)
        self._size_samples()

    def _size_samples(self) -> None:
        total = torch.cuda.get_device_properties(self.config.device_id).total_memory
        in_flight = self.budget_samples or self.config.streams * self.clips_per_run
        pixels = sample_pixels_for(int(total * self.config.memory_share), in_flight)
        self.clip_pixels = self.merge_pixels = pixels
