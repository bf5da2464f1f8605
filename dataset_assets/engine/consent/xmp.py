"""IPTC/PLUS ``plus:DataMining`` in an image's own XMP, read from the bytes before decoding.

Why before decoding: an image whose owner wrote "no AI/ML training" into it is refused like a
robots.txt opt-out, and costs no decode. Why no XML parser: the bytes are untrusted (entity
expansion, deep nesting); the property has three spellings in RDF/XML (an attribute
``plus:DataMining="…"``, an element ``<plus:DataMining>…</plus:DataMining>`` and an empty element
``<plus:DataMining rdf:resource="…"/>``) which bounded regular expressions find exactly.

What is scanned: the XMP packets where each format keeps them, found by walking the container
(never the compressed image data): JPEG APP1 segments before the first scan (the main packet
``http://ns.adobe.com/xap/1.0/`` and the chunks of an extended one), PNG ``iTXt`` chunks with the
keyword ``XML:com.adobe.xmp`` (zlib-compressed ones too, inflated to at most
:data:`MAX_PACKET_BYTES`), WebP's ``XMP `` RIFF chunk (which sits after the image data). Any
other format (GIF, TIFF, AVIF/HEIF...) is searched for an ``<x:xmpmeta`` … ``</x:xmpmeta>``
packet; the body is already capped by ``max_body_bytes``.

The vocabulary (``http://ns.useplus.org/ldf/vocab/``): DMI-UNSPECIFIED, DMI-ALLOWED,
DMI-PROHIBITED-AIMLTRAINING, DMI-PROHIBITED-GENAIMLTRAINING,
DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING, DMI-PROHIBITED, DMI-PROHIBITED-SEECONSTRAINT,
DMI-PROHIBITED-SEEEMBEDDEDRIGHTSEXPR and DMI-PROHIBITED-SEELINKEDRIGHTSEXPR. Every
``DMI-PROHIBITED`` value refuses: a dataset built here is for AI/ML training (often generative),
which all of them exclude or make conditional on terms (``plus:OtherConstraints``, an encoded
rights expression) that no crawler can evaluate, so the safe reading is "no". DMI-ALLOWED,
DMI-UNSPECIFIED and values outside the vocabulary pass.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator

from dataset_assets.engine.jpeg_segments import CORRUPT, jpeg_segments

MAX_PACKET_BYTES = 4 * 1024 * 1024  # of one packet examined (a real one is a few KB)
MAX_PACKETS = 16  # packets examined per image
REFUSING_PREFIX = "DMI-PROHIBITED"
PLUS_NAMESPACE = rb"http://ns\.useplus\.org/ldf/xmp/1\.0/?"

_JPEG_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_JPEG_EXTENDED_XMP = b"http://ns.adobe.com/xmp/extension/\x00"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_XMP_KEYWORD = b"XML:com.adobe.xmp"
_PACKET_START = (b"<x:xmpmeta", b"<x:xapmeta")
_PACKET_END = (b"</x:xmpmeta>", b"</x:xapmeta>")

_PREFIX_DECLARATION = re.compile(rb"xmlns:([A-Za-z_][\w.\-]{0,63})\s*=\s*[\"']" + PLUS_NAMESPACE + rb"[\"']")
_CODE = re.compile(rb"DMI-[A-Z]+(?:-[A-Z]+)*", re.IGNORECASE)
_PROPERTY_PATTERNS: dict[bytes, tuple[re.Pattern[bytes], ...]] = {}


def datamining_refusal(data: bytes) -> str | None:
    """The ``plus:DataMining`` code that refuses this image (e.g. DMI-PROHIBITED-AIMLTRAINING),
    or None when its XMP allows it, leaves it unspecified, or there is no XMP."""
    for count, packet in enumerate(xmp_packets(data)):
        if count >= MAX_PACKETS:
            break
        for code in datamining_values(packet):
            if code.startswith(REFUSING_PREFIX):
                return code
    return None


def datamining_values(packet: bytes) -> list[str]:
    """Every vocabulary code given to ``plus:DataMining`` in one XMP packet, upper-cased."""
    packet = packet[:MAX_PACKET_BYTES]
    prefixes = {b"plus", *_PREFIX_DECLARATION.findall(packet)}
    codes: list[str] = []
    for prefix in prefixes:
        if prefix + b":DataMining" not in packet:
            continue
        for pattern in _patterns(prefix):
            for match in pattern.finditer(packet):
                value = b" ".join(group for group in match.groups() if group)
                codes += [code.decode("ascii").upper() for code in _CODE.findall(value)]
    return codes


def _patterns(prefix: bytes) -> tuple[re.Pattern[bytes], ...]:
    """Attribute, empty-element and element spellings of ``prefix:DataMining`` (all bounded)."""
    if prefix not in _PROPERTY_PATTERNS:
        name = re.escape(prefix) + rb":DataMining"
        _PROPERTY_PATTERNS[prefix] = (
            re.compile(rb"(?<![<\w/:.\-])" + name + rb"\s*=\s*(?:\"([^\"]{0,4096})\"|'([^']{0,4096})')"),
            re.compile(rb"<" + name + rb"\b([^>]{0,4096})/>"),
            re.compile(rb"<" + name + rb"\b([^>]{0,4096}[^>/])?>(.{0,4096}?)</" + name + rb"\s*>", re.DOTALL),
        )
    return _PROPERTY_PATTERNS[prefix]


def xmp_packets(data: bytes) -> Iterator[bytes]:
    """The XMP packets of a JPEG, PNG or WebP (by container), or found by search in others."""
    if data[:3] == b"\xff\xd8\xff":
        yield from _jpeg_packets(data)
    elif data[:8] == _PNG_SIGNATURE:
        yield from _png_packets(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        yield from _webp_packets(data)
    else:
        yield from _searched_packets(data)


def _jpeg_packets(data: bytes) -> Iterator[bytes]:
    extended: dict[int, bytes] = {}
    for marker, start, end in jpeg_segments(data):
        if marker == CORRUPT:
            return  # nothing more to trust
        if marker != 0xE1:
            continue
        payload = data[start:end]
        if payload.startswith(_JPEG_XMP):
            yield payload[len(_JPEG_XMP) :]
        elif payload.startswith(_JPEG_EXTENDED_XMP):
            # GUID (32) + full length (4) + offset (4) + this chunk of the extended packet
            head = len(_JPEG_EXTENDED_XMP) + 32
            if len(payload) >= head + 8:
                (offset,) = struct.unpack_from(">I", payload, head + 4)
                if offset < MAX_PACKET_BYTES:
                    extended[offset] = payload[head + 8 :]
    if extended:
        yield b"".join(extended[offset] for offset in sorted(extended))[:MAX_PACKET_BYTES]


def _png_packets(data: bytes) -> Iterator[bytes]:
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IEND":
            return
        # Only iTXt chunks are read (copied); the image data chunks are skipped over.
        if kind == b"iTXt" and data.startswith(_PNG_XMP_KEYWORD + b"\x00", pos + 8):
            body = data[pos + 8 : pos + 8 + length]
            packet = _itxt_text(body[len(_PNG_XMP_KEYWORD) + 1 :])
            if packet is not None:
                yield packet
        pos += 12 + length  # length, type, data, crc


def _itxt_text(rest: bytes) -> bytes | None:
    """The text of an iTXt chunk after its keyword: flag, method, language, translated keyword."""
    if len(rest) < 2:
        return None
    compressed = rest[0] == 1
    language_end = rest.find(b"\x00", 2)
    translated_end = rest.find(b"\x00", language_end + 1) if language_end >= 0 else -1
    if translated_end < 0:
        return None
    text = rest[translated_end + 1 :]
    if not compressed:
        return text
    try:
        return zlib.decompressobj().decompress(text, MAX_PACKET_BYTES)
    except zlib.error:
        return None


def _webp_packets(data: bytes) -> Iterator[bytes]:
    pos = 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, pos)
        if kind == b"XMP ":
            yield data[pos + 8 : pos + 8 + length]
        pos += 8 + length + (length & 1)  # chunks are padded to an even size


def _searched_packets(data: bytes) -> Iterator[bytes]:
    for start_tag, end_tag in zip(_PACKET_START, _PACKET_END, strict=True):
        start = data.find(start_tag)
        while start >= 0:
            end = data.find(end_tag, start, start + MAX_PACKET_BYTES)
            stop = end + len(end_tag) if end >= 0 else start + MAX_PACKET_BYTES
            yield data[start:stop]
            start = data.find(start_tag, stop)
