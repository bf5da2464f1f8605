"""IPTC/PLUS plus:DataMining in the image's own XMP: real JPEG/PNG/WebP files, served on 127.0.0.1."""

from __future__ import annotations

import struct
import zlib

import pyarrow.parquet as pq
import pytest

from dataset_assets.engine.consent.xmp import datamining_refusal, xmp_packets
from dataset_assets.engine.runner import download_shard
from dataset_assets.engine.shards.layout import compute_key
from dataset_assets_tests.conftest import local_options, rows
from dataset_assets_tests.fakeweb.images import make_image
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

VOCAB = "http://ns.useplus.org/ldf/vocab/"
PLUS = "http://ns.useplus.org/ldf/xmp/1.0/"


def packet(body: str, prefix: str = "plus") -> bytes:
    """An XMP packet as writers lay it out, with ``body`` inside one rdf:Description."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:{prefix}="{PLUS}" xmlns:dc="http://purl.org/dc/elements/1.1/"'
        f"{body}</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()


def attribute_form(code: str, prefix: str = "plus") -> bytes:
    return packet(f' {prefix}:DataMining="{VOCAB}{code}">', prefix)


def element_form(code: str) -> bytes:
    return packet(f"><plus:DataMining>{VOCAB}{code}</plus:DataMining>")


def resource_form(code: str) -> bytes:
    return packet(f'><plus:DataMining rdf:resource="{VOCAB}{code}"/>')


def with_jpeg_xmp(jpeg: bytes, xmp: bytes) -> bytes:
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + xmp
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_png_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    ihdr_end = 8 + 12 + 13  # signature, then IHDR (always 13 bytes of data)
    return png[:ihdr_end] + _png_chunk(kind, data) + png[ihdr_end:]


def with_png_xmp(png: bytes, xmp: bytes, compressed: bool = False) -> bytes:
    text = zlib.compress(xmp) if compressed else xmp
    flag = b"\x01\x00" if compressed else b"\x00\x00"
    return with_png_chunk(png, b"iTXt", b"XML:com.adobe.xmp\x00" + flag + b"\x00\x00" + text)


def with_webp_xmp(webp: bytes, xmp: bytes, width: int, height: int) -> bytes:
    """The extended (VP8X) layout: its header flags XMP, and the XMP chunk follows the image."""
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"
    image_chunks = webp[12:]
    vp8x = bytes([0x04, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    xmp_chunk = b"XMP " + struct.pack("<I", len(xmp)) + xmp + (b"\x00" if len(xmp) % 2 else b"")
    chunks = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x + image_chunks + xmp_chunk
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


REFUSED = {
    "jpg-attribute-aiml.jpg": (
        "jpg",
        attribute_form("DMI-PROHIBITED-AIMLTRAINING"),
        "DMI-PROHIBITED-AIMLTRAINING",
    ),
    "jpg-element-genai.jpg": (
        "jpg",
        element_form("DMI-PROHIBITED-GENAIMLTRAINING"),
        "DMI-PROHIBITED-GENAIMLTRAINING",
    ),
    "png-resource.png": ("png", resource_form("DMI-PROHIBITED"), "DMI-PROHIBITED"),
    "png-attribute-search.png": (
        "png",
        attribute_form("DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING"),
        "DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING",
    ),
    "webp-element-constraint.webp": (
        "webp",
        element_form("DMI-PROHIBITED-SEECONSTRAINT"),
        "DMI-PROHIBITED-SEECONSTRAINT",
    ),
    "jpg-other-prefix.jpg": (
        "jpg",
        attribute_form("DMI-PROHIBITED-AIMLTRAINING", "ldf"),
        "DMI-PROHIBITED-AIMLTRAINING",
    ),
}
ALLOWED = {
    "jpg-allowed.jpg": ("jpg", attribute_form("DMI-ALLOWED")),
    "png-unspecified.png": ("png", element_form("DMI-UNSPECIFIED")),
    "webp-allowed.webp": ("webp", resource_form("DMI-ALLOWED")),
    # the code in another property is not the DataMining property
    "jpg-lookalike.jpg": ("jpg", packet(f"><dc:description>{VOCAB}DMI-PROHIBITED</dc:description>")),
    "jpg-no-xmp.jpg": ("jpg", None),
    "png-no-xmp.png": ("png", None),
    "webp-no-xmp.webp": ("webp", None),
}


def build(fmt: str, xmp: bytes | None, seed: int) -> bytes:
    width, height = 120, 90
    data = make_image(seed, width, height, fmt)
    if xmp is None:
        return data
    if fmt == "jpg":
        return with_jpeg_xmp(data, xmp)
    if fmt == "png":
        return with_png_xmp(data, xmp)
    return with_webp_xmp(data, xmp, width, height)


@pytest.fixture(scope="module")
def xmp_images() -> dict[str, bytes]:
    images = {name: build(fmt, xmp, i) for i, (name, (fmt, xmp, _)) in enumerate(REFUSED.items())}
    images.update({name: build(fmt, xmp, 50 + i) for i, (name, (fmt, xmp)) in enumerate(ALLOWED.items())})
    return images


def _by_row(path: str, shard_id: int, count: int) -> list[dict]:
    by_key = {r["key"]: r for r in pq.read_table(path).to_pylist()}
    return [by_key[compute_key(i, shard_id, 10_000, 5)] for i in range(count)]


def test_datamining_prohibitions_are_refused_and_counted_allowed_ones_stored(xmp_images, tmp_path) -> None:
    names = [*REFUSED, *ALLOWED]
    with ImageServer(images=xmp_images, config=ServerConfig(max_lifetime_s=120)) as server:
        urls = [server.url(name) for name in names]
        stats = download_shard(rows(urls), str(tmp_path / "on"), local_options(output_format="parquet"))
        off = download_shard(
            rows(urls),
            str(tmp_path / "off"),
            local_options(output_format="parquet", respect_xmp_datamining=False),
        )

    got = _by_row(str(tmp_path / "on" / "00000.parquet"), 0, len(names))
    for row, name in zip(got, names, strict=True):
        if name in REFUSED:
            code = REFUSED[name][2]
            assert (row["status"], row["error_message"]) == (
                "failed_to_download",
                f"disallowed by IPTC plus:DataMining ({code}) in the image's XMP",
            ), name
        else:
            assert (row["status"], row["error_message"]) == ("success", None), name
    assert stats.opt_outs == {"xmp-datamining": len(REFUSED)}
    assert stats.successes == len(ALLOWED)
    # With the option off, the same bytes decode and are stored (the files are valid images).
    assert off.successes == len(names) and off.opt_outs == {}


def test_compressed_png_itxt_is_read_and_a_text_chunk_is_not_xmp() -> None:
    png = make_image(7, 40, 30, "png")
    compressed = with_png_xmp(png, element_form("DMI-PROHIBITED-AIMLTRAINING"), compressed=True)
    assert datamining_refusal(compressed) == "DMI-PROHIBITED-AIMLTRAINING"
    # The same words in a tEXt comment are not the image's XMP.
    comment = with_png_chunk(png, b"tEXt", b"Comment\x00" + attribute_form("DMI-PROHIBITED"))
    assert list(xmp_packets(comment)) == [] and datamining_refusal(comment) is None


def test_only_the_xmp_segment_of_a_jpeg_is_read() -> None:
    jpeg = make_image(8, 40, 30, "jpg")
    # A COM segment (a JPEG comment) holding the text is not XMP.
    comment = attribute_form("DMI-PROHIBITED")
    with_comment = jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]
    assert datamining_refusal(with_comment) is None
    both = with_jpeg_xmp(with_comment, resource_form("DMI-PROHIBITED-GENAIMLTRAINING"))
    assert datamining_refusal(both) == "DMI-PROHIBITED-GENAIMLTRAINING"
