"""H.264 sequence parameter sets without frame cropping, so DALI reuses its hardware decoders.

H.264 codes pictures in 16-pixel macroblocks: 1080p is coded as 1088 rows and its SPS crops 8 away for
display (2.7K: 1536 -> 1530). DALI 2.4 caches NVDEC decoders but files each one under its *display*
height while looking it up by the *coded* height, so for such a stream the lookup never matches: every
DALI sample of 1080p H.264 -- the commonest drone format -- creates a new hardware decoder (50-70 ms on
an H100) and the cache fills with unused ones. A clip whose SPS says "no cropping" is decoded to the
full coded size, is filed and found under 1088, and the decoder is reused; the sampler crops the extra
rows itself (a region of interest in the resize, ``Clip.roi``). Cropping only selects the output
rectangle, so the decoded pixels inside it are exactly those of the original stream.

Only crops at the bottom and right are dropped (the encoder's padding); a stream cropped at the top or
left is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

#: profile_idc values whose SPS carries chroma format, bit depths and scaling matrices (H.264 7.3.2.1.1)
_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}
_SPS = 7


@dataclass(frozen=True)
class Crop:
    """An SPS's frame cropping in luma pixels and the coded picture size it applies to."""

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
    def only_padding(self) -> bool:
        """Cropped at the bottom/right only: the display area starts at the top-left corner."""
        return self.left == 0 and self.top == 0 and (self.right or self.bottom) > 0


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


def unescape(payload: bytes) -> bytes:
    """NAL payload -> RBSP: the emulation prevention byte of every 00 00 03 removed."""
    out = bytearray()
    zeros = 0
    for b in payload:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


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


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt != 0:
            nxt = (last + bits.se() + 256) % 256
        last = nxt or last


def _crop_fields(bits: _Bits) -> tuple[Crop, int, int]:
    """Parses an SPS RBSP (after the NAL header) up to its cropping; (crop, bit position of
    frame_cropping_flag, bit position after the crop offsets)."""
    profile_idc = bits.u(8)
    bits.u(16)  # constraint flags, reserved bits, level_idc
    bits.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        separate_planes = bits.u(1) if chroma_format_idc == 3 else 0
        bits.ue(), bits.ue()  # bit depths
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
        if separate_planes:
            chroma_format_idc = 0  # each colour plane coded as monochrome: crop units of 1
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
    return crop, flag_at, bits.pos


def sps_crop(nal: bytes) -> Crop:
    """The cropping of an SPS NAL unit (header byte included); ``ValueError`` if it cannot be parsed."""
    if not nal or nal[0] & 0x1F != _SPS:
        raise ValueError("not an H.264 sequence parameter set")
    try:
        crop, _, _ = _crop_fields(_Bits(unescape(nal[1:])))
    except IndexError:
        raise ValueError("truncated H.264 sequence parameter set") from None
    return crop


def uncropped_sps(nal: bytes) -> tuple[bytes, Crop] | None:
    """``nal`` (an SPS with header byte) rewritten with ``frame_cropping_flag = 0``, and the cropping it
    had; ``None`` when there is nothing to drop or the cropping is not bottom/right padding."""
    if not nal or nal[0] & 0x1F != _SPS:
        return None
    rbsp = unescape(nal[1:])
    try:
        crop, flag_at, after = _crop_fields(_Bits(rbsp))
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
    out.append(0)  # frame_cropping_flag
    reader.pos = after
    out.extend(reader.u(1) for _ in range(total - 1 - after))  # VUI and the rest, without the stop bit
    out.append(1)
    out.extend([0] * (-len(out) % 8))
    new_rbsp = bytes(int("".join(map(str, out[i:i + 8])), 2) for i in range(0, len(out), 8))
    return nal[:1] + escape(new_rbsp), crop


def uncrop_avcc(extradata: bytes) -> tuple[bytes, Crop] | None:
    """An ``avcC`` record with every SPS uncropped, and their cropping; ``None`` if there is none to drop,
    the record cannot be parsed, or its SPSs crop differently."""
    if len(extradata) < 7 or extradata[0] != 1:
        return None  # not avcC (Annex B extradata of MPEG-TS, or none)
    out = bytearray(extradata[:5])
    pos = 5
    count = extradata[pos] & 0x1F
    out.append(extradata[pos])
    pos += 1
    crops: set[Crop] = set()
    try:
        for _ in range(count):
            size = int.from_bytes(extradata[pos:pos + 2], "big")
            nal = extradata[pos + 2:pos + 2 + size]
            if len(nal) != size:
                return None
            done = uncropped_sps(nal)
            if done is None:
                return None
            out += len(done[0]).to_bytes(2, "big") + done[0]
            crops.add(done[1])
            pos += 2 + size
    except IndexError:
        return None
    if len(crops) != 1:
        return None
    out += extradata[pos:]  # the PPSs (and the high-profile tail) unchanged
    return bytes(out), crops.pop()


def uncrop_packet(data: bytes, expected: Crop) -> bytes:
    """An MP4 (4-byte length-prefixed) H.264 packet with any in-band SPS uncropped; other data unchanged.

    ``ValueError`` for an in-band SPS whose picture or cropping differs from ``expected`` (the
    configuration record's): the clip's region of interest would not fit its frames.
    """
    pos, parts, changed = 0, [], False
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        nal = data[pos + 4:pos + 4 + size]
        if size == 0 or len(nal) != size:
            return data  # not length-prefixed as expected: leave it alone
        if nal[0] & 0x1F == _SPS:
            done = uncropped_sps(nal)
            if done is None or done[1] != expected:
                raise ValueError("an SPS inside the stream crops the picture unlike the stream's configuration "
                                 "record")
            nal, changed = done[0], True
        parts.append(len(nal).to_bytes(4, "big") + nal)
        pos += 4 + size
    if pos != len(data) or not changed:
        return data
    return b"".join(parts)
