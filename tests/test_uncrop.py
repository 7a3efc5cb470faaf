"""H.264/HEVC SPS uncropping: what lets DALI reuse its NVDEC decoders on 1080p (coded 1088) footage.

The decoded pixels must not change: a clip whose SPS lost its cropping decodes to the coded size, and the
displayed rectangle of it equals the original decode exactly, whatever the SPS's other syntax (scaling
matrices, picture order type, interlacing, 4:4:4, an SPS repeated before every keyframe, HEVC's
conformance window as phones and drones write it).
"""

from __future__ import annotations

import io
import random
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from quadvault_dali.probe import open_container, probe_open
from quadvault_dali.sampling._uncrop import Crop, escape, sps_crop, uncrop_config, uncrop_packet, unescape, uncropped_sps
from quadvault_dali.sampling._plan import plan_samples
from quadvault_dali.sampling._reader import CountingFile
from quadvault_dali.sampling._remux import clean_start, decode_clip, plan_clips
from quadvault_dali.synth import SynthSpec, draw_stamp, _scene


def _encode(path: Path, width: int, height: int, x264_params: str = "", frames: int = 20, fps: int = 10,
            pix_fmt: str = "yuv420p", profile: str | None = None, codec: str = "h264") -> Path:
    """A short H.264 (or HEVC) MP4 with a keyframe every second and the given x264 (x265) parameters."""
    if path.exists():
        return path
    with av.open(str(path), "w") as out:
        encoder, key = ("libx264", "x264-params") if codec == "h264" else ("libx265", "x265-params")
        stream = out.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        params = f"keyint={fps}:min-keyint={fps}:scenecut=0" + (f":{x264_params}" if x264_params else "")
        if codec == "hevc":
            params += ":log-level=error"
        stream.options = {"preset": "veryfast", key: params, **({"profile": profile} if profile else {})}
        stream.codec_context.time_base = Fraction(1, fps)
        for i in range(frames):
            t = i / fps
            image = _scene(SynthSpec().style_at(t), t, height, width, 0)
            draw_stamp(image, t, 7)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


VARIANTS = {
    "plain": dict(width=200, height=120),  # coded 208x128: cropped right and bottom
    "bottom_only": dict(width=320, height=180),  # coded 320x192
    "pps_scaling_matrix": dict(width=200, height=120, x264_params="cqm=jvt"),  # x264 puts it in the PPS
    "poc_type_2": dict(width=200, height=120, x264_params="bframes=0"),
    "interlaced": dict(width=200, height=120, x264_params="tff=1"),
    "repeat_headers": dict(width=200, height=120, x264_params="repeat-headers=1"),
    "high444": dict(width=200, height=120, pix_fmt="yuv444p", profile="high444"),
    # x265 pads to its 8-pixel minimum coding block: 196x116 is coded 200x120 with a conformance window
    "hevc": dict(width=196, height=116, codec="hevc"),
    "hevc_repeat_headers": dict(width=196, height=116, codec="hevc", x264_params="repeat-headers=1"),
    "hevc_temporal_layers": dict(width=196, height=116, codec="hevc", x264_params="temporal-layers=3"),  # sub-layers
    # Matroska: no raw packet positions, so keyframe clips come from seeking and demuxing (other code path)
    "plain.mkv": dict(width=200, height=120),
    "hevc.mkv": dict(width=196, height=116, codec="hevc"),
}
CODEC = {name: spec.get("codec", "h264") for name, spec in VARIANTS.items()}


@pytest.fixture(scope="module")
def h264_variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sps")
    return {name: _encode(folder / (name if "." in name else f"{name}.mp4"), **spec)  # type: ignore[arg-type]
            for name, spec in VARIANTS.items()}


def _extradata(path: Path) -> bytes:
    with av.open(str(path)) as c:
        return bytes(c.streams.video[0].codec_context.extradata)


def _sps_of(config: bytes, codec: str = "h264") -> bytes:
    """The first SPS of an avcC (H.264) or hvcC (HEVC) configuration record."""
    if codec == "h264":
        return config[8:8 + int.from_bytes(config[6:8], "big")]
    pos = 23
    for _ in range(config[22]):  # hvcC: arrays of one NAL unit type each
        kind, count, pos = config[pos] & 0x3F, int.from_bytes(config[pos + 1:pos + 3], "big"), pos + 3
        for _ in range(count):
            size = int.from_bytes(config[pos:pos + 2], "big")
            if kind == 33:
                return config[pos + 2:pos + 2 + size]
            pos += 2 + size
    raise AssertionError("no SPS in the configuration record")


def _crop_of(path: Path, codec: str) -> Crop:
    return sps_crop(_sps_of(_extradata(path), codec), codec)


def _clips(path: Path, mode: str, uncrop: bool) -> list:
    fh = CountingFile(path)
    container = open_container(path, fh)
    try:
        info, index = probe_open(container, path)
        return list(plan_clips(plan_samples(info, index, fps=1.0, mode=mode), container, fh, uncrop=uncrop))
    finally:
        container.close(), fh.close()


def _frames(clips: list) -> list[np.ndarray]:
    return [frame.to_ndarray(format="rgb24") for clip in clips for frame, _ in decode_clip(clip)]


def test_the_crop_of_real_x264_and_x265_streams(h264_variants: dict[str, Path]) -> None:
    crop = _crop_of(h264_variants["plain"], "h264")
    assert crop == Crop(208, 128, 0, 8, 0, 8) and (crop.display_width, crop.display_height) == (200, 120)
    assert _crop_of(h264_variants["bottom_only"], "h264") == Crop(320, 192, 0, 0, 0, 12)
    interlaced = _crop_of(h264_variants["interlaced"], "h264")
    assert (interlaced.coded_height, interlaced.display_height) == (128, 120)
    high444 = _crop_of(h264_variants["high444"], "h264")
    assert (high444.display_width, high444.display_height) == (200, 120)
    assert _crop_of(h264_variants["hevc"], "hevc") == Crop(200, 120, 0, 4, 0, 4)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_uncropped_sps_keeps_everything_else(h264_variants: dict[str, Path], name: str) -> None:
    codec = CODEC[name]
    sps = _sps_of(_extradata(h264_variants[name]), codec)
    new, crop = uncropped_sps(sps, codec)  # type: ignore[misc]
    assert crop == sps_crop(sps, codec)
    again = sps_crop(new, codec)
    assert (again.coded_width, again.coded_height) == (crop.coded_width, crop.coded_height)
    assert (again.left, again.right, again.top, again.bottom) == (0, 0, 0, 0)
    assert uncropped_sps(new, codec) is None  # nothing left to drop
    assert len(new) <= len(sps) and new[:len(new) // 2] != b""


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_uncropped_clips_decode_to_the_same_pixels(h264_variants: dict[str, Path], name: str, mode: str) -> None:
    path = h264_variants[name]
    plain = _clips(path, mode, uncrop=False)
    uncropped = _clips(path, mode, uncrop=True)
    crop = _crop_of(path, CODEC[name])
    assert all(c.roi == (1.0, 1.0) for c in plain)
    assert all(c.roi == (crop.display_height / crop.coded_height, crop.display_width / crop.coded_width)
               for c in uncropped)
    assert [c.times for c in uncropped] == [c.times for c in plain]
    before, after = _frames(plain), _frames(uncropped)
    assert len(before) == len(after) > 0
    for a, b in zip(before, after):
        assert a.shape == (crop.display_height, crop.display_width, 3)
        assert b.shape == (crop.coded_height, crop.coded_width, 3)
        assert np.array_equal(b[:crop.display_height, :crop.display_width], a)


def test_a_stream_without_cropping_is_left_alone(make_clip) -> None:
    path = make_clip("sps_uncropped_128x80.mp4", codec="h264", width=128, height=80, fps=10, duration_s=2.0)
    assert uncrop_config("h264", _extradata(path)) is None
    hevc = make_clip("sps_uncropped_hevc_256x160.mp4", codec="hevc", width=256, height=160, fps=10, duration_s=2.0)
    assert uncrop_config("hevc", _extradata(hevc)) is None
    assert uncrop_config("vp9", _extradata(path)) is None
    for video in (path, hevc):
        clips = _clips(video, "keyframe", uncrop=True)
        assert clips and all(c.roi == (1.0, 1.0) for c in clips)


def _nals(packet: bytes) -> list[bytes]:
    nals, pos = [], 0
    while pos < len(packet):
        size = int.from_bytes(packet[pos:pos + 4], "big")
        nals.append(packet[pos + 4:pos + 4 + size])
        pos += 4 + size
    return nals


@pytest.mark.parametrize(("name", "sps_type"), [("repeat_headers", 7), ("hevc_repeat_headers", 33)])
def test_an_sps_repeated_in_the_stream_is_rewritten_too(h264_variants: dict[str, Path], name: str,
                                                        sps_type: int) -> None:
    path, codec = h264_variants[name], CODEC[name]
    done = uncrop_config(codec, _extradata(path))
    assert done is not None and done.length_size == 4
    with av.open(str(path)) as c:
        key = next(bytes(p) for p in c.demux(video=0) if p.is_keyframe and p.size)
    rewritten = uncrop_packet(key, codec, done.crop, done.length_size)
    assert rewritten != key
    kind = (lambda n: n[0] & 0x1F) if codec == "h264" else (lambda n: (n[0] >> 1) & 0x3F)
    spss = [n for n in _nals(rewritten) if kind(n) == sps_type]
    assert len(spss) == 1 and sps_crop(spss[0], codec).bottom == 0
    assert [kind(n) for n in _nals(rewritten)] == [kind(n) for n in _nals(key)]
    assert [n for n in _nals(rewritten) if kind(n) != sps_type] == [n for n in _nals(key) if kind(n) != sps_type]
    other = Crop(done.crop.coded_width, done.crop.coded_height, 0, 0, 0, 2)
    with pytest.raises(ValueError, match="SPS inside the stream"):
        uncrop_packet(key, codec, other, done.length_size)


class _Writer:
    """Bits of a hand-made SPS, written by the syntax table of H.264 7.3.2.1.1."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> "_Writer":
        self.bits.extend((value >> (n - 1 - i)) & 1 for i in range(n))
        return self

    def ue(self, value: int) -> "_Writer":
        code = value + 1
        return self.u(code.bit_length() - 1, 0).u(code.bit_length(), code)

    def se(self, value: int) -> "_Writer":
        return self.ue(2 * value - 1 if value > 0 else -2 * value)

    def nal(self) -> bytes:
        bits = self.bits + [1] + [0] * (-(len(self.bits) + 1) % 8)
        rbsp = bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))
        return b"\x67" + escape(rbsp)


def _hand_made_sps(crop: tuple[int, int, int, int] | None) -> bytes:
    """High profile, 4:2:0, scaling lists (4x4 and 8x8, one ending early), picture order type 1 with a
    cycle, field coding (crop units of 2x4), and a VUI after the cropping that must survive untouched."""
    w = _Writer().u(8, 100).u(8, 0).u(8, 40).ue(0)  # profile, constraints, level, sps id
    w.ue(1).ue(0).ue(0).u(1, 0)  # chroma 4:2:0, 8-bit, no transform bypass
    w.u(1, 1)  # seq_scaling_matrix_present_flag
    for i in range(8):
        w.u(1, i in (0, 3, 6))
        if i in (0, 3):
            for delta in [3, -2, 0, 5, 1, -1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]:
                w.se(delta)
        elif i == 6:
            w.se(-8)  # next scale 0: the rest of the 8x8 list is implied
    w.ue(2).ue(1)  # log2_max_frame_num_minus4, pic_order_cnt_type 1
    w.u(1, 0).se(-3).se(4).ue(3).se(1).se(-2).se(7)
    w.ue(4).u(1, 0)  # max_num_ref_frames, gaps
    w.ue(119).ue(33)  # 1920 wide, 34 map units: 1088 rows with field coding
    w.u(1, 0).u(1, 1).u(1, 1)  # frame_mbs_only 0, mbaff 1, direct_8x8_inference
    if crop is None:
        w.u(1, 0)
    else:
        w.u(1, 1)
        for v in crop:
            w.ue(v)
    w.u(1, 1)  # vui_parameters_present_flag
    w.u(1, 1).u(8, 255).u(16, 1).u(16, 1)  # aspect ratio: extended SAR 1:1
    w.u(1, 0).u(1, 0).u(1, 0)  # no overscan, video signal or chroma location info
    w.u(1, 1).u(32, 1001).u(32, 60000).u(1, 1)  # timing info
    w.u(1, 0).u(1, 0).u(1, 0)  # no HRD, no bitstream restriction
    return w.nal()


def test_every_branch_of_the_sps_syntax_before_the_cropping() -> None:
    cropped = _hand_made_sps((0, 0, 0, 2))  # 2 units of 4 rows: 1088 -> 1080
    crop = sps_crop(cropped)
    assert crop == Crop(1920, 1088, 0, 0, 0, 8)
    new, dropped = uncropped_sps(cropped, "h264")  # type: ignore[misc]
    assert dropped == crop
    assert new == _hand_made_sps(None)  # bit for bit what an encoder writes without cropping
    assert uncropped_sps(_hand_made_sps((1, 0, 0, 2))) is None  # a left crop is not padding: kept


def test_emulation_prevention_round_trips() -> None:
    rng = random.Random(5)
    for _ in range(200):
        rbsp = bytes(rng.choice([0, 0, 0, 1, 2, 3, 0x80, 0xFF]) for _ in range(rng.randint(1, 40))) + b"\x80"
        payload = escape(rbsp)
        assert b"\x00\x00\x00" not in payload and b"\x00\x00\x01" not in payload and b"\x00\x00\x02" not in payload
        assert unescape(payload) == rbsp


def test_unescape_removes_each_emulation_prevention_byte_as_the_standard_reads_it() -> None:
    """Any bytes, not only what ``escape`` writes: a 03 goes where two zero bytes precede it since the last one
    removed (7.3.1), the rest stays."""
    def by_the_rule(payload: bytes) -> bytes:
        out, zeros = bytearray(), 0
        for b in payload:
            if zeros >= 2 and b == 3:
                zeros = 0
                continue
            out.append(b)
            zeros = zeros + 1 if b == 0 else 0
        return bytes(out)

    rng = random.Random(7)
    cases = [b"\x00\x00\x03\x03", b"\x00\x00\x00\x03", b"\x00\x00\x03\x00\x00\x03", b"\x00\x03\x00\x00\x03\x01"]
    cases += [bytes(rng.choice([0, 0, 0, 3, 3, 1, 0xFF]) for _ in range(rng.randint(0, 30))) for _ in range(3000)]
    for payload in cases:
        assert unescape(payload) == by_the_rule(payload), payload.hex()


def test_not_an_sps_or_damaged_is_refused() -> None:
    with pytest.raises(ValueError, match="not an H.264 sequence parameter set"):
        sps_crop(b"\x68\xee\x3c\x80")  # a PPS
    with pytest.raises(ValueError, match="truncated"):
        sps_crop(b"\x67\x64")
    assert uncropped_sps(b"\x67\x64") is None
    assert uncrop_config("h264", b"") is None and uncrop_config("h264", b"\x00\x00\x00\x01\x67") is None  # Annex B
    assert uncrop_config("hevc", b"\x01" + b"\x00" * 30) is None  # an hvcC without arrays: no SPS


def test_merged_uncropped_clips_keep_the_region(h264_variants: dict[str, Path]) -> None:
    from quadvault_dali.sampling._remux import can_follow, merge_clips

    first, second = _clips(h264_variants["plain"], "keyframe", True), _clips(h264_variants["plain"], "keyframe", True)
    assert can_follow(second[0], first[-1])
    merged = merge_clips([first[-1], second[0]])
    assert merged.roi == first[-1].roi and len(merged) == len(first[-1]) + len(second[0])
    with av.open(io.BytesIO(merged.data)) as c:
        ctx = c.streams.video[0].codec_context
        assert (ctx.width, ctx.height) == (208, 128)


#: corpus files that phones, cameras and a drone cropped: (name, codec, decoded picture -> coded picture)
CORPUS_CROPPED = {
    "drone.mp4": ("h264", (708, 1260), (720, 1264)),
    "pixel7_videoOnly_cleaned.mp4": ("h264", (1080, 1920), (1088, 1920)),
    "hdr10-video-with-sdr-container.mp4": ("hevc", (1080, 1920), (1088, 1920)),  # 10-bit, conformance window
    "mv_with_2_top_shots.mp4": ("hevc", (1080, 1440), (1088, 1440)),
}


@pytest.mark.parametrize("name", sorted(CORPUS_CROPPED))
def test_real_footage_decodes_to_the_same_planes_uncropped(corpus: Path, name: str) -> None:
    """Real encoders' padding (H.264 macroblocks, HEVC conformance windows): the uncropped clips' decoded
    Y and chroma planes hold the original ones exactly. (Converted to RGB, 10-bit footage may differ by a
    few levels in the last displayed row: the chroma interpolation there now sees the padding row.)"""
    codec, (h, w), coded = CORPUS_CROPPED[name]
    path = next(corpus.rglob(name))
    plain, uncropped = _clips(path, "keyframe", False), _clips(path, "keyframe", True)
    assert uncropped and all(c.roi == (h / coded[0], w / coded[1]) for c in uncropped)
    before = [f for c in plain for f, _ in decode_clip(c)]
    after = [f for c in uncropped for f, _ in decode_clip(c)]
    assert len(before) == len(after) > 0
    for a, b in zip(before, after):
        assert (a.height, a.width) == (h, w) and (b.height, b.width) == coded
        pa, pb = a.to_ndarray(), b.to_ndarray()  # planar YUV 4:2:0, planes stacked: (H * 3 / 2, W)
        assert np.array_equal(pa[:h, :w], pb[:h, :w])  # luma
        chroma_a, chroma_b = pa[h:].reshape(2, h // 2, -1), pb[coded[0]:].reshape(2, coded[0] // 2, -1)
        assert np.array_equal(chroma_a[:, :, :w // 2], chroma_b[:, :h // 2, :w // 2])


def test_a_packet_that_does_not_split_into_nal_units_is_refused(h264_variants: dict[str, Path]) -> None:
    """An SPS inside such a packet could not be seen (and left cropped): better no rewrite than a wrong region."""
    path = h264_variants["repeat_headers"]
    done = uncrop_config("h264", _extradata(path))
    assert done is not None
    with av.open(str(path)) as c:
        key = next(bytes(p) for p in c.demux(video=0) if p.is_keyframe and p.size)
    padded = uncrop_packet(key + b"\0\0", "h264", done.crop)  # trailing zero bytes are only padding
    assert padded.endswith(b"\0\0")
    assert sps_crop([n for n in _nals(padded[:-2]) if n[0] & 0x1F == 7][0]).bottom == 0
    with pytest.raises(ValueError, match="length-prefixed"):
        uncrop_packet(key + b"\0\0\0\x09\x67", "h264", done.crop)  # a NAL unit cut short


def test_an_hevc_sps_of_another_layer_is_not_rewritten(h264_variants: dict[str, Path]) -> None:
    sps = _sps_of(_extradata(h264_variants["hevc"]), "hevc")
    other_layer = bytes([sps[0], (sps[1] & 0x07) | (1 << 3)]) + sps[2:]  # nuh_layer_id 1
    assert uncropped_sps(other_layer, "hevc") is None
    packet = len(other_layer).to_bytes(4, "big") + other_layer
    assert uncrop_packet(packet, "hevc", sps_crop(sps, "hevc")) == packet


def test_a_stream_that_cannot_be_uncropped_midway_keeps_its_cropping_from_there(
        h264_variants: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Clips cut so far stay uncropped; the rest of the video is cut as the file has it (not sent to the CPU)."""
    import quadvault_dali.sampling._remux as remux

    real = remux.uncrop_packet
    calls = {"n": 0}

    def failing_later(data, codec, expected, length_size=4):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 1:
            raise ValueError("an SPS inside the stream crops the picture unlike the stream's configuration record")
        return real(data, codec, expected, length_size)

    monkeypatch.setattr(remux, "uncrop_packet", failing_later)
    path = h264_variants["plain"]
    fh = CountingFile(path)
    container = open_container(path, fh)
    try:
        info, index = probe_open(container, path)
        plan = plan_samples(info, index, fps=1.0, mode="keyframe")
        clips = list(plan_clips(plan, container, fh, max_frames=1, uncrop=True))
    finally:
        container.close(), fh.close()
    assert [c.roi for c in clips] == [(120 / 128, 200 / 208)] + [(1.0, 1.0)] * (len(clips) - 1)
    assert clips[0].signature != clips[1].signature == clips[0].cropped_signature
    assert _frames(clips)[1].shape == (120, 200, 3)


def test_an_uncropped_clip_crops_back_to_the_file_as_it_is(h264_variants: dict[str, Path]) -> None:
    """What the gpu backend decodes when a decoder refuses the rewrite: the original parameter sets (the
    in-band SPS too), the displayed picture, the same frames."""
    for name in ("plain", "repeat_headers", "hevc_repeat_headers"):
        path = h264_variants[name]
        (plain,), (uncropped,) = _clips(path, "keyframe", False), _clips(path, "keyframe", True)
        assert uncropped.can_crop_back and not plain.can_crop_back
        back = uncropped.cropped()
        assert back.roi == (1.0, 1.0) and back.signature == plain.signature and back.times == plain.times
        assert all(np.array_equal(a, b) for a, b in zip(_frames([back]), _frames([plain])))
        with av.open(io.BytesIO(back.data)) as c:
            assert bytes(c.streams.video[0].codec_context.extradata) == _extradata(path)
            packets = [bytes(p) for p in c.demux(video=0) if p.size]
        with av.open(str(path)) as c:  # as the file has them (HEVC CRA keyframes relabelled BLA, as always)
            originals = {clean_start(bytes(p), CODEC[name], 4) for p in c.demux(video=0) if p.size}
        assert packets and all(p in originals for p in packets)
