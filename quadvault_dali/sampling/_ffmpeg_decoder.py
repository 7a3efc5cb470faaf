"""FFmpeg's NVDEC decoders through PyAV as the gpu backend's decode client: packets in, frames out, no DALI.

Why (``benchmarks/nvdec_ceiling.py`` on an H100, 2026-11-26): fed 1080p H.264 keyframes back to back, 8
threads each with one ``h264_cuvid`` decoder decoded 3,474 frames/s at full size and 3,851 through NVDEC's own
scaler, NVDEC 78-87 % busy, on 2-3 host cores (decoding only: no conversion, no PyTorch). DALI's decoder, in
every layout tried, stopped near 2,100 with NVDEC 40-55 % busy: it decodes a sample's frames one after another
and sets a decoder up per sample. A cuvid
decoder opened per video managed only 17-29 frames/s (each open makes a CUDA context), so here one decoder
per stream *and stream set-up* (codec, configuration record, coded size) stays open and is fed the clips of
every video that shares it, with no set-up between them.

How a stream uses it (``DaliSampler._ffmpeg_decode_loop``): ``feed`` one clip at a time (its packets, straight
from the cutter: no MP4 is muxed, ``_remux.packets_clip``), and get back the clips whose wanted frames have all
come out. The decoder holds a few pictures back (NVDEC's display queue), so a clip may complete during a later
``feed``; ``drain`` takes out everything (end of stream, then a reset; a cuvid decoder re-creates its NVDEC
decoder there, never its CUDA context), and the stream calls it whenever its queue runs dry, before it switches
set-ups, and at the end. Every packet carries a token as its timestamp (rising in presentation order), so each picture that
comes out is matched to the clip and the source time it belongs to, whatever the order or delay.

Frames (``NVDEC_PATH``): with ``hwaccel`` (the default) FFmpeg's own decoders use NVDEC in PyTorch's CUDA
context and leave each picture on the GPU, where its planes are read through DLPack; with ``cuvid`` NVDEC's
scaler shrinks it to ``OVERSAMPLE`` times the output size and it is downloaded, then uploaded. Either way
PyTorch resizes the Y and CbCr planes to the output size with antialiasing (as DALI's resize and swscale's area
filter do) and converts them with the stream's tagged colour matrix and range.

Without a GPU the same class runs FFmpeg's CPU decoders, with swscale standing in for NVDEC's scaler
(``hardware=False``): the tests run this whole path on H.264 and HEVC files on the CPU.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import av
from av.codec.context import Flags
from av.video.reformatter import Interpolation
import numpy as np
import torch
import torch.nn.functional as F

from .._geometry import centre_offset
from ..errors import DecodeError, detached
from ..probe import VideoInfo
from ._clip_decoder import DecodeStats
from ._colour import MATRIX_WEIGHTS, to_sdr, ycbcr_to_rgb
from ._cpu import output_size
from ._remux import Clip, Signature

log = logging.getLogger(__name__)

#: FFmpeg's NVDEC decoder by codec (those the project cuts clips of and NVDEC decodes on an H100)
CUVID_DECODERS = {"h264": "h264_cuvid", "hevc": "hevc_cuvid"}
#: NVDEC's scaler shrinks to this many times the output size, PyTorch's antialiased resize the rest: a
#: 9x shrink by NVDEC's scaler alone would alias, and 2x keeps a 1080p download at ~0.5 MB per picture.
OVERSAMPLE = 2
#: decoder set-ups one stream keeps open (each cuvid decoder holds a CUDA context of its own)
KEPT_DECODERS = 4
#: Packets a decoder may take after a clip's last one before the clip's pictures must be out: more than any
#: H.264/HEVC decoder holds back (16 reference pictures, NVDEC's display queue of 4, reordering). A clip still
#: waiting then lost a picture the decoder dropped without an error (damaged data): the decoder is drained, the
#: clip fails to the CPU decoder, and its video does not wait for the stream's queue to run dry.
HELD_PACKETS = 48
#: Experimental: FFmpeg's low-delay flag, which sets NVDEC's parser display delay to 0 (a picture comes out
#: as soon as it is decoded, so fewer clips wait for the next feed or a drain). Not yet timed on a GPU.
LOW_DELAY = False
#: How the client reaches NVDEC. ``cuvid``: FFmpeg's ``h264_cuvid``/``hevc_cuvid`` decoders, pictures shrunk by NVDEC's
#: scaler and downloaded; each decoder makes a CUDA context of its own, and on an H100 (2026-11-26) the client
#: sampled 911-1,227 1080p frames/s against DALI's 1,635 in the same call (py-spy: half the decode threads' time
#: in the decode, the rest in the download and the upload). ``hwaccel``: FFmpeg's own H.264/HEVC decoders with
#: their NVDEC hardware acceleration in PyTorch's (primary) CUDA context, pictures left on the GPU and read
#: through DLPack (PyAV 19 ``HWAccel(is_hw_owned=True)``): no download, no second context. On the H100 (stop 21)
#: 1,553 frames/s with 8 streams and 1,950 with prepare workers, against 922 for ``cuvid`` in the same call.
NVDEC_PATH = "hwaccel"
#: Pictures converted in one batch: a clip's, as this many come out (and the rest when it completes); full-size
#: float planes of 8 2160p pictures take ~400 MB while they are converted, and no more of FFmpeg's buffers wait
CONVERT_CHUNK = 8
#: swscale flags of the CPU stand-in for NVDEC's scaler
_SCALER = int(Interpolation.AREA) | int(Interpolation.ACCURATE_RND)


def ffmpeg_limitation(codec: str) -> str | None:
    """Why the FFmpeg decode client cannot take ``codec`` (``None``: it can)."""
    if codec not in CUVID_DECODERS:
        return f"the FFmpeg NVDEC client decodes {' and '.join(sorted(CUVID_DECODERS))} only, not {codec}"
    return None


def output_sizes(info: VideoInfo, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((width, height) NVDEC scales to, (width, height) after the resize), both in the coded orientation
    (rotation comes after): the short side ``size`` as the cpu backend's ``output_size`` rounds it."""
    turned = info.rotation in (90, 270)
    width, height = (info.height, info.width) if turned else (info.width, info.height)
    shown = output_size(info, size)
    final = shown[::-1] if turned else shown
    scaled = tuple(min(side, ((OVERSAMPLE * f + 1) // 2) * 2) for side, f in zip((width, height), final))
    return (max(2, scaled[0]), max(2, scaled[1])), final


@dataclass
class _Pending:
    """A clip fed to a decoder whose wanted frames are not all out yet."""

    key: Any  # the caller's handle for it
    clip: Clip
    info: VideoInfo
    wanted: set[float]
    #: wanted source time -> its (Y, interleaved CbCr) planes on the client's device (uint8, or uint16 for
    #: P010), and whether they are full range, until converted; NVDEC's (hwaccel) are views of FFmpeg's buffers
    frames: dict[float, tuple[torch.Tensor, torch.Tensor, bool]] = field(default_factory=dict)
    #: wanted source time -> its picture, ``(3, h, w)`` uint8 RGB, upright and cropped (converted in batches)
    pictures: dict[float, torch.Tensor] = field(default_factory=dict)
    fed: bool = False  # all its packets are in
    fed_at: int = 0  # the decoder's packet count when its last packet went in
    error: Exception | None = None  # converting one of its pictures failed (e.g. CUDA out of memory)

    @property
    def got(self) -> int:
        """Wanted pictures out of the decoder so far."""
        return len(self.frames) + len(self.pictures)

    @property
    def done(self) -> bool:
        return self.fed and (self.error is not None or self.got == len(self.wanted))

    def release(self) -> None:
        """Lets go of its planes and pictures (NVDEC's give FFmpeg's buffers back)."""
        self.frames.clear()
        self.pictures.clear()


#: cuDevicePrimaryCtxSetFlags' scheduling flag FFmpeg requires of a primary context it shares
_CU_CTX_SCHED_BLOCKING_SYNC = 4
_shared_devices: set[int] = set()
_shared_lock = threading.Lock()


def share_primary_context(device_id: int) -> None:
    """Lets FFmpeg's NVDEC hwaccel use the device's primary CUDA context, which PyTorch and DALI use too.

    FFmpeg shares a primary context only if it is scheduled with blocking sync; one PyTorch already started has
    the default flags, and FFmpeg then refuses it ("Primary context already active with incompatible flags",
    found by a review helper in FFmpeg's ``hwcontext_cuda.c``). The driver lets the scheduling flags change
    while the context runs (CUDA 11 and later), so they are set here, once per device, through libcuda; PyTorch's
    waits then sleep instead of spinning. Without a GPU it raises ``OSError``."""
    with _shared_lock:
        if device_id in _shared_devices:
            return
        cuda = ctypes.CDLL("libcuda.so.1")

        def check(result: int, call: str) -> None:
            if result != 0:
                raise RuntimeError(f"{call} failed with CUDA error {result}")

        check(cuda.cuInit(0), "cuInit")
        device = ctypes.c_int()
        check(cuda.cuDeviceGet(ctypes.byref(device), device_id), "cuDeviceGet")
        flags, active = ctypes.c_uint(), ctypes.c_int()
        check(cuda.cuDevicePrimaryCtxGetState(device, ctypes.byref(flags), ctypes.byref(active)),
              "cuDevicePrimaryCtxGetState")
        if flags.value != _CU_CTX_SCHED_BLOCKING_SYNC:
            set_flags = getattr(cuda, "cuDevicePrimaryCtxSetFlags_v2", None) or cuda.cuDevicePrimaryCtxSetFlags
            check(set_flags(device, ctypes.c_uint(_CU_CTX_SCHED_BLOCKING_SYNC)), "cuDevicePrimaryCtxSetFlags")
            log.info("CUDA device %d: primary context scheduling set to blocking sync (was %#x, %s) for FFmpeg's "
                     "NVDEC decoders", device_id, flags.value, "active" if active.value else "inactive")
        _shared_devices.add(device_id)


def open_hwaccel_context(codec: str, device_id: int, shared: bool = True) -> Any:
    """FFmpeg's own ``codec`` decoder with NVDEC as its hwaccel, pictures left on the GPU (``is_hw_owned``).
    ``shared``: in the device's primary CUDA context, PyTorch's (``share_primary_context``); else in a context
    FFmpeg creates for it (``nvdec_ceiling``'s ``hwaccel-own`` rows). A decoder PyAV would quietly run on the
    CPU (no CUDA config for it) is refused."""
    from av.codec.hwaccel import HWAccel

    if shared:
        share_primary_context(device_id)
    accel = HWAccel(device_type="cuda", device=str(device_id), allow_software_fallback=False,
                    options={"primary_ctx": "1"} if shared else {}, is_hw_owned=True)
    ctx = av.CodecContext.create(codec, "r", hwaccel=accel)
    if not getattr(ctx, "is_hwaccel", False):
        raise DecodeError(f"FFmpeg's {codec} decoder has no NVDEC hardware acceleration here")
    ctx.thread_count = 1  # NVDEC decodes; frame threads would only add pictures held back
    return ctx


class _Decoder:
    """One FFmpeg decoder set-up and the clips it holds."""

    def __init__(self, key: tuple, signature: Signature, scaled: tuple[int, int], hardware: bool,
                 device_id: int) -> None:
        self.key = key
        codec, extradata, coded_w, coded_h, _ = signature
        if hardware and NVDEC_PATH == "hwaccel":
            self.ctx = open_hwaccel_context(codec, device_id)
        else:
            self.ctx = av.CodecContext.create(CUVID_DECODERS[codec] if hardware else codec, "r")
        self.ctx.extradata = extradata or None
        self.ctx.width, self.ctx.height = coded_w, coded_h
        if hardware and NVDEC_PATH == "cuvid":
            self.ctx.options = {"resize": f"{scaled[0]}x{scaled[1]}", "gpu": str(device_id)}
            if LOW_DELAY:
                self.ctx.flags |= int(Flags.low_delay)
        self.scaled = scaled
        self.owners: dict[int, tuple[_Pending, float]] = {}  # token -> (clip, source time of its picture)
        self.pending: list[_Pending] = []
        self.packets = 0  # fed so far
        self.drained_at = 0  # ``packets`` at the last drain: the decoder holds nothing if they are equal
        # FFmpeg's HEVC decoder refuses a picture whose order count one it holds has (``_holds_back_keyframes``);
        # ``hevc_cuvid`` parses with NVIDIA's parser instead, and a flush there rebuilds its NVDEC decoder
        self.duplicate_counts_dropped = codec == "hevc" and not (hardware and NVDEC_PATH == "cuvid")


class FfmpegDecoder:
    """One decode stream's FFmpeg decoders (``KEPT_DECODERS`` set-ups at most): clips in, frames out."""

    def __init__(self, device: torch.device, size: int, square: bool, hardware: bool,
                 stats: DecodeStats | None = None) -> None:
        self.device, self.size, self.square, self.hardware = device, size, square, hardware
        self.stats = stats if stats is not None else DecodeStats()
        self._decoders: OrderedDict[tuple, _Decoder] = OrderedDict()
        self._current: tuple | None = None
        self._token = 0
        self._unopenable: dict[tuple, str] = {}  # set-ups a decoder could not be opened for, and why
        self.frames_on_device = 0  # pictures NVDEC left on the GPU (hwaccel): proof the hardware decoded

    def close(self) -> None:
        """Lets the decoders go (PyAV frees a codec context with its last reference; it has no ``close``)."""
        self._decoders.clear()
        self._current = None

    @property
    def holding(self) -> int:
        """Clips fed whose frames are not all out yet."""
        return sum(len(d.pending) for d in self._decoders.values())

    def feed(self, key: Any, clip: Clip, info: VideoInfo) -> list[tuple[Any, torch.Tensor | Exception]]:
        """Feeds ``clip`` (``key`` names it in the results); returns the clips completed meanwhile, this one
        or earlier ones. A clip of another set-up than the last drains the last one's first."""
        if clip.signature is None or not clip.runs:
            return [(key, DecodeError("the clip kept no packets to feed the FFmpeg decoder"))]
        scaled, _ = output_sizes(info, self.size)
        dkey = (clip.signature, scaled)
        done: list[tuple[Any, torch.Tensor | Exception]] = []
        if self._current is not None and self._current in self._decoders and \
                (self._current != dkey or _holds_back_keyframes(self._decoders[self._current])):
            done += self._drain(self._decoders[self._current])
        self._current = dkey
        try:
            dec = self._decoder(dkey, clip.signature, scaled)
        except Exception as exc:  # noqa: BLE001 - e.g. no NVDEC for this set-up: the clip's failure
            return done + [(key, exc)]
        item = _Pending(key, clip, info, set(clip.times))
        dec.pending.append(item)
        packets = [packet for run in clip.runs for packet in run.packets]
        # tokens rise in presentation order, so they name the right pictures whether the decoder hands each
        # picture its own packet's timestamp or hands the timestamps out in sorted order
        order = sorted(range(len(packets)), key=lambda i: packets[i].pts_s)
        tokens = [0] * len(packets)
        for rank, i in enumerate(order):
            tokens[i] = self._token + 1 + rank
        self._token += len(packets)
        token_of_next = iter(tokens)  # the packets' tokens in feed order
        try:
            for i, run in enumerate(clip.runs):
                if i and _holds_back_keyframes(dec):
                    self._give_up_held(dec)  # two of this clip's keyframes may share an order count too
                for packet in run.packets:
                    token = next(token_of_next)
                    dec.owners[token] = (item, packet.pts_s)
                    pkt = av.Packet(packet.data)
                    pkt.pts = token
                    pkt.is_keyframe = packet.is_key
                    dec.packets += 1
                    self._take(dec, dec.ctx.decode(pkt))
        except Exception as exc:  # noqa: BLE001 - FFmpeg refused a packet: this set-up is reset
            log.debug("FFmpeg decoder failed on a clip at %.2fs: %s", clip.times[0], exc)
            return done + self._reset(dec, item, exc)
        item.fed, item.fed_at = True, dec.packets
        done += self._completed(dec)
        if any(dec.packets - p.fed_at > HELD_PACKETS for p in dec.pending if p.fed):
            done += self._drain(dec)  # a picture went missing: what the decoder holds comes out, the rest fails
        return done

    def drain(self, end: bool = False) -> list[tuple[Any, torch.Tensor | Exception]]:
        """Every clip still held, complete or failed: the decoders give up the pictures they hold back. At the
        ``end`` of a run, set-ups no decoder could be opened for are forgotten (the failure may have been
        passing); not at the drains in between, which come whenever the queue runs dry."""
        if end:
            self._unopenable.clear()
        done: list[tuple[Any, torch.Tensor | Exception]] = []
        for dec in list(self._decoders.values()):
            if dec.pending:
                done += self._drain(dec)
        return done

    # --- inside ------------------------------------------------------------------------------------

    def _decoder(self, dkey: tuple, signature: Signature, scaled: tuple[int, int]) -> _Decoder:
        dec = self._decoders.get(dkey)
        if dec is None:
            if dkey in self._unopenable:  # not tried again for every clip (a fresh error: a raised one would
                raise DecodeError(self._unopenable[dkey])  # keep growing its traceback, and every frame's locals)
            try:
                dec = _Decoder(dkey, signature, scaled, self.hardware, self.device.index or 0)
            except Exception as exc:
                self._unopenable[dkey] = f"no FFmpeg decoder opens for this set-up: {type(exc).__name__}: {exc}"
                raise
            self.stats.note_decoder_open()
            self._decoders[dkey] = dec
            while len(self._decoders) > KEPT_DECODERS:
                self._decoders.popitem(last=False)  # drained when it stopped being current
        self._decoders.move_to_end(dkey)
        return dec

    def _take(self, dec: _Decoder, frames: list[Any]) -> None:
        """Keeps the wanted pictures among ``frames`` as planes on the client's device, converted in batches
        (``_convert``) as ``CONVERT_CHUNK`` add up and the rest when the clip completes (``_finish``)."""
        for frame in frames:
            owner = dec.owners.pop(frame.pts, None) if frame.pts is not None else None
            if owner is None:
                continue
            item, t = owner
            if t not in item.wanted or t in item.frames or t in item.pictures or item.error is not None:
                continue
            full_range = int(getattr(frame, "color_range", 0) or 0) == 2  # AVCOL_RANGE_JPEG
            try:
                if frame.format.name == "cuda":  # NVDEC's picture, left on the GPU (``NVDEC_PATH`` hwaccel)
                    # PyAV exports it only with stream=None; FFmpeg copied it out of NVDEC's surface on the
                    # default stream, which is PyTorch's too, so what ``_finish`` queues runs after that copy; the
                    # view holds FFmpeg's buffer until then
                    planes = [torch.from_dlpack(plane.__dlpack__(stream=None)) for plane in frame.planes[:2]]
                    self.frames_on_device += 1
                    self.stats.note_on_device()
                else:
                    if frame.width != dec.scaled[0] or frame.height != dec.scaled[1] or \
                            frame.format.name not in ("nv12", "p010le"):
                        full_range = full_range or frame.format.name.startswith("yuvj")  # swscale keeps the range
                        frame = frame.reformat(width=dec.scaled[0], height=dec.scaled[1], format="nv12",
                                               interpolation=_SCALER)
                    planes = [torch.from_dlpack(plane.__dlpack__(stream=None)).to(self.device)
                              for plane in frame.planes[:2]]
                item.frames[t] = (planes[0], planes[1], full_range)
                if len(item.frames) >= CONVERT_CHUNK:  # converted as they add up: FFmpeg's buffers go back
                    self._convert(item)
            except Exception as exc:  # noqa: BLE001 - this clip fails; the decoder and the others go on
                item.error = detached(exc)  # not its frames: NVDEC surfaces, CUDA planes
                item.release()

    def _convert(self, item: _Pending) -> None:
        """The clip's planes so far -> its pictures, in one batch (a picture at a time would cost ~15 PyTorch
        launches each, with the GIL held)."""
        if not item.frames:
            return
        times = list(item.frames)
        planes = [item.frames.pop(t) for t in times]
        _, final = output_sizes(item.info, self.size)
        luma = _as_levels(torch.stack([y for y, _, _ in planes]))
        chroma = _as_levels(torch.stack([c for _, c, _ in planes]))
        pictures = planes_to_rgb(luma, chroma, item.info.color_matrix, planes[0][2], final, item.info.rotation,
                                 self.size if self.square else None)
        pictures = to_sdr(pictures, item.info.color_transfer)  # PQ / HLG: as every decoder path
        item.pictures.update(zip(times, pictures))

    def _completed(self, dec: _Decoder) -> list[tuple[Any, torch.Tensor | Exception]]:
        done = [p for p in dec.pending if p.done]
        if not done:
            return []
        dec.pending = [p for p in dec.pending if p not in done]
        return [(p.key, self._finish(p)) for p in done]

    def _give_up_held(self, dec: _Decoder) -> None:
        """The pictures ``dec`` holds come out (to their clips, which stay pending) and it is reset: nothing it
        held can then share a picture order count with what comes next (also mid-clip; ``_drain`` settles the
        clips after it)."""
        self.stats.note_drain()
        dec.drained_at = dec.packets
        self._take(dec, dec.ctx.decode(None))
        dec.ctx.flush_buffers()

    def _drain(self, dec: _Decoder) -> list[tuple[Any, torch.Tensor | Exception]]:
        try:
            self._give_up_held(dec)
        except Exception as exc:  # noqa: BLE001 - what did not come out fails below; the set-up is reopened
            log.debug("draining an FFmpeg decoder failed: %s", exc)
            self._discard(dec)
        results = [(p.key, self._finish(p) if p.error is not None or p.got == len(p.wanted)
                    else self._missing(p)) for p in dec.pending]
        dec.pending, dec.owners = [], {}
        return results

    def _reset(self, dec: _Decoder, failed: _Pending, exc: Exception) -> list[tuple[Any, torch.Tensor | Exception]]:
        """The decoder raised on ``failed``'s packets: the clips it held come out as they are, this one fails,
        and the set-up is opened afresh for the next clip (FFmpeg's state after an error is not trusted)."""
        dec.pending.remove(failed)
        failed.release()
        results = self._drain(dec) if dec.pending else []
        self._discard(dec)
        return results + [(failed.key, exc)]

    def _discard(self, dec: _Decoder) -> None:
        """Lets a decoder that failed go; its set-up is opened afresh when next fed."""
        if self._decoders.get(dec.key) is dec:
            del self._decoders[dec.key]
        if self._current == dec.key:
            self._current = None

    @staticmethod
    def _missing(item: _Pending) -> DecodeError:
        error = DecodeError(f"{len(item.wanted) - item.got} of {len(item.wanted)} wanted frames from "
                            f"{item.clip.times[0]:.2f}s did not come out of the FFmpeg decoder")
        item.release()
        return error

    def _finish(self, item: _Pending) -> torch.Tensor | Exception:
        """The clip's pictures in its times' order, or what failed."""
        try:
            if item.error is not None:
                return item.error
            self._convert(item)  # the last batch
            frames = torch.stack([item.pictures[t] for t in item.clip.times])
        except Exception as exc:  # noqa: BLE001 - e.g. CUDA out of memory: this clip fails, the stream goes on
            return exc
        finally:
            item.release()
        self.stats.add(1, len(item.clip.times))
        return frames


def _holds_back_keyframes(dec: _Decoder) -> bool:
    """Whether ``dec`` must give up what it holds before another clip, or another run of a clip: an HEVC
    decoder (FFmpeg's, not ``hevc_cuvid``) fed since its last drain.

    Every clip starts at an IDR or a BLA (``_remux.clean_start``), whose picture order count is its own low bits
    only, so keyframes of different videos fed back to back often share one: x265 and cameras number the same
    second's keyframe alike. FFmpeg's HEVC decoder (7.1 on) refuses a picture whose count a picture it still
    holds for output has ("Duplicate POC in a sequence", logged, not raised), whatever came between: an
    end-of-sequence unit does not help. On the H100 70 of 240 joined 40-s 4K videos lost their 39-s keyframe
    that way (the second of two single-keyframe clips from different videos), and the scan library's 4K videos
    too. Within a clip, keyframes a multiple of 256 frames apart (x265's 8 bits of count) collide the same
    way (a review helper's 8-s GOPs at 32 frames/s). A drained decoder holds nothing. H.264 decoders take an
    IDR after anything.
    """
    return dec.duplicate_counts_dropped and dec.packets > dec.drained_at


def _as_levels(plane: torch.Tensor) -> torch.Tensor:
    """An 8-bit plane as float levels; a P010 one (10 bits in the top of 16) on the same 0-255 scale."""
    if plane.dtype == torch.uint8:
        return plane.float()
    return (plane.view(torch.int16).to(torch.int32) & 0xFFFF).float() / 256.0


@functools.lru_cache(maxsize=None)
def _affine(matrix: str, full_range: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(3x3 weights, (1, 3, 1, 1) offset) taking raw (Y, Cb, Cr) levels to RGB for ``matrix`` and the range, on
    ``device``: built once, not copied to the GPU for every picture."""
    scale = np.array([1.0, 1.0, 1.0]) if full_range else np.array([255.0 / 219.0, 255.0 / 224.0, 255.0 / 224.0])
    zero = np.array([0.0, 128.0, 128.0]) if full_range else np.array([16.0, 128.0, 128.0])
    weights = ycbcr_to_rgb(*MATRIX_WEIGHTS.get(matrix, MATRIX_WEIGHTS["unknown"])) * scale  # columns scaled
    offset = -(weights @ zero)
    return (torch.as_tensor(weights, dtype=torch.float32, device=device),
            torch.as_tensor(offset, dtype=torch.float32, device=device).view(1, 3, 1, 1))


def planes_to_rgb(luma: torch.Tensor, chroma: torch.Tensor, matrix: str, full_range: bool, final: tuple[int, int],
                  rotation: int, square: int | None) -> torch.Tensor:
    """``(F, H, W)`` luma and ``(F, H / 2, W / 2, 2)`` interleaved CbCr levels (float, 0-255) -> ``(F, 3, h, w)``
    uint8 RGB with the stream's ``matrix`` and range, ``final`` (width, height) large, turned by ``rotation``
    (clockwise degrees) and then centre-cropped to ``square`` if given, in the cpu backend's order (``to_display``),
    so odd margins round alike. Both planes are resized (antialiased) to the output size first and converted there:
    the conversion is affine, so the order does not change the result, and it then runs on the small pictures."""
    size = (final[1], final[0])
    y = luma.unsqueeze(1)
    c = chroma.permute(0, 3, 1, 2)
    if tuple(y.shape[2:]) != size:
        y = F.interpolate(y, size=size, mode="bilinear", antialias=True, align_corners=False)
    if tuple(c.shape[2:]) != size:
        c = F.interpolate(c, size=size, mode="bilinear", antialias=True, align_corners=False)
    weights, offset = _affine(matrix, full_range, luma.device)
    rgb = torch.einsum("ij,fjhw->fihw", weights, torch.cat([y, c], dim=1)).add_(offset)
    if rotation:
        rgb = torch.rot90(rgb, k=-(rotation // 90), dims=(2, 3))
    if square is not None:
        top, left = centre_offset(rgb.shape[2], square), centre_offset(rgb.shape[3], square)
        rgb = rgb[:, :, top:top + square, left:left + square]
    return rgb.round_().clamp_(0, 255).to(torch.uint8).contiguous()
