"""Test media made from other test media: a clip's video stream copied into another container or layout."""

from __future__ import annotations

from pathlib import Path


def remux_video(source: Path, out: Path, *, options: dict[str, str] | None = None, bsf: str | None = None) -> Path:
    """``source``'s video packets copied into ``out`` (its muxer given ``options``, e.g. ``movflags``), through
    the bitstream filter ``bsf`` where one is named (e.g. ``h264_metadata=...``)."""
    import av

    with av.open(str(source)) as src, av.open(str(out), "w", options=options or {}) as dst:
        stream = src.streams.video[0]
        copy = dst.add_stream_from_template(stream)
        filtered = av.BitStreamFilterContext(bsf, stream) if bsf else None
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            for piece in filtered.filter(packet) if filtered is not None else (packet,):
                piece.stream = copy
                dst.mux(piece)
    return out
