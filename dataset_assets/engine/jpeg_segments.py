"""A JPEG's marker segments before its first scan, walked without decoding anything.

Why one walk: the XMP reader (opt-outs in APP1) and the stored-image size check (the frame
header) both need the segments, and a hand-written walk over untrusted bytes is easy to get
subtly wrong twice.
"""

from __future__ import annotations

from collections.abc import Iterator

CORRUPT = -1  # the marker yielded last when the bytes stop looking like JPEG segments
_NO_LENGTH = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # TEM, SOI, RST0..7
_END = frozenset({0xD9, 0xDA})  # end of image, start of scan: metadata comes before


def jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, payload start, payload end) of each segment after SOI, up to the first scan.

    The end may lie past ``len(data)`` for a truncated segment (slicing clips it). Ends with
    ``(CORRUPT, pos, pos)`` where the bytes are not a marker or a length is impossible.
    """
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            yield CORRUPT, pos, pos
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        if marker in _END:
            return
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            yield CORRUPT, pos, pos
            return
        yield marker, pos + 4, pos + 2 + length
        pos += 2 + length
