"""H.264 and HEVC parameter sets without cropping, so DALI reuses its hardware decoders.

Encoders code pictures in blocks: 1080p H.264 is coded as 1088 rows (16-pixel macroblocks) and its SPS
crops 8 away for display; hardware HEVC encoders (phones, drones) do the same with a conformance window
(1920x1088, 8 rows off). DALI 2.4 caches NVDEC decoders but files each one under its *display* height
while looking it up by the *coded* height, so for such a stream the lookup never matches: every DALI
sample of 1080p footage -- the commonest drone format -- creates a new hardware decoder (50-70 ms on an
H100) and the cache fills with unused ones. A clip whose SPS says "no cropping" is decoded to the full
coded size, is filed and found under 1088, and the decoder is reused; the sampler keeps the picture
itself (a region of interest in the resize, ``Clip.roi``). Cropping only selects the output rectangle,
so the decoded pixels inside it are exactly those of the original stream.

Only crops at the bottom and right are dropped (the encoder's padding); a stream cropped at the top or
left is left as it is. The region also drops what an H.264 track header crops further (FFmpeg's "container
cropping", ``probe.codec_setup``; ``_remux._ClipPacker._uncrop``). The rewrite copies every other bit of the SPS unchanged. In the shared corpus,
1080p H.264 from a Pixel 7 and HEVC from Pixel phones (1920x1088, conformance window of 8 rows) are
such streams; their uncropped clips decode to identical Y/U/V planes (``tests/test_uncrop.py``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .._nal import unescape

#: H.264 profile_idc values whose SPS carries chroma format, bit depths and scaling matrices (7.3.2.1.1)
_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}
#: NAL unit type of a sequence parameter set, and the NAL header's length, per codec
_SPS_TYPE = {"h264": 7, "hevc": 33}
_HEADER_BYTES = {"h264": 1, "hevc": 2}
_NAMES = {"h264": "H.264", "hevc": "HEVC"}


@dataclass(frozen=True)
class Crop:
    """An SPS's cropping in luma pixels and the coded picture size it applies to."""

    coded_width: int
    coded_height: int
    left: int
    right: int
    top: int
    bottom: int

    @property
    def display_width(self) -> int:
        return self.coded_width - self.left - self.right

    @property
    def display_height(self) -> int:
        return self.coded_height - self.top - self.bottom

    @property
    def region(self) -> tuple[float, float]:
        """(height, width) of the displayed picture as fractions of the coded one (``Clip.roi``)."""
        return self.display_height / self.coded_height, self.display_width / self.coded_width

    @property
    def only_padding(self) -> bool:
        """Cropped at the bottom/right only: the display area starts at the top-left corner."""
        return self.left == 0 and self.top == 0 and (self.right or self.bottom) > 0


@dataclass(frozen=True)
class Uncropped:
    """A configuration record (avcC/hvcC) with its SPSs uncropped, and what packets need to match it."""

    extradata: bytes
    crop: Crop
    length_size: int  # bytes of each NAL unit's length prefix in the packets


class _Bits:
    """Reads an RBSP bit by bit (Exp-Golomb codes included), remembering its position."""

    def __init__(self, rbsp: bytes) -> None:
        self.data, self.pos = rbsp, 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]  # IndexError past the end: a truncated SPS
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def escape(rbsp: bytes) -> bytes:
    """RBSP -> NAL payload: 03 inserted wherever two zero bytes precede a byte <= 03."""
    out = bytearray()
    zeros = 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


# --- where the cropping is --------------------------------------------------------------------------

def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt != 0:
            nxt = (last + bits.se() + 256) % 256
        last = nxt or last


def _h264_format(bits: _Bits) -> tuple[int, int, bool]:
    """Parses an H.264 SPS RBSP (after the NAL header) past its format fields; (chroma_format_idc, luma bit
    depth, separate colour planes)."""
    profile_idc = bits.u(8)
    bits.u(16)  # constraint flags, reserved bits, level_idc
    bits.ue()  # seq_parameter_set_id
    chroma_format_idc, depth, separate_planes = 1, 8, 0
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        separate_planes = bits.u(1) if chroma_format_idc == 3 else 0
        depth = bits.ue() + 8
        bits.ue()  # bit_depth_chroma_minus8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    return chroma_format_idc, depth, bool(separate_planes)


def _h264_crop_fields(bits: _Bits) -> tuple[Crop, int, int]:
    """Parses an H.264 SPS RBSP (after the NAL header) up to its cropping; (crop, bit position of
    frame_cropping_flag, bit position after the crop offsets)."""
    chroma_format_idc, _, separate_planes = _h264_format(bits)
    # each colour plane of a 4:4:4 stream coded as monochrome: crop units of 1
    crop, flag_at, end, _ = _h264_crop_after_format(bits, 0 if separate_planes else chroma_format_idc)
    return crop, flag_at, end


def _h264_crop_after_format(bits: _Bits, chroma_format_idc: int) -> tuple[Crop, int, int, bool]:
    """``_h264_crop_fields`` from where ``_h264_format`` stopped, and whether every picture is a frame
    (``frame_mbs_only_flag``: no field or MBAFF coding)."""
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        bits.u(1)
        bits.se(), bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_map_units = bits.ue() + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    bits.u(1)  # direct_8x8_inference_flag
    flag_at = bits.pos
    left = right = top = bottom = 0
    if bits.u(1):
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
    unit_x = 2 if chroma_format_idc in (1, 2) else 1
    unit_y = (2 if chroma_format_idc == 1 else 1) * (2 - frame_mbs_only)
    crop = Crop(width_mbs * 16, height_map_units * 16 * (2 - frame_mbs_only),
                left * unit_x, right * unit_x, top * unit_y, bottom * unit_y)
    return crop, flag_at, bits.pos, bool(frame_mbs_only)


#: H.264 Table E-1: the sample aspect ratio of each aspect_ratio_idc below Extended_SAR (255); 0 is unspecified
_SAMPLE_ASPECT = ((0, 1), (1, 1), (12, 11), (10, 11), (16, 11), (40, 33), (24, 11), (20, 11), (32, 11), (80, 33),
                  (18, 11), (15, 11), (64, 33), (160, 99), (4, 3), (3, 2), (2, 1))
_EXTENDED_SAR = 255


@dataclass(frozen=True)
class SpsSignal:
    """What an H.264 SPS says about its pictures, as FFmpeg's decoder reports it once it has decoded a picture:
    the pixel format, the displayed size, the VUI's sample aspect ratio, range and colour description
    (``None`` where the SPS leaves them to the container)."""

    chroma_format_idc: int
    bit_depth: int
    full_range: bool | None  # video_full_range_flag, where video_signal_type is present
    primaries: int | None  # colour_description: H.273 code points, as FFmpeg's AVColor* enums number them
    transfer: int | None
    matrix: int | None
    crop: Crop | None = None  # the coded size and its cropping
    nal: bytes = b""  # the SPS NAL unit itself (header included)
    #: (width, height) of a sample, where aspect_ratio_info is present; (0, 1) for "unspecified"
    sample_aspect: tuple[int, int] | None = None
    frames_only: bool = True  # frame_mbs_only_flag: no field or MBAFF pictures, so FFmpeg calls it progressive

    def pix_fmt(self, container_full_range: bool, container_matrix: int | None) -> str | None:
        """FFmpeg's H.264 decoder's output format (``get_pixel_format``), the container's range and matrix
        standing in where the SPS says none; ``None`` for the formats it names otherwise (monochrome,
        RGB-coded 4:4:4, 9/12/14 bits): those are left to FFmpeg."""
        chroma = {1: "420", 2: "422", 3: "444"}.get(self.chroma_format_idc)
        matrix = self.matrix if self.matrix is not None else container_matrix
        if chroma is None or (chroma == "444" and matrix == 0):
            return None
        full = self.full_range if self.full_range is not None else container_full_range
        if self.bit_depth == 8:
            return f"yuv{'j' if full else ''}{chroma}p"
        if self.bit_depth == 10:
            return f"yuv{chroma}p10le"
        return None

    @property
    def display_size(self) -> tuple[int, int] | None:
        """(width, height) after cropping, as FFmpeg's decoder sets them; ``None`` where its cropping leaves
        no picture (FFmpeg rejects such an SPS)."""
        crop = self.crop
        if crop is None or crop.display_width <= 0 or crop.display_height <= 0:
            return None
        return crop.display_width, crop.display_height


@functools.lru_cache(maxsize=256)
def avcc_signal(extradata: bytes) -> SpsSignal | None:
    """The SPS of an avcC record, read through its VUI's colour description; ``None`` where there is no record,
    it holds no SPS or several (FFmpeg's decoder uses the one its PPS names, the last of an id), or the SPS does
    not parse. Cached: a quick open asks before the probe does, and one camera's videos share their record."""
    if len(extradata) < 7 or extradata[0] != 1 or extradata[5] & 0x1F != 1:
        return None
    read = _record_nals(extradata, 6, 1)
    if read is None or not read[0] or not _is_sps(read[0][0], "h264"):
        return None
    bits = _Bits(unescape(read[0][0][1:]))
    try:
        chroma_format_idc, depth, separate_planes = _h264_format(bits)
        crop, _, _, frames_only = _h264_crop_after_format(bits, chroma_format_idc)  # to the VUI
        full_range = primaries = transfer = matrix = None
        sample_aspect = None
        if bits.u(1):  # vui_parameters_present_flag (E.1.1)
            if bits.u(1):  # aspect_ratio_info_present_flag
                idc = bits.u(8)
                if idc == _EXTENDED_SAR:
                    sample_aspect = bits.u(16), bits.u(16)
                elif idc < len(_SAMPLE_ASPECT):
                    sample_aspect = _SAMPLE_ASPECT[idc]
            if bits.u(1):  # overscan_info_present_flag
                bits.u(1)
            if bits.u(1):  # video_signal_type_present_flag
                bits.u(3)  # video_format
                full_range = bool(bits.u(1))
                if bits.u(1):  # colour_description_present_flag
                    primaries, transfer, matrix = bits.u(8), bits.u(8), bits.u(8)
    except (IndexError, ValueError):
        return None
    if separate_planes:
        return None
    return SpsSignal(chroma_format_idc, depth, full_range, primaries, transfer, matrix, crop, read[0][0],
                     sample_aspect, frames_only)


def _hevc_crop_fields(bits: _Bits) -> tuple[Crop, int, int]:
    """Parses an HEVC SPS RBSP (after the 2-byte NAL header) up to its conformance window (7.3.2.2)."""
    bits.u(4)  # sps_video_parameter_set_id
    sub_layers = bits.u(3)  # sps_max_sub_layers_minus1
    bits.u(1)  # sps_temporal_id_nesting_flag
    bits.u(88), bits.u(8)  # general profile (space, tier, idc, compatibility, constraints) and level
    present = [(bits.u(1), bits.u(1)) for _ in range(sub_layers)]
    if sub_layers > 0:
        for _ in range(sub_layers, 8):
            bits.u(2)  # reserved_zero_2bits
    for profile, level in present:
        if profile:
            bits.u(88)
        if level:
            bits.u(8)
    bits.ue()  # sps_seq_parameter_set_id
    chroma_format_idc = bits.ue()
    if chroma_format_idc == 3 and bits.u(1):  # separate_colour_plane_flag
        chroma_format_idc = 0
    width, height = bits.ue(), bits.ue()
    flag_at = bits.pos
    left = right = top = bottom = 0
    if bits.u(1):  # conformance_window_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
    unit_x = 2 if chroma_format_idc in (1, 2) else 1
    unit_y = 2 if chroma_format_idc == 1 else 1
    return Crop(width, height, left * unit_x, right * unit_x, top * unit_y, bottom * unit_y), flag_at, bits.pos


_CROP_FIELDS = {"h264": _h264_crop_fields, "hevc": _hevc_crop_fields}


def _is_sps(nal: bytes, codec: str) -> bool:
    """A sequence parameter set of the base layer (an HEVC SPS of another layer has other syntax; NVDEC
    decodes the base layer only, so those are left as they are)."""
    if len(nal) < _HEADER_BYTES[codec]:
        return False
    if codec == "h264":
        return nal[0] & 0x1F == _SPS_TYPE["h264"]
    layer = ((nal[0] & 1) << 5) | (nal[1] >> 3)
    return (nal[0] >> 1) & 0x3F == _SPS_TYPE["hevc"] and layer == 0


def sps_crop(nal: bytes, codec: str = "h264") -> Crop:
    """The cropping of an SPS NAL unit (header included); ``ValueError`` if it cannot be parsed."""
    if codec not in _CROP_FIELDS or not _is_sps(nal, codec):
        raise ValueError(f"not an {_NAMES.get(codec, codec)} sequence parameter set")
    try:
        crop, _, _ = _CROP_FIELDS[codec](_Bits(unescape(nal[_HEADER_BYTES[codec]:])))
    except IndexError:
        raise ValueError(f"truncated {_NAMES[codec]} sequence parameter set") from None
    return crop


# --- rewriting -------------------------------------------------------------------------------------

def uncropped_sps(nal: bytes, codec: str = "h264") -> tuple[bytes, Crop] | None:
    """``nal`` (an SPS with its header) rewritten with the cropping flag 0, and the cropping it had;
    ``None`` when there is nothing to drop or the cropping is not bottom/right padding."""
    if codec not in _CROP_FIELDS or not _is_sps(nal, codec):
        return None
    head = _HEADER_BYTES[codec]
    rbsp = unescape(nal[head:])
    try:
        crop, flag_at, after = _CROP_FIELDS[codec](_Bits(rbsp))
    except (IndexError, ValueError):
        return None
    if not crop.only_padding:
        return None
    total = len(rbsp) * 8
    while total > after and not (rbsp[(total - 1) >> 3] >> (7 - ((total - 1) & 7))) & 1:
        total -= 1  # back over the alignment zeros to the rbsp_stop_one_bit
    if total <= after:
        return None  # no stop bit after the crop offsets: not a well-formed SPS
    reader = _Bits(rbsp)
    out: list[int] = [reader.u(1) for _ in range(flag_at)]
    out.append(0)  # frame_cropping_flag / conformance_window_flag
    reader.pos = after
    out.extend(reader.u(1) for _ in range(total - 1 - after))  # the rest, without the stop bit
    out.append(1)
    out.extend([0] * (-len(out) % 8))
    new_rbsp = bytes(int("".join(map(str, out[i:i + 8])), 2) for i in range(0, len(out), 8))
    return nal[:head] + escape(new_rbsp), crop


def _uncrop_all(nals: list[bytes], codec: str) -> tuple[list[bytes], Crop] | None:
    """Every SPS among ``nals`` uncropped (others unchanged); ``None`` unless there are SPSs and all crop alike."""
    crops: set[Crop] = set()
    out = []
    for nal in nals:
        if _is_sps(nal, codec):
            done = uncropped_sps(nal, codec)
            if done is None:
                return None
            nal = done[0]
            crops.add(done[1])
        out.append(nal)
    return (out, crops.pop()) if len(crops) == 1 else None


def _record_nals(record: bytes, pos: int, count: int) -> tuple[list[bytes], int] | None:
    """``count`` NAL units of a configuration record from ``pos``, each behind a 2-byte length, and the
    position after them; ``None`` if the record ends early."""
    nals = []
    for _ in range(count):
        size = int.from_bytes(record[pos:pos + 2], "big")
        nals.append(record[pos + 2:pos + 2 + size])
        if len(nals[-1]) != size:
            return None
        pos += 2 + size
    return nals, pos


def _record_bytes(nals: list[bytes]) -> bytes:
    return b"".join(len(n).to_bytes(2, "big") + n for n in nals)


def _hvcc_arrays(extradata: bytes) -> tuple[list[tuple[bytes, int, list[bytes]]], int] | None:
    """An hvcC record's NAL unit arrays (VPS, SPS, PPS, SEI) as (3-byte array header, NAL unit type, units),
    and where the arrays end; ``None`` where it is not one or ends early."""
    if len(extradata) < 23 or extradata[0] != 1:
        return None
    pos, arrays = 23, []
    for _ in range(extradata[22]):
        if pos + 3 > len(extradata):
            return None
        head = extradata[pos:pos + 3]
        read = _record_nals(extradata, pos + 3, int.from_bytes(head[1:], "big"))
        if read is None:
            return None
        nals, pos = read
        arrays.append((head, head[0] & 0x3F, nals))
    return arrays, pos


def hvcc_sps(extradata: bytes) -> list[bytes] | None:
    """The SPS NAL units of an hvcC record; ``None`` where it is not one or ends early."""
    read = _hvcc_arrays(extradata)
    return None if read is None else [nal for _, kind, nals in read[0] if kind == _SPS_TYPE["hevc"] for nal in nals]


def _uncrop_avcc(extradata: bytes) -> Uncropped | None:
    if len(extradata) < 7 or extradata[0] != 1:
        return None  # not avcC (Annex B extradata of MPEG-TS, or none)
    read = _record_nals(extradata, 6, extradata[5] & 0x1F)
    if read is None:
        return None
    nals, pos = read
    done = _uncrop_all(nals, "h264")
    if done is None:
        return None
    # the PPSs (and the high-profile tail) after the SPSs stay as they are
    return Uncropped(extradata[:6] + _record_bytes(done[0]) + extradata[pos:], done[1], (extradata[4] & 3) + 1)


def _uncrop_hvcc(extradata: bytes) -> Uncropped | None:
    read = _hvcc_arrays(extradata)
    if read is None:
        return None
    arrays, pos = read
    out, crop = bytearray(extradata[:23]), None
    for head, kind, nals in arrays:
        out += head
        if kind == _SPS_TYPE["hevc"]:
            done = _uncrop_all(nals, "hevc")
            if done is None or (crop is not None and done[1] != crop):
                return None
            nals, crop = done
        out += _record_bytes(nals)
    if crop is None:
        return None
    return Uncropped(bytes(out) + extradata[pos:], crop, (extradata[21] & 3) + 1)


@functools.lru_cache(maxsize=256)
def uncrop_config(codec: str, extradata: bytes) -> Uncropped | None:
    """The configuration record (avcC for H.264, hvcC for HEVC) with every SPS uncropped; ``None`` where
    there is nothing to drop, the record cannot be parsed, or its SPSs crop differently. Remembered per
    record: one camera's videos share theirs, and the bit-level rewrite in Python held the GIL for 6 % of the
    prepare threads' GIL time on the H100 (stop 17 profile)."""
    try:
        if codec == "h264":
            return _uncrop_avcc(extradata)
        if codec == "hevc":
            return _uncrop_hvcc(extradata)
    except IndexError:
        return None
    return None


def uncrop_packet(data: bytes, codec: str, expected: Crop, length_size: int = 4) -> bytes:
    """A length-prefixed (MP4) packet with any in-band SPS uncropped; other data unchanged.

    ``ValueError`` for an in-band SPS whose picture or cropping differs from ``expected`` (the
    configuration record's), and for a packet that is not a whole number of length-prefixed NAL units
    (trailing zero bytes aside): an SPS in it could not be seen, and the clip's region of interest would
    not fit its frames. The caller keeps the stream's cropping then.
    """
    # One walk over the length prefixes reading only NAL headers: a keyframe is mostly slice data, copied
    # only where an SPS is replaced (copying every NAL was a twentieth of the prepare threads' GIL time).
    pos, end, header, sps = 0, len(data), _HEADER_BYTES[codec], []
    while pos + length_size <= end:
        size = int.from_bytes(data[pos:pos + length_size], "big")
        start = pos + length_size
        if size == 0 or start + size > end:
            break
        if size >= header and _is_sps(data[start:start + header], codec):
            sps.append((start, size))
        pos = start + size
    if data[pos:].strip(b"\0"):
        raise ValueError(f"a packet is not made of {length_size}-byte length-prefixed NAL units")
    if not sps:
        return data
    parts, done_to = [], 0
    for start, size in sps:
        done = uncropped_sps(data[start:start + size], codec)
        if done is None or done[1] != expected:
            raise ValueError("an SPS inside the stream crops the picture unlike the stream's configuration "
                             "record")
        parts += [data[done_to:start - length_size], len(done[0]).to_bytes(length_size, "big"), done[0]]
        done_to = start + size
    parts.append(data[done_to:])
    return b"".join(parts)
