"""A ``ClipDecoder`` twin on ``fn.experimental.inputs.video``: one decoder set-up per clip, not per DALI sample.

``fn.decoders.video`` pays a fixed set-up for every sample (~10 ms on an H200, serialised within a process)
and returns a sample's frames all at once, so merged samples are bounded by GPU memory. The streaming
operator decodes a fed clip in sequences, with memory for one run's sequences, so merged keyframe clips
can be far longer (``_gpu.STREAM_MAX_FRAMES``) and the set-up is paid once per long clip. It decodes every
frame of a clip and returns them in order; the wanted ones (``Clip.frames``) are kept as each run comes.
Experimental (``SamplerConfig.stream_decode``): the benchmarks' ``s`` layouts measure it against the default.
Clips cut for per-sample decoding (``Clip.stream_cap`` is ``None``: VP9 and the like on NVDEC, see
``_gpu.DaliSampler._streams``) go to a ``ClipDecoder`` beside it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from ..errors import DecodeError
from ._clip_decoder import ClipDecoder, CopyFence, DecodeStats
from ._remux import Clip

log = logging.getLogger(__name__)

#: frames per DALI sample (one sequence); a run holds ``sequences_per_run`` of them
STREAM_SEQUENCE = 16
#: pipelines kept per stream, one per picture region (uncropped clips of different codings differ); each
#: holds a run's full-size output (4 x 16 frames of 2160p: ~1.6 GB) and its decoder, never counted by
#: ``sample_pixels_for``
PIPELINES_KEPT = 2


def _roi_key(roi: tuple[float, float]) -> tuple[float, float]:
    return round(float(roi[0]), 6), round(float(roi[1]), 6)


def run_layouts(frames: int, sequence: int, per_run: int) -> list[list[int]]:
    """The sequence lengths each run of the streaming graph returns for a clip of ``frames`` frames: full
    runs of ``per_run`` sequences, then the rest (a run ends where a fed clip ends)."""
    lengths = [sequence] * (frames // sequence) + ([frames % sequence] if frames % sequence else [])
    return [lengths[i:i + per_run] for i in range(0, len(lengths), per_run)]


class StreamClipDecoder:
    """Clips in, one ``(F, 3, H, W)`` uint8 tensor of each clip's wanted frames out; same interface as
    ``ClipDecoder`` (``decode``, ``close``, ``stats``)."""

    def __init__(self, decoder_device: str, device_id: int | None, size: int, square: bool,
                 sequences_per_run: int = 4, num_threads: int = 2, stats: DecodeStats | None = None) -> None:
        self.decoder_device = decoder_device
        self.device_id = device_id if decoder_device == "mixed" else None
        self.size, self.square = size, square
        self.sequences_per_run = sequences_per_run
        self.num_threads = num_threads
        self.stats = stats if stats is not None else DecodeStats()
        self._pipes: OrderedDict[tuple[float, float], Any] = OrderedDict()
        self._copies = CopyFence()  # the copies out of the last run's buffers
        self._per_sample: ClipDecoder | None = None  # for clips cut without a ``stream_cap``

    def close(self) -> None:
        try:
            self._copies.wait()
        except Exception as exc:  # noqa: BLE001 - a CUDA error here has already failed those clips
            log.debug("closing the streaming decoder: %s", exc)
        self._pipes.clear()
        if self._per_sample is not None:
            self._per_sample.close()

    def _pipeline(self, roi: tuple[float, float]) -> Any:
        key = _roi_key(roi)
        pipe = self._pipes.pop(key, None)
        if pipe is None:
            from ..pipelines import video_stream_pipeline

            pipe = video_stream_pipeline(decoder_device=self.decoder_device, size=self.size, square=self.square,
                                         sequence_length=STREAM_SEQUENCE, roi=key,
                                         batch_size=self.sequences_per_run, num_threads=self.num_threads,
                                         device_id=self.device_id)
            pipe.build()
            while len(self._pipes) >= PIPELINES_KEPT:
                self._pipes.popitem(last=False)
        self._pipes[key] = pipe
        return pipe

    def _decode_one(self, clip: Clip) -> torch.Tensor:
        from ..pipelines import STREAM_INPUT

        total = clip.packets  # one frame per packet, in presentation order
        wanted = np.asarray(clip.frames, dtype=np.int64)
        if total < 1 or len(wanted) == 0 or wanted.min() < 0 or wanted.max() >= total:
            raise DecodeError(f"clip of {total} frames cannot give frames {wanted.tolist()[:8]}")
        pipe = self._pipeline(clip.roi)
        pipe.feed_input(STREAM_INPUT, [np.frombuffer(clip.data, dtype=np.uint8)])
        kept: list[torch.Tensor] = []
        positions: list[np.ndarray] = []  # where in ``wanted`` each kept frame goes
        got = runs = 0
        for layout in run_layouts(total, STREAM_SEQUENCE, self.sequences_per_run):
            self._copies.wait()  # DALI reuses its buffers on the next run; PyTorch's copies must be done
            (out,) = pipe.run()
            runs += 1
            lengths = [int(out[i].shape()[0]) for i in range(len(out))]
            if lengths != layout:  # the operator counts the clip's frames otherwise: its state is unknown
                raise DecodeError(f"the streaming decoder returned sequences of {lengths} frames where a clip of "
                                  f"{total} packets gives {layout} (run {runs})")
            copying_on: torch.device | None = None
            for i, n in enumerate(lengths):
                here = np.nonzero((wanted >= got) & (wanted < got + n))[0]
                if len(here):  # only the wanted frames leave DALI's buffer (indexing copies them)
                    sequence = torch.from_dlpack(out[i])
                    copying_on = sequence.device if sequence.is_cuda else None
                    kept.append(sequence[torch.as_tensor(wanted[here] - got, device=sequence.device)])
                    positions.append(here)
                got += n
            self._copies.mark(copying_on, keep=out)
        if total % (STREAM_SEQUENCE * self.sequences_per_run) == 0:
            # a last run that came full cannot show frames the operator still holds past the clip's packets:
            # a fresh pipeline for the next clip rather than its first frames from this one
            self._copies.wait()  # the copies out of its buffers first
            self._pipes.pop(_roi_key(clip.roi), None)
        order = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
        if len(order) != len(wanted):
            raise DecodeError(f"decoder returned {len(order)} wanted frames, {len(wanted)} were asked for")
        frames = torch.cat(kept) if len(kept) > 1 else kept[0]
        if np.any(np.diff(order) < 0):  # wanted frames out of presentation order: put them back in theirs
            frames = frames[torch.as_tensor(np.argsort(order, kind="stable"), device=frames.device)]
        self.stats.add(1, len(wanted), runs=runs)
        return frames

    def decode(self, clips: list[Clip]) -> list[torch.Tensor | Exception]:
        """Decodes ``clips`` one after another; a clip that fails yields its exception (and the pipeline of its
        picture region, whose state is then unknown, is dropped), the others their frames."""
        results: list[torch.Tensor | Exception] = []
        per_sample = [clip for clip in clips if clip.stream_cap is None]
        if per_sample:
            if self._per_sample is None:
                self._per_sample = ClipDecoder(self.decoder_device, self.device_id, self.size, self.square,
                                               self.sequences_per_run, num_threads=self.num_threads, stats=self.stats)
            decoded = iter(self._per_sample.decode(per_sample))
        for clip in clips:
            if clip.stream_cap is None:
                results.append(next(decoded))
                continue
            try:
                results.append(self._decode_one(clip))
            except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError for any bad input
                try:
                    self._copies.wait()
                except Exception:  # noqa: BLE001
                    self._copies.forget()
                self._pipes.pop(_roi_key(clip.roi), None)  # its state is unknown; other regions' are fine
                results.append(exc)
        return results
