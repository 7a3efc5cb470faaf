"""Presentation times of decoded frames, where the container stores decode times (AVI with B-frames).

An AVI chunk holds one picture and no time of its own: FFmpeg numbers the chunks in decode order, so with
B-frames the decoder's frames come out in presentation order carrying a neighbour's time (a 24 fps test
file's frames carried 1, 3, 4, 2, 5, 7, 6, ... frame times). Exact sampling then took the wrong picture for
a second, 1-3 frames off, and a reel's window showed its frames at shuffled times. The times themselves are
right as a set -- each is some picture's -- so the n-th frame out of the decoder is shown at the n-th
smallest time of the packets fed to it, which ``FrameClock`` hands out. The keyframe of a closed GOP, first
in both orders, keeps its own packet's time, so keyframe sampling agrees with it.
"""

from __future__ import annotations

import heapq

import av


def stores_decode_times(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> bool:
    """Whether ``stream``'s packet times are in decode order while its pictures are reordered: an AVI file
    (FFmpeg's only common demuxer without presentation times) whose codec says it has B-frames."""
    return container.format.name.split(",")[0] == "avi" and stream.codec_context.has_b_frames > 0


class FrameClock:
    """Hands each decoded frame its presentation time, in stream ticks, in a demux-then-decode loop: call
    ``fed`` with every packet before decoding it and ``time_of`` with every frame that comes out.

    Without ``reorder`` a frame keeps its own time. With it, each frame takes the smallest time not yet
    handed out; a packet that failed to decode is ``dropped`` so the frames after it keep theirs. This holds
    from the stream's start and after a seek to a closed GOP's keyframe (every drone and camera encoder's
    default); after a seek into open GOPs, frames the decoder cannot make leave their times behind.
    """

    def __init__(self, reorder: bool) -> None:
        self.reorder = reorder
        self._pending: list[int] = []

    def fed(self, packet: av.Packet) -> None:
        if self.reorder and packet.size and packet.pts is not None:
            heapq.heappush(self._pending, int(packet.pts))

    def dropped(self, packet: av.Packet) -> None:
        """``packet`` failed to decode: no frame will take its time."""
        if self.reorder and packet.size and packet.pts is not None:
            try:
                self._pending.remove(int(packet.pts))
            except ValueError:
                return
            heapq.heapify(self._pending)

    def time_of(self, frame: av.VideoFrame) -> int | None:
        if self.reorder and self._pending:
            return heapq.heappop(self._pending)
        return frame.pts
