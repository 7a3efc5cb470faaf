"""What an H.264/HEVC packet's NAL units say about cutting runs for the decoders, read without decoding:
which pictures nothing references (exact runs may leave them out), which keyframes reset the picture order
(a run may start a clip after another), and relabelling an HEVC CRA as a BLA so open-GOP runs can follow
each other."""

from __future__ import annotations

import av

from .._nal import FILM_GRAIN_SEI as _FILM_GRAIN_SEI, SEI_UNITS as _SEI, length_size_of, nal_headers as _nal_headers
from .._nal import nal_type as _nal_type, nal_units as _nal_units, sei_types as _sei_types
from ._uncrop import hvcc_sps


def _first_picture_type(data: bytes, codec: str, length_size: int | None) -> int | None:
    """NAL unit type of the first coded picture in an H.264/HEVC packet (MP4 length-prefixed or Annex B)."""
    for at in _nal_headers(data, length_size):
        kind = _nal_type(data[at], codec)
        if (codec == "h264" and 1 <= kind <= 5) or (codec == "hevc" and kind < 32):
            return kind
    return None


def opens_cleanly(run_start: bytes, codec: str, length_size: int | None) -> bool:
    """Whether a keyframe resets the decoder's picture order: an H.264 IDR, an HEVC IDR or BLA; not an HEVC
    CRA (open GOP) or an H.264 non-IDR keyframe (nor a packet that does not parse). Other codecs' keyframes
    always do."""
    if codec not in ("h264", "hevc"):
        return True
    kind = _first_picture_type(run_start, codec, length_size)
    return kind == 5 if codec == "h264" else kind is not None and 16 <= kind <= 20


_HEVC_CRA, _HEVC_BLA_N_LP = 21, 18


def clean_start(data: bytes, codec: str, length_size: int | None) -> bytes:
    """An HEVC CRA keyframe relabelled as BLA_N_LP, as a splicer does; other data unchanged.

    A CRA (open-GOP keyframe, what x265 and some cameras write) continues the picture order count of
    what came before it, so CRA runs back to back in one clip came out of the decoder in the wrong order,
    and each had to be a DALI sample of its own: one 4K frame per decoder set-up. A BLA starts a new
    coded video sequence like an IDR but keeps the CRA's slice-header syntax, so only the NAL unit type
    changes. "No leading pictures" holds: runs never keep the pictures presented before their keyframe.
    """
    if codec != "hevc":
        return data
    cras = [at for at in _nal_headers(data, length_size) if _nal_type(data[at], codec) == _HEVC_CRA]
    if not cras:
        return data
    out = bytearray(data)
    for at in cras:
        out[at] = (out[at] & 0x81) | (_HEVC_BLA_N_LP << 1)
    return bytes(out)


#: HEVC's sub-layer non-reference picture types (TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N, reserved _N)
_HEVC_UNREFERENCED = frozenset({0, 2, 4, 6, 8, 10, 12, 14})
#: What else a skipped picture's packet may hold: nothing a later picture reads. H.264: access unit delimiter,
#: SEI, filler (never parameter sets, which may be re-sent with new content mid-GOP, nor end of sequence);
#: HEVC: access unit delimiter, filler, prefix and suffix SEI.
_H264_SKIPPABLE_NON_SLICE = frozenset({6, 9, 12})
_HEVC_SKIPPABLE_NON_SLICE = frozenset({35, 38, 39, 40})


def one_temporal_layer(stream: av.video.stream.VideoStream) -> bool:
    """Whether an HEVC stream says (in its hvcC record, or its SPSs where the record leaves the count unknown)
    that it has one temporal sub-layer: then a sub-layer non-reference picture is referenced by no picture
    at all. ``False`` where it does not say."""
    data = bytes(stream.codec_context.extradata or b"")
    if stream.codec_context.name != "hevc" or len(data) < 23 or data[0] != 1:
        return False
    layers = (data[21] >> 3) & 7  # numTemporalLayers: 0 unknown, 1 not temporally scalable
    if layers:
        return layers == 1
    spss = hvcc_sps(data)  # sps_max_sub_layers_minus1: the 3 bits after the 4-bit VPS id
    return bool(spss) and all(len(sps) > 2 and (sps[2] >> 1) & 7 == 0 for sps in spss)  # type: ignore[union-attr]


def nal_length_size(stream: av.video.stream.VideoStream) -> int | None:
    """Bytes of each NAL unit's length prefix in ``stream``'s packets (``length_size_of``)."""
    return length_size_of(stream.codec_context.name, bytes(stream.codec_context.extradata or b""))


def unreferenced(data: bytes, codec: str, length_size: int | None, single_layer: bool = False) -> bool:
    """Whether no other picture is predicted from this packet's picture and nothing else in the packet is
    read later, so a decoder may skip it: H.264 slices with ``nal_ref_idc`` 0; HEVC sub-layer non-reference
    slices of a one-layer stream (``single_layer``); beside them only delimiters, filler and SEI (film grain
    aside), never parameter sets. Exact mode drops such pictures between a keyframe and the wanted frame
    (x264's B-frames, x265's and hardware encoders' TRAIL_N: about half of an HEVC GOP prefix in the
    benchmark's 2160p clips), so the decoder does less of the work it was the limit on. ``False`` when
    unsure (a packet that does not parse as its stream's framing says, ``nal_length_size``)."""
    if codec not in _SEI or (codec == "hevc" and not single_layer):
        return False
    units = _nal_units(data, length_size)
    if not units:
        return False
    slices = 0
    for start, end in units:
        header = 1 if codec == "h264" else 2
        if end - start < header:
            return False
        first = data[start]
        if codec == "h264":
            kind = first & 0x1F
            if 1 <= kind <= 4:
                if first & 0x60:  # nal_ref_idc: referenced
                    return False
                slices += 1
                continue
            if kind not in _H264_SKIPPABLE_NON_SLICE:
                return False
        else:
            kind = (first >> 1) & 0x3F
            if kind < 32:
                if kind not in _HEVC_UNREFERENCED:
                    return False
                slices += 1
                continue
            if kind not in _HEVC_SKIPPABLE_NON_SLICE:
                return False
        if kind in _SEI[codec] and _FILM_GRAIN_SEI in _sei_types(data[start + header:end]):
            return False
    return slices > 0
