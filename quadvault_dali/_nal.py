"""H.264/HEVC bitstream basics shared by the prober and the clip cutter: NAL unit framing (length prefixes or
start codes), unit types, SEI payload types, and the emulation-prevention bytes."""

from __future__ import annotations

#: film grain characteristics: a SEI message that persists and changes later pictures' output
FILM_GRAIN_SEI = 19
#: display orientation: a SEI message that turns the pictures (FFmpeg attaches it to decoded frames)
DISPLAY_ORIENTATION_SEI = 47
#: the NAL unit types that carry SEI messages
SEI_UNITS = {"h264": frozenset({6}), "hevc": frozenset({39, 40})}


def nal_headers(data: bytes, length_size: int | None) -> list[int]:
    """Offsets of the NAL unit headers in an H.264/HEVC packet framed as its stream says (``length_size_of``);
    none where the packet does not parse so: a guess could take a unit's length of 256-511 bytes (00 00 01 xx)
    for a start code and its last byte for a header."""
    return [start for start, end in nal_units(data, length_size) or [] if end > start]


def nal_type(header: int, codec: str) -> int:
    return header & 0x1F if codec == "h264" else (header >> 1) & 0x3F


def length_size_of(codec: str, extradata: bytes) -> int | None:
    """Bytes of each NAL unit's length prefix, from an avcC/hvcC record; ``None``: the packets are Annex B
    (start codes, as MPEG-TS carries them). Told apart as FFmpeg's decoders do: avcC starts with 1; an hvcC
    record (whose version some old writers left 0) is anything not starting with a start code."""
    if codec == "h264" and len(extradata) >= 7 and extradata[0] == 1:
        return (extradata[4] & 3) + 1
    if codec == "hevc" and len(extradata) >= 23 and (extradata[0] or extradata[1] or extradata[2] > 1):
        return (extradata[21] & 3) + 1
    return None


def nal_units(data: bytes, length_size: int | None) -> list[tuple[int, int]] | None:
    """(start, end) of each NAL unit of a packet framed as the stream says; ``None`` where length prefixes
    do not tile the packet (zero bytes after the last unit aside). Never guesses the framing: a length of
    256-511 bytes is ``00 00 01 xx``, a start code to a search."""
    units: list[tuple[int, int]] = []
    if length_size is None:
        at = data.find(b"\0\0\1")
        while at >= 0:
            nxt = data.find(b"\0\0\1", at + 3)
            units.append((at + 3, len(data) if nxt < 0 else nxt))
            at = nxt
        return units
    pos = 0
    while pos + length_size <= len(data):
        size = int.from_bytes(data[pos:pos + length_size], "big")
        if size == 0:
            break
        if pos + length_size + size > len(data):
            return None
        units.append((pos + length_size, pos + length_size + size))
        pos += length_size + size
    return units if not data[pos:].strip(b"\0") else None


def sei_types(payload: bytes) -> set[int]:
    """The payload types of a SEI NAL unit's messages (its payload after the header); where they cannot be
    read, film grain's, so the caller keeps the unit."""
    rbsp, pos, types = unescape(payload), 0, set()
    try:
        while pos < len(rbsp) and not (rbsp[pos] == 0x80 and not rbsp[pos + 1:].strip(b"\0")):
            values = []
            for _ in range(2):  # payload type, then payload size: runs of 0xFF plus a last byte
                value = 0
                while rbsp[pos] == 0xFF:
                    value, pos = value + 255, pos + 1
                values.append(value + rbsp[pos])
                pos += 1
            types.add(values[0])
            pos += values[1]
    except IndexError:
        return {FILM_GRAIN_SEI}
    return types


def unescape(payload: bytes) -> bytes:
    """NAL payload -> RBSP: the emulation prevention byte of every 00 00 03 removed. ``bytes.replace`` resumes its
    search after each match, just as the byte-by-byte rule starts counting zeros again after a removed 03; a
    Python loop over an x264 SEI (its settings string, ~700 bytes) cost 0.1 ms on every probe and cut."""
    return payload.replace(b"\x00\x00\x03", b"\x00\x00") if b"\x00\x00\x03" in payload else payload
