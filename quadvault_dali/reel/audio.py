"""``--audio keep``: the sources' sound under each window, crossfaded like the pictures.

The whole track is assembled in memory before encoding (48 kHz stereo float: about 23 MB for a
one-minute reel), which lets the encoder interleave audio and video packets as it goes. Sources
without sound, or whose sound cannot be decoded, contribute silence (logged).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

import av
import numpy as np

from ..probe import open_container
from ..errors import QuadvaultError
from .select import ReelPlan

if TYPE_CHECKING:
    from ..probe import VideoInfo

SAMPLE_RATE = 48000
log = logging.getLogger(__name__)


#: A hole in the sound longer than this (dropped packets: a phone's or a remote's hiccup) is filled with silence
#: so the sound after it stays under its pictures; shorter differences are rounding
GAP_S = 0.02


def read_audio_window(path: object, in_s: float, length_s: float, rate: int = SAMPLE_RATE, *,
                      video_start_s: float = 0.0) -> np.ndarray | None:
    """Stereo float32 ``(2, n)`` samples of ``[in_s, in_s + length_s)``; ``None`` when there is no sound.

    Times are the pictures' (seconds from the video stream's first frame, which starts at the container
    time ``video_start_s``), so sound that starts later or earlier than the pictures stays in sync. Each
    decoded frame goes where its time says: after a hole in the sound (frames were joined end to end, and
    the sound after a 1-s hole played a second early) the hole is silence. A change of layout or rate
    (camcorder segments joined byte-wise: mono 48 kHz, then stereo 44.1 kHz) gets a new resampler; it
    used to end the reel in a traceback.
    """
    want = int(round(length_s * rate))
    container = open_container(path)  # type: ignore[arg-type]
    try:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        tb = stream.time_base
        start = int(round(video_start_s / tb))  # the pictures' zero, in this stream's ticks
        container.seek(max(stream.start_time or 0, start + int((in_s - 0.1) / tb)), stream=stream, backward=True)
        chunks: list[np.ndarray] = []
        first_t: float | None = None
        have = 0
        resampler: av.AudioResampler | None = None
        setup: tuple | None = None
        for frame in container.decode(stream):
            t = float((frame.pts - start) * tb) if frame.pts is not None else None
            if first_t is None:
                if t is None:
                    continue
                first_t = t
            if (frame.format.name, frame.layout.name, frame.sample_rate) != setup:
                if resampler is not None:
                    have += _append(resampler.resample(None), chunks)
                setup = (frame.format.name, frame.layout.name, frame.sample_rate)
                resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
            hole = int(round((t - first_t) * rate)) - have if t is not None else 0
            if hole > GAP_S * rate:
                chunks.append(np.zeros((2, hole), np.float32))
                have += hole
            have += _append(resampler.resample(frame), chunks)  # type: ignore[union-attr]
            if first_t + have / rate >= in_s + length_s:
                break
    except (av.error.FFmpegError, ValueError) as exc:  # ValueError: PyAV refusing a frame it cannot convert
        log.warning("%s: audio not decodable (%s); using silence for this clip", path, exc)
        return None
    finally:
        container.close()
    if first_t is None or not chunks:
        return None
    samples = np.concatenate(chunks, axis=1).astype(np.float32)
    skip = int(round((in_s - first_t) * rate))
    if skip < 0:  # audio starts after the window's in-point: pad the gap with silence
        samples = np.pad(samples, ((0, 0), (-skip, 0)))
        skip = 0
    samples = samples[:, skip: skip + want]
    if samples.shape[1] < want:
        samples = np.pad(samples, ((0, 0), (0, want - samples.shape[1])))
    return samples


def _append(frames: list[av.AudioFrame], chunks: list[np.ndarray]) -> int:
    """Adds the resampled ``frames``' samples to ``chunks``; returns how many."""
    count = 0
    for out in frames:
        arr = out.to_ndarray()
        chunks.append(arr)
        count += arr.shape[1]
    return count


def build_audio_track(plan: ReelPlan, rate: int = SAMPLE_RATE,
                      infos: "Mapping[Path, VideoInfo] | None" = None) -> np.ndarray:
    """The reel's sound ``(2, n)``: each window's audio with linear crossfades where clips overlap.

    ``infos`` (the probed sources) give each video stream's start, so every clip's sound lines up with its
    pictures even where the audio stream starts at another time.
    """
    total = int(round(plan.duration_s * rate))
    track = np.zeros((2, total), np.float32)
    fade = int(round(plan.fade_frames / plan.fps * rate))
    last = len(plan.clips) - 1
    for k, clip in enumerate(plan.clips):
        length = clip.frames / plan.fps
        try:
            info = (infos or {}).get(clip.window.path)
            samples = read_audio_window(clip.window.path, clip.window.in_s, length, rate,
                                        video_start_s=info.start_time_s if info is not None else 0.0)
        except QuadvaultError as exc:
            log.warning("%s; using silence for clip %d", exc, clip.position)
            samples = None
        if samples is None:
            log.info("clip %d (%s) has no sound; silence under it", clip.position, clip.window.path.name)
            continue
        gain = np.ones(samples.shape[1], np.float32)
        if fade and k > 0:
            gain[:fade] *= np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
        if fade and k < last:
            gain[-fade:] *= np.linspace(1.0, 0.0, fade, endpoint=False, dtype=np.float32)
        at = int(round(clip.reel_start_s * rate))
        end = min(total, at + samples.shape[1])
        track[:, at:end] += samples[:, : end - at] * gain[: end - at]
    return np.clip(track, -1.0, 1.0)


def audio_frames(track: np.ndarray, rate: int = SAMPLE_RATE, chunk: int = 1024) -> Iterator[av.AudioFrame]:
    """Splits the track into AAC-sized frames with sample-count pts."""
    for start in range(0, track.shape[1], chunk):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(track[:, start: start + chunk]),
                                           format="fltp", layout="stereo")
        frame.sample_rate = rate
        frame.pts = start
        yield frame
