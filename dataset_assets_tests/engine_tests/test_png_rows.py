"""The stored-rows copy of a PNG: libpng must make of it exactly what it makes of the file."""

from __future__ import annotations

import struct
import zlib

import cv2
import imagecodecs
import numpy as np
import pytest

from dataset_assets.engine import image, png_rows
from dataset_assets.engine.image import _decode_png, _probe
from dataset_assets.engine.png_rows import stored_rows_png
from dataset_assets_tests.engine_tests.test_image import cv_encode, png_chunk, textured

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 6: 4}


def _chunks(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of each chunk after the signature."""
    out, position = [], 8
    while position < len(raw):
        (length,) = struct.unpack(">I", raw[position : position + 4])
        out.append((raw[position + 4 : position + 8], raw[position + 8 : position + 8 + length]))
        position += 12 + length
    return out


def _assemble(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return SIGNATURE + b"".join(png_chunk(kind, data) for kind, data in chunks)


def _stream(raw: bytes) -> bytes:
    """The zlib stream split over the file's IDAT chunks."""
    return b"".join(data for kind, data in _chunks(raw) if kind == b"IDAT")


def _inflated(raw: bytes) -> bytes:
    """The rows zlib makes of the file's IDAT stream (bytes after its end ignored)."""
    return zlib.decompressobj().decompress(_stream(raw))


def _zlib_header(cmf: int, flags: int = 0) -> bytes:
    """CMF and FLG with the check bits that make them a multiple of 31."""
    head = cmf << 8 | flags
    return struct.pack(">H", head + (31 - head % 31) % 31)


def _row_bytes(raw: bytes) -> int:
    width, height = struct.unpack(">II", raw[16:24])
    return height * (1 + width * CHANNELS[raw[25]])


def _split_idat(raw: bytes, pieces: int, before: bytes = b"", after: bytes = b"") -> bytes:
    """The same file with its zlib stream over ``pieces`` IDAT chunks, ``before`` and ``after``
    (ancillary chunks) around them."""
    chunks = _chunks(raw)
    stream = _stream(raw)
    step = -(-len(stream) // pieces)
    idats = [(b"IDAT", stream[i : i + step]) for i in range(0, len(stream), step)]
    extra_before = _chunks(SIGNATURE + before) if before else []
    extra_after = _chunks(SIGNATURE + after) if after else []
    return _assemble([chunks[0], *extra_before, *idats, *extra_after, (b"IEND", b"")])


def _layouts() -> dict[str, bytes]:
    rgb = textured(300, 400, seed=11)  # 360 300 bytes of rows: five whole stored blocks and a part
    rgba = np.dstack([rgb, np.linspace(0, 255, 300 * 400, dtype=np.uint8).reshape(300, 400)])
    grey = cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY)
    text = png_chunk(b"tEXt", b"Comment\0made by a test")
    gamma = png_chunk(b"gAMA", struct.pack(">I", 45455))
    plain = cv_encode(rgb)
    stream, first = _stream(plain), _chunks(plain)[0]
    return {
        "rgb": plain,
        "rgba": cv_encode(rgba),
        "grey": cv_encode(grey),
        "tiny": cv_encode(rgb[:1, :1]),
        # 2 x (1 + 65534) bytes: exactly two whole stored blocks, the last one final
        "rows filling whole blocks": cv_encode(np.tile(grey[:2, :1], (1, 65534))),
        "many IDATs, ancillary chunks around them": _split_idat(cv_encode(rgb), 37, before=gamma, after=text),
        "empty IDATs in the run": _assemble(
            [
                first,
                (b"IDAT", b""),
                (b"IDAT", stream[:99]),
                (b"IDAT", b""),
                (b"IDAT", stream[99:]),
                (b"IEND", b""),
            ]
        ),
        # libpng only warns about bytes after the stream's end; the copy leaves them out
        "bytes after the zlib stream": _assemble([first, (b"IDAT", stream + b"trailing"), (b"IEND", b"")]),
    }


@pytest.mark.parametrize("layout", list(_layouts()))
def test_the_stored_copy_decodes_to_the_files_own_pixels(layout: str) -> None:
    raw = _layouts()[layout]
    stored = stored_rows_png(raw, _row_bytes(raw))
    assert stored is not None
    # the copy is a well-formed PNG of its own: zlib finds the very same rows in it
    assert _inflated(stored.tobytes()) == _inflated(raw)
    np.testing.assert_array_equal(imagecodecs.png_decode(stored), imagecodecs.png_decode(raw))
    flag = cv2.IMREAD_UNCHANGED if raw[25] == 6 else cv2.IMREAD_COLOR
    expected = cv2.imdecode(np.frombuffer(raw, np.uint8), flag)
    np.testing.assert_array_equal(_decode_png(raw, _probe(raw)), expected)


def _with_idat_crc_flipped(raw: bytes) -> bytes:
    end = raw.index(b"IDAT") + 4 + struct.unpack(">I", raw[raw.index(b"IDAT") - 4 : raw.index(b"IDAT")])[0]
    return raw[:end] + bytes([raw[end] ^ 1]) + raw[end + 1 :]


def _with_height(raw: bytes, height: int) -> bytes:
    chunks = _chunks(raw)
    header = chunks[0][1][:4] + struct.pack(">I", height) + chunks[0][1][8:]
    return _assemble([(b"IHDR", header), *chunks[1:]])


def _with_stream(raw: bytes, stream: bytes) -> bytes:
    chunks = _chunks(raw)
    return _assemble([chunks[0], (b"IDAT", stream), (b"IEND", b"")])


def _with_window(raw: bytes, window_log: int) -> bytes:
    """``raw`` recompressed with a 32 KiB window, under a zlib header declaring a smaller one."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 15)
    body = compressor.compress(_inflated(raw)) + compressor.flush()
    return _with_stream(raw, _zlib_header((window_log - 8) << 4 | 8) + body[2:])


def _refused() -> dict[str, bytes]:
    raw = cv_encode(textured(60, 80, seed=5))
    stream = _stream(raw)
    rows = zlib.decompress(stream)
    first, *rest = _chunks(raw)
    # rows of 1201 bytes that repeat: back-references 1201 bytes long, past a 1 KiB window
    repeating = cv_encode(
        np.tile(np.random.default_rng(1).integers(0, 255, (1, 400, 3), np.uint8), (40, 1, 1))
    )
    return {
        "an IDAT with a wrong CRC": _with_idat_crc_flipped(raw),
        "an unknown critical chunk": _assemble([first, (b"ABCD", b"x"), *rest]),
        "a palette in an RGB file": _assemble([first, (b"PLTE", b"\0\0\0"), *rest]),
        "two runs of IDAT": _assemble(
            [first, (b"IDAT", stream[:10]), (b"tEXt", b"a\0b"), (b"IDAT", stream[10:]), (b"IEND", b"")]
        ),
        "rows shorter than the header says": _with_height(raw, 61),
        "rows longer than the header says": _with_height(raw, 59),
        "a wrong Adler-32": _with_stream(raw, stream[:-4] + bytes(4)),
        "a zlib stream cut short": _with_stream(raw, zlib.compress(rows)[:-40]),
        "a chunk running past the end": raw[:-12] + struct.pack(">I", 1000) + b"tEXt" + b"\0" * 12,
        "no IEND": raw[:-12],
        "a chunk type with a digit": _assemble([first, (b"a1bc", b"x"), *rest]),
        "a tRNS chunk": _assemble([first, (b"tRNS", b"\0\1\0\2\0\3"), *rest]),
        "a preset dictionary": _with_stream(raw, _zlib_header(0x78, 0x20) + bytes(4) + stream[2:]),
        "a window smaller than the back-references": _with_window(repeating, 10),
    }


@pytest.mark.parametrize("case", list(_refused()))
def test_files_the_copy_could_change_are_decoded_as_they_are(case: str) -> None:
    raw = _refused()[case]
    assert stored_rows_png(raw, _row_bytes(raw)) is None


def test_a_window_that_holds_the_rows_gets_the_copy() -> None:
    """A small image's encoder declares a window just over its rows; that file is not refused."""
    raw = cv_encode(textured(60, 80, seed=5))  # 14 460 bytes of rows
    assert raw[raw.index(b"IDAT") + 4] >> 4 == 6  # 16 KiB
    for window_log in (14, 15):
        recompressed = _with_window(raw, window_log)
        stored = stored_rows_png(recompressed, _row_bytes(raw))
        assert stored is not None
        np.testing.assert_array_equal(imagecodecs.png_decode(stored), imagecodecs.png_decode(recompressed))


def test_the_decoder_reads_the_copy_and_not_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong row count would only send every PNG the slow way, with the same pixels."""
    raw = _layouts()["rgb"]
    decoded: list[object] = []
    real = image._png_decode

    def spy(data: bytes | np.ndarray) -> np.ndarray | None:
        decoded.append(data)
        return real(data)

    monkeypatch.setattr(image, "_png_decode", spy)
    assert _decode_png(raw, _probe(raw)) is not None
    assert len(decoded) == 1
    assert isinstance(decoded[0], np.ndarray)
    assert _inflated(decoded[0].tobytes()) == _inflated(raw)


def test_rows_over_the_copy_limit_are_decoded_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = cv_encode(textured(60, 80, seed=5))
    assert stored_rows_png(raw, _row_bytes(raw)) is not None
    monkeypatch.setattr(png_rows, "MAX_STORED_ROW_BYTES", _row_bytes(raw) - 1)
    assert stored_rows_png(raw, _row_bytes(raw)) is None
    # ...and decode as before, through libpng's own inflate
    expected = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(_decode_png(raw, _probe(raw)), expected)
