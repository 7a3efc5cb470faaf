"""Test media made from other test media: a clip's video stream copied into another container or layout."""

from __future__ import annotations

from pathlib import Path


def remux_video(source: Path, out: Path, *, options: dict[str, str] | None = None, bsf: str | None = None,
                bsf_record: bool = False, first_units: bytes = b"", **codec: object) -> Path:
    """``source``'s video packets copied into ``out`` (its muxer given ``options``, e.g. ``movflags``), through
    the bitstream filter ``bsf`` where one is named (e.g. ``h264_metadata=...``; with ``bsf_record`` its output
    parameters become the track's, so it rewrites the SPS in the configuration record too). ``codec`` sets the
    muxer's codec parameters (``color_primaries=1`` writes a ``colr`` box, ``sample_aspect_ratio`` a ``pasp``,
    ``width`` the sample description's size, ``extradata`` the record); ``first_units`` (length-prefixed NAL
    units) go in front of the first packet."""
    import av

    with av.open(str(source)) as src, av.open(str(out), "w", options=options or {}) as dst:
        stream = src.streams.video[0]
        copy = dst.add_stream_from_template(stream)
        filtered = av.BitStreamFilterContext(bsf, stream, copy if bsf_record else None) if bsf else None
        for name, value in codec.items():
            setattr(copy.codec_context, name, value)
        first = True
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            for piece in filtered.filter(packet) if filtered is not None else (packet,):
                if first and first_units:
                    prefixed = av.Packet(first_units + bytes(piece))
                    prefixed.pts, prefixed.dts, prefixed.duration = piece.pts, piece.dts, piece.duration
                    prefixed.time_base, prefixed.is_keyframe = piece.time_base, piece.is_keyframe
                    piece = prefixed
                first = False
                piece.stream = copy
                dst.mux(piece)
    return out


def _avcc_with(record: bytes, sps: list[bytes]) -> bytes:
    """An avcC ``record`` with ``sps`` (NAL units) in place of its SPSs, its PPSs and the rest kept."""
    pos = 6
    for _ in range(record[5] & 0x1F):
        pos += 2 + int.from_bytes(record[pos:pos + 2], "big")
    return record[:5] + bytes([0xE0 | len(sps)]) + b"".join(len(n).to_bytes(2, "big") + n for n in sps) + record[pos:]


def _first_sps(path: Path) -> bytes:
    record = _avcc(path)
    return record[8:8 + int.from_bytes(record[6:8], "big")]


def _x264_clip(out: Path, pix_fmt: str = "yuv420p", params: str = "", **codec: object) -> Path:
    """Two seconds of 192x108 moving colour from libx264 (GOPs of 1 s), ``params`` its x264 options."""
    import av
    import numpy as np

    with av.open(str(out), "w") as dst:
        stream = dst.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 192, 108, pix_fmt
        stream.options = {"g": "30", **({"x264-params": params} if params else {})}
        for name, value in codec.items():
            setattr(stream.codec_context, name, value)
        for i in range(60):
            rgb = np.zeros((108, 192, 3), np.uint8)
            rgb[:, : (i * 3) % 192] = (200, 50, 90)
            rgb[54:] += np.uint8(i)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    return out


def h264_header_variants(folder: Path) -> list[Path]:
    """H.264 MP4s whose SPS and track header tell different things, where a quick open (FFmpeg's probing cut
    short) must read what a full one learns from decoding: the SPS's sample aspect ratio (table and extended),
    range and colour description with and without a ``colr`` box, cropping against the sample description's
    size (FFmpeg's "container cropping"), a ``pasp`` box, 4:2:2/4:4:4/10-bit/full-range formats, field coding."""
    from fractions import Fraction

    folder.mkdir(parents=True, exist_ok=True)
    plain = _x264_clip(folder / "plain.mp4")
    made = [plain, _x264_clip(folder / "yuv422.mp4", "yuv422p"), _x264_clip(folder / "yuv444.mp4", "yuv444p"),
            _x264_clip(folder / "p10.mp4", "yuv420p10le"), _x264_clip(folder / "yuvj.mp4", "yuvj420p"),
            _x264_clip(folder / "vui_709_full.mp4",
                       params="fullrange=on:colorprim=bt709:transfer=bt709:colormatrix=bt709"),
            _x264_clip(folder / "vui_format_only.mp4", params="videoformat=ntsc"),
            _x264_clip(folder / "interlaced.mp4", params="interlaced=1:tff=1"),
            _x264_clip(folder / "pasp_4_3.mp4", sample_aspect_ratio=Fraction(4, 3))]
    sps = {"sar_table": "sample_aspect_ratio=40/33", "sar_extended": "sample_aspect_ratio=300/7",
           "full_range": "video_full_range_flag=1", "crop_left": "crop_left=8:crop_bottom=4",
           "crop_bottom": "crop_bottom=6",
           "bt2020": "colour_primaries=9:transfer_characteristics=16:matrix_coefficients=9"}
    for name, options in sps.items():
        made.append(remux_video(plain, folder / f"sps_{name}.mp4", bsf=f"h264_metadata={options}", bsf_record=True))
    full, bt2020 = folder / "sps_full_range.mp4", folder / "sps_bt2020.mp4"
    made += [
        remux_video(full, folder / "colr_709_limited_sps_full.mp4", color_primaries=1, color_trc=1, colorspace=1,
                      color_range=1),
        remux_video(bt2020, folder / "colr_709_sps_bt2020.mp4", color_primaries=1, color_trc=1, colorspace=1),
        remux_video(bt2020, folder / "colr_unspecified_sps_bt2020.mp4", color_primaries=2, color_trc=2,
                      colorspace=2),
        remux_video(bt2020, folder / "colr_bt2020.mov"),
        remux_video(folder / "sps_sar_table.mp4", folder / "pasp_4_3_sps_40_33.mp4",
                      sample_aspect_ratio=Fraction(4, 3)),
        remux_video(plain, folder / "stsd_smaller_same_macroblocks.mp4", width=180, height=100),
        remux_video(plain, folder / "stsd_smaller.mp4", width=160, height=90),
        remux_video(plain, folder / "stsd_larger.mp4", width=320, height=240),
        remux_video(folder / "sps_crop_left.mp4", folder / "stsd_smaller_sps_crop_left.mp4", width=180, height=100),
        remux_video(folder / "interlaced.mp4", folder / "interlaced_no_fiel.mp4", field_order=0),
        # code points FFmpeg has no name for become "unspecified"; an aspect that squeezes 108 rows to none is dropped
        remux_video(plain, folder / "sps_unnamed_colours.mp4",
                      bsf="h264_metadata=colour_primaries=50:transfer_characteristics=50:matrix_coefficients=50",
                      bsf_record=True),
        remux_video(plain, folder / "sps_sar_squeezes_to_nothing.mp4", bsf="h264_metadata=sample_aspect_ratio=300/1",
                    bsf_record=True),
    ]
    # FFmpeg's decoder uses the last SPS of an id (the record's first here is BT.2020 and full range)
    record = _avcc_with(_avcc(plain), [_first_sps(bt2020), _first_sps(full), _first_sps(plain)])
    made.append(remux_video(plain, folder / "record_three_sps.mp4", extradata=record))
    # SPS in every keyframe (x264's repeat-headers): the first packet's, not the record's, is what FFmpeg uses
    repeated = _x264_clip(folder / "inband_sps.mp4", params="repeat-headers=1")
    made += [repeated, remux_video(repeated, folder / "inband_sps_unlike_record.mp4",
                                    bsf="h264_metadata=sample_aspect_ratio=4/3:video_full_range_flag=1:crop_bottom=10",
                                    bsf_record=True, extradata=_avcc(repeated))]
    # an alternative transfer characteristics SEI (HLG, 18) before the first slice: FFmpeg's transfer is the SEI's
    hlg_sei = bytes([0x06, 147, 1, 18, 0x80])
    made.append(remux_video(folder / "vui_709_full.mp4", folder / "sei_alternative_transfer.mp4",
                              first_units=len(hlg_sei).to_bytes(4, "big") + hlg_sei, color_primaries=2, color_trc=2,
                              colorspace=2, color_range=0))  # no ``colr`` box: the SPS's colours, the SEI's transfer
    return made


def _avcc(path: Path) -> bytes:
    import av

    with av.open(str(path)) as src:
        return bytes(src.streams.video[0].codec_context.extradata)


def export_copy(source: Path, out: Path, *, start_s: float = 0.0, width: int | None = None,
                height: int | None = None, crf: int = 30, gain: float = 1.0, crop_aspect: float | None = None) -> Path:
    """What an editing app exports from ``source``: its frames from ``start_s`` on, cut to their centre of
    ``crop_aspect`` (width / height: 9/16 for a phone) if given, rescaled, brightened by ``gain`` and re-encoded
    with x264 at ``crf`` (other bytes, the same pictures)."""
    import fractions

    import av
    import numpy as np

    with av.open(str(source)) as inp, av.open(str(out), "w") as dst:
        src = inp.streams.video[0]
        width, height = width or src.codec_context.width, height or src.codec_context.height
        rate = src.average_rate or fractions.Fraction(30)
        stream = dst.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf)}
        count = 0
        for frame in inp.decode(src):
            if frame.time is None or frame.time < start_s - 1e-6:
                continue
            if crop_aspect is not None:
                full = frame.to_ndarray(format="rgb24")
                keep = int(round(crop_aspect * full.shape[0]))
                left = (full.shape[1] - keep) // 2
                cut = av.VideoFrame.from_ndarray(np.ascontiguousarray(full[:, left: left + keep]), format="rgb24")
                rgb = cut.to_ndarray(format="rgb24", width=width, height=height).astype(np.float32) * gain
            else:
                rgb = frame.to_ndarray(format="rgb24", width=width, height=height).astype(np.float32) * gain
            picture = av.VideoFrame.from_ndarray(np.clip(rgb, 0, 255).astype(np.uint8), format="rgb24")
            picture = picture.reformat(format="yuv420p")
            picture.pts, picture.time_base = count, 1 / fractions.Fraction(rate)
            count += 1
            for packet in stream.encode(picture):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    return out
