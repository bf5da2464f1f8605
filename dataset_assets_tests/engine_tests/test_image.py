"""Real-codec tests for the engine's image path: every image is generated here, nothing is mocked."""

from __future__ import annotations

import io
import json
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from PIL.TiffImagePlugin import IFDRational

from dataset_assets.engine.image import (
    ImageProcessor,
    ImageRejected,
    ProcessedImage,
    _decode_png,
    _probe,
    _supersampled_area,
    header_size,
)
from dataset_assets.engine.options import INTERPOLATIONS, DownloadOptions

RED = (0, 0, 255)  # BGR
BLUE = (255, 0, 0)
_IGNORE = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def processor(**options: object) -> ImageProcessor:
    if options.get("encode_format") == "png":
        options.setdefault("encode_quality", 1)  # the PNG compression level; 95 is invalid there
    return ImageProcessor(DownloadOptions(**options))


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like BGR image: 1/f luma texture (natural-image spectrum), smooth chroma, edges.

    Independent per-channel noise would put strong colour detail near Nyquist, which no camera
    produces and which 4:2:0 JPEG cannot hold anyway; it would make every resampler comparison
    meaningless.
    """
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    spectrum = np.fft.rfft2(rng.normal(size=(height, width)).astype(np.float32))
    luma = np.fft.irfft2(spectrum / np.maximum(np.hypot(fy, fx), 1.0 / max(height, width)), s=(height, width))
    luma = (luma - luma.mean()) / (luma.std() + 1e-9) * 40 + 128
    coarse = rng.normal(0, 25, (max(2, height // 32), max(2, width // 32), 2)).astype(np.float32)
    chroma = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) + 128
    ycc = np.dstack([luma.astype(np.float32), chroma])
    for _ in range(6):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        ycc[y0 : y0 + height // 5 + 1, x0 : x0 + width // 5 + 1] = rng.integers((30, 90, 90), (220, 166, 166))
    return cv2.cvtColor(np.clip(ycc, 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2BGR)


def cv_encode(image: np.ndarray, ext: str = ".png", params: list[int] | None = None) -> bytes:
    ok, buffer = cv2.imencode(ext, image, params or [])
    assert ok
    return buffer.tobytes()


def pil_encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def decode(result: ProcessedImage) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(result.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    assert (image.shape[1], image.shape[0]) == (result.width, result.height)
    return image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# ------------------------------------------------------------------ geometry
GEOMETRY = [
    # mode, (w, h) in, only_if_bigger, (w, h) out
    ("border", (400, 300), False, (256, 256)),
    ("border", (300, 400), False, (256, 256)),
    ("border", (100, 50), False, (256, 256)),
    ("border", (100, 50), True, (100, 50)),
    ("border", (400, 300), True, (256, 256)),
    ("keep_ratio", (400, 300), False, (341, 256)),
    ("keep_ratio", (300, 400), False, (256, 341)),
    ("keep_ratio", (100, 50), False, (512, 256)),
    ("keep_ratio", (100, 50), True, (100, 50)),
    ("keep_ratio", (600, 200), True, (600, 200)),  # min side 200 <= 256: kept as is
    ("keep_ratio_largest", (400, 300), False, (256, 192)),
    ("keep_ratio_largest", (300, 400), False, (192, 256)),
    ("keep_ratio_largest", (100, 50), False, (256, 128)),
    ("keep_ratio_largest", (100, 50), True, (100, 50)),
    ("keep_ratio_largest", (512, 101), False, (256, 50)),  # 50.5 -> 50: banker's rounding
    ("keep_ratio_largest", (512, 103), False, (256, 52)),  # 51.5 -> 52
    ("center_crop", (400, 300), False, (256, 256)),
    ("center_crop", (300, 400), False, (256, 256)),
    ("center_crop", (100, 50), False, (256, 256)),
    ("center_crop", (100, 50), True, (100, 50)),
    ("no", (400, 300), False, (400, 300)),
    ("no", (100, 50), False, (100, 50)),
]


@pytest.mark.parametrize(("mode", "size_in", "only_if_bigger", "size_out"), GEOMETRY)
def test_resize_geometry(
    mode: str, size_in: tuple[int, int], only_if_bigger: bool, size_out: tuple[int, int]
) -> None:
    width, height = size_in
    raw = cv_encode(textured(height, width))
    result = processor(resize_mode=mode, resize_only_if_bigger=only_if_bigger, encode_format="png").process(
        raw
    )
    assert (result.width, result.height) == size_out
    assert (result.original_width, result.original_height) == size_in
    decode(result)


def test_border_pads_white_with_odd_pixel_at_bottom() -> None:
    # 400x301 -> 256x193 (301 * 0.64 = 192.64), so 63 rows of padding: 31 on top, 32 below.
    raw = cv_encode(np.zeros((301, 400, 3), np.uint8))
    out = decode(processor(resize_mode="border", encode_format="png").process(raw))
    assert out.shape == (256, 256, 3)
    assert (out[:31] == 255).all() and (out[-32:] == 255).all()
    assert (out[31:-32] == 0).all()


def test_border_pads_left_and_right_for_portrait() -> None:
    raw = cv_encode(np.zeros((400, 300, 3), np.uint8))  # -> 192x256, 32 columns each side
    out = decode(processor(resize_mode="border", encode_format="png").process(raw))
    assert (out[:, :32] == 255).all() and (out[:, -32:] == 255).all()
    assert (out[:, 32:-32] == 0).all()


def test_center_crop_matches_reference_pixels() -> None:
    image = textured(300, 400)
    result = processor(resize_mode="center_crop", encode_format="png").process(cv_encode(image))
    reference = cv2.resize(image, (341, 256), interpolation=cv2.INTER_AREA)[:, 42:298]
    assert np.array_equal(decode(result), reference)


def test_upscale_uses_upscale_interpolation() -> None:
    image = textured(50, 100)
    result = processor(
        resize_mode="keep_ratio", upscale_interpolation="nearest", encode_format="png"
    ).process(cv_encode(image))
    assert np.array_equal(decode(result), cv2.resize(image, (512, 256), interpolation=cv2.INTER_NEAREST))


@pytest.mark.parametrize("name", INTERPOLATIONS)
def test_every_interpolation_name_works(name: str) -> None:
    raw = cv_encode(textured(60, 80))
    down = processor(resize_mode="keep_ratio", image_size=32, downscale_interpolation=name).process(raw)
    assert (down.width, down.height) == (43, 32)  # 80 * 32 / 60 = 42.67
    up = processor(resize_mode="keep_ratio", image_size=128, upscale_interpolation=name).process(raw)
    assert (up.width, up.height) == (171, 128)


def test_extreme_aspect_ratio_keeps_one_pixel() -> None:
    raw = cv_encode(np.zeros((1, 3000, 3), np.uint8))
    result = processor(resize_mode="keep_ratio_largest", encode_format="png").process(raw)
    assert (result.width, result.height) == (256, 1)


# ------------------------------------------------------------------- encoding
@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_each_encode_format_round_trips(fmt: str) -> None:
    quality = 6 if fmt == "png" else 90
    raw = cv_encode(textured(300, 400), ".jpg")
    result = processor(encode_format=fmt, encode_quality=quality, resize_mode="keep_ratio_largest").process(
        raw
    )
    signature = {"jpg": b"\xff\xd8", "png": b"\x89PNG", "webp": b"RIFF"}[fmt]
    assert result.data.startswith(signature)
    assert decode(result).shape == (192, 256, 3)


# ----------------------------------------------------------------- decoding
def test_alpha_png_is_composited_on_white() -> None:
    image = np.zeros((10, 30, 4), np.uint8)
    image[..., 2] = 255  # red everywhere...
    image[:, :10, 3] = 0  # ...fully transparent on the left,
    image[:, 10:20, 3] = 128  # half transparent in the middle,
    image[:, 20:, 3] = 255  # opaque on the right
    out = decode(processor(resize_mode="no", encode_format="png").process(cv_encode(image)))
    assert out.shape == (10, 30, 3)
    assert (out[:, :10] == 255).all()
    assert np.abs(out[0, 15].astype(int) - (127, 127, 255)).max() <= 1
    assert (out[:, 20:] == RED).all()


def test_sixteen_bit_png_becomes_eight_bit() -> None:
    image = np.full((20, 30, 3), 40000, np.uint16)
    out = decode(processor(resize_mode="no", encode_format="png").process(cv_encode(image)))
    assert out.dtype == np.uint8 and (out == 40000 // 256).all()


def test_sixteen_bit_png_with_alpha() -> None:
    image = np.full((20, 30, 4), 40000, np.uint16)
    image[:, :15, 3] = 0
    image[:, 15:, 3] = 65535
    out = decode(processor(resize_mode="no", encode_format="png").process(cv_encode(image)))
    assert out.dtype == np.uint8
    assert (out[:, :15] == 255).all() and (out[:, 15:] == 40000 // 256).all()


def test_grayscale_and_gray_alpha_inputs() -> None:
    gray = pil_encode(Image.new("L", (33, 17), 128), "JPEG", quality=95)
    out = decode(processor(resize_mode="no", encode_format="png").process(gray))
    assert out.shape == (17, 33, 3) and np.abs(out.astype(int) - 128).max() <= 2
    la = np.zeros((10, 20, 2), np.uint8)
    la[..., 0] = 100
    la[:, 10:, 1] = 255
    out = decode(
        processor(resize_mode="no", encode_format="png").process(pil_encode(Image.fromarray(la, "LA"), "PNG"))
    )
    assert (out[:, :10] == 255).all() and (out[:, 10:] == 100).all()


def _with_chunk_before_idat(raw: bytes, chunk: bytes) -> bytes:
    at = raw.index(b"IDAT") - 4
    return raw[:at] + chunk + raw[at:]


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _interlaced_png(bgr: np.ndarray) -> bytes:
    """An Adam7-interlaced RGB PNG (no library at hand writes one): each pass's rows, unfiltered."""
    height, width = bgr.shape[:2]
    rgb = bgr[:, :, ::-1]
    passes = b"".join(
        b"".join(b"\0" + row.tobytes() for row in rgb[y0::dy, x0::dx])
        for x0, y0, dx, dy in _ADAM7
        if x0 < width and y0 < height
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(passes)) + png_chunk(b"IEND", b"")
    raw = b"\x89PNG\r\n\x1a\n" + chunks
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR), bgr)
    return raw


def _png_layouts() -> dict[str, tuple[bytes, int | None]]:
    """PNG files and the OpenCV flag whose decode the fast path must equal (None: leave it)."""
    rgb = textured(96, 120, seed=7)
    rgba = np.dstack([rgb, np.linspace(0, 255, 96 * 120, dtype=np.uint8).reshape(96, 120)])
    grey = cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY)
    colour_key = png_chunk(b"tRNS", struct.pack(">HHH", *rgb[0, 0][::-1].tolist()))
    gamma = png_chunk(b"gAMA", struct.pack(">I", 45455))
    palette = pil_encode(Image.fromarray(rgb[:, :, ::-1]).quantize(64), "PNG")
    plain = cv_encode(rgb)
    frames = [Image.fromarray(rgb[:, :, ::-1]), Image.fromarray(rgb[::-1, :, ::-1].copy())]
    animated = pil_encode(frames[0], "PNG", save_all=True, append_images=frames[1:], default_image=True)
    return {
        "rgb": (cv_encode(rgb), _IGNORE),
        "rgb with gAMA": (_with_chunk_before_idat(cv_encode(rgb), gamma), _IGNORE),
        "grey": (cv_encode(grey), _IGNORE),
        "rgba": (cv_encode(rgba), cv2.IMREAD_UNCHANGED),
        "rgb with a tRNS colour key": (_with_chunk_before_idat(cv_encode(rgb), colour_key), None),
        "palette": (palette, None),
        "16-bit": (cv_encode(rgb.astype(np.uint16) * 257), None),
        "truncated": (cv_encode(rgb)[:-200], None),
        "without its IEND chunk": (plain[:-12], None),
        "interlaced": (_interlaced_png(rgb), None),
        "animated (APNG)": (animated, None),
    }


@pytest.mark.parametrize("layout", list(_png_layouts()))
def test_fast_png_decode_equals_opencv_or_leaves_the_file_to_it(layout: str) -> None:
    raw, flag = _png_layouts()[layout]
    fast = _decode_png(raw, _probe(raw))
    if flag is None:
        assert fast is None
    else:
        assert fast is not None
        np.testing.assert_array_equal(fast, cv2.imdecode(np.frombuffer(raw, np.uint8), flag))


def test_png_layouts_store_the_same_pixels_whichever_decoder_reads_them() -> None:
    """End to end: the stored image of a fast-path PNG equals that of the same pixels as a
    palette-free 16-bit PNG (which OpenCV decodes), shifted back to 8 bits."""
    rgb = textured(300, 400, seed=3)
    fast = decode(processor(encode_format="png").process(cv_encode(rgb)))
    slow = decode(processor(encode_format="png").process(cv_encode(rgb.astype(np.uint16) * 257)))
    np.testing.assert_array_equal(fast, slow)


def test_cmyk_jpeg_decodes_to_right_colour() -> None:
    raw = pil_encode(Image.new("CMYK", (64, 32), (0, 255, 255, 0)), "JPEG", quality=95)  # red
    for size in (256, 16):  # upscale (full decode) and downscale (reduced decode)
        out = decode(
            processor(image_size=size, resize_mode="keep_ratio_largest", encode_format="png").process(raw)
        )
        assert np.abs(out[out.shape[0] // 2, out.shape[1] // 2].astype(int) - RED).max() <= 8


@pytest.mark.parametrize("fmt", ["GIF", "PNG"])
def test_palette_image_with_transparency(fmt: str) -> None:
    index = np.zeros((10, 20), np.uint8)
    index[:, 10:] = 1  # right half: palette entry 1 (blue); left half: entry 0, transparent
    image = Image.fromarray(index, "P")
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    raw = pil_encode(image, fmt, transparency=0)
    out = decode(processor(resize_mode="no", encode_format="png").process(raw))
    assert (out[:, :10] == 255).all()
    assert (out[:, 10:] == BLUE).all()


def test_webp_input_and_skip_reencode() -> None:
    raw = cv_encode(textured(90, 120), ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80])
    result = processor(resize_mode="keep_ratio_largest", image_size=60).process(raw)
    assert (result.width, result.height, result.original_width) == (60, 45, 120)
    kept = processor(resize_mode="no", encode_format="webp", skip_reencode=True).process(raw)
    assert kept.data == raw and (kept.width, kept.height) == (120, 90)


def test_first_gif_frame_is_used() -> None:
    frames = [Image.new("RGB", (16, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    out = decode(processor(resize_mode="no", encode_format="png").process(buffer.getvalue()))
    assert (out == RED).all()


# ------------------------------------------------------------------ orientation
def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2021:06:01 12:00:00"
    return exif


def test_exif_rotated_jpeg_is_upright() -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = RED  # the left half of the stored image...
    stored[:, 20:] = BLUE
    source = Image.fromarray(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB))
    raw = pil_encode(source, "JPEG", quality=95, exif=exif_with_orientation(6))
    result = processor(resize_mode="no", encode_format="png").process(raw)
    assert (result.width, result.height) == (20, 40)
    assert (result.original_width, result.original_height) == (20, 40)
    out = decode(result)
    # ...is on top once rotated 90 degrees clockwise.
    assert np.abs(out[5, 10].astype(int) - RED).max() < 30
    assert np.abs(out[35, 10].astype(int) - BLUE).max() < 30
    exif = json.loads(result.exif or "")
    assert exif["Image Orientation"] == "Rotated 90 CW"
    assert exif["EXIF DateTimeOriginal"] == "2021:06:01 12:00:00"
    # With a resize the output is the upright image scaled: 128x256 for border's content.
    resized = processor(resize_mode="keep_ratio_largest").process(raw)
    assert (resized.width, resized.height, resized.original_width) == (128, 256, 20)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_orientations_match_pillow(orientation: int) -> None:
    source = Image.fromarray(cv2.cvtColor(textured(12, 20), cv2.COLOR_BGR2RGB))
    raw = pil_encode(source, "PNG", exif=exif_with_orientation(orientation))
    expected = cv2.cvtColor(
        np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(raw)))), cv2.COLOR_RGB2BGR
    )
    out = decode(processor(resize_mode="no", encode_format="png").process(raw))
    assert np.array_equal(out, expected)
    # Resizing before rotating gives the same pixels as rotating first (nearest is exact).
    result = processor(resize_mode="keep_ratio", image_size=24, upscale_interpolation="nearest").process(raw)
    assert (result.width, result.height) == ((24, 40) if orientation >= 5 else (40, 24))


def test_exif_column_variants() -> None:
    plain = cv_encode(textured(20, 20), ".jpg")
    assert processor().process(plain).exif == "{}"
    tagged = pil_encode(Image.new("RGB", (20, 20)), "JPEG", exif=exif_with_orientation(1))
    assert processor(extract_exif=False).process(tagged).exif is None
    exif = Image.Exif()
    exif[0x011A] = IFDRational(72, 1)
    exif[0x0128] = 2
    exif.get_ifd(0x8769)[0x829A] = IFDRational(10, 1000)
    columns = json.loads(
        processor().process(pil_encode(Image.new("RGB", (20, 20)), "JPEG", exif=exif)).exif or ""
    )
    assert columns["Image XResolution"] == "72"
    assert columns["Image ResolutionUnit"] == "Pixels/Inch"
    assert columns["EXIF ExposureTime"] == "1/100"


def test_broken_exif_gives_null_column_not_rejection() -> None:
    raw = pil_encode(Image.new("RGB", (20, 20)), "JPEG", exif=b"Exif\x00\x00XX")
    result = processor().process(raw)
    assert result.exif is None and result.width == 256


# ---------------------------------------------------------- reduced decoding
@pytest.mark.parametrize(
    ("mode", "size_in", "size_out"),
    [
        ("border", (1024, 768), (256, 256)),
        ("keep_ratio", (1001, 777), (330, 256)),
        ("center_crop", (777, 1001), (256, 256)),
        ("keep_ratio_largest", (2100, 300), (256, 37)),
    ],
)
def test_reduced_jpeg_decode_matches_full_decode(
    mode: str, size_in: tuple[int, int], size_out: tuple[int, int]
) -> None:
    width, height = size_in
    raw = cv_encode(textured(height, width), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    options = DownloadOptions(resize_mode=mode, encode_format="png", encode_quality=1)
    fast = ImageProcessor(options).process(raw)
    full = ImageProcessor(options, reduced_decode=False).process(raw)
    assert (fast.width, fast.height) == (full.width, full.height) == size_out
    assert (fast.original_width, fast.original_height) == size_in
    assert psnr(decode(fast), decode(full)) >= 35


def test_reduced_decode_psnr_against_area_reference() -> None:
    image = textured(768, 1024, seed=3)
    raw = cv_encode(image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    full = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    reference = cv2.resize(full, (256, 192), interpolation=cv2.INTER_AREA)
    out = decode(processor(resize_mode="keep_ratio_largest", encode_format="png").process(raw))
    assert out.shape == reference.shape
    assert psnr(out, reference) >= 35


@pytest.mark.parametrize(
    ("size_in", "factor"),
    [
        ((1024, 768), 4),  # exactly 256x192 at 1/4: no resample at all
        ((2048, 1536), 8),
        ((800, 600), 2),  # 400x300 -> 256x192 is a 1.56:1 shrink
        ((640, 480), 2),  # 320x240 at 1/2 still shrinks (1.25:1) onto the 256x192 grid
        ((500, 375), 1),  # 250x188 at 1/2 would have to be upscaled: full decode
        ((2052, 1027), 4),  # 1/8 cannot be resampled onto the grid within 0.1 px; 1/4 can
    ],
)
def test_reduced_decode_factor_choice(size_in: tuple[int, int], factor: int) -> None:
    width, height = size_in
    raw = cv_encode(np.full((height, width, 3), 128, np.uint8), ".jpg")
    fast = processor(resize_mode="keep_ratio_largest")
    header = _probe(raw)
    image, chosen = fast._decode(raw, header, fast._plan(width, height), False)
    assert chosen == factor
    assert image.shape[:2] == (-(-height // factor), -(-width // factor))


def test_reduced_decode_with_exif_rotation() -> None:
    image = textured(768, 1024, seed=5)
    source = Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    raw = pil_encode(source, "JPEG", quality=95, exif=exif_with_orientation(6))
    options = DownloadOptions(resize_mode="keep_ratio_largest", encode_format="png", encode_quality=1)
    fast = ImageProcessor(options).process(raw)
    full = ImageProcessor(options, reduced_decode=False).process(raw)
    assert (fast.width, fast.height, fast.original_width, fast.original_height) == (192, 256, 768, 1024)
    upright = cv2.rotate(cv2.imdecode(np.frombuffer(raw, np.uint8), _IGNORE), cv2.ROTATE_90_CLOCKWISE)
    reference = cv2.resize(upright, (192, 256), interpolation=cv2.INTER_AREA)
    assert psnr(decode(fast), reference) >= 35
    assert psnr(decode(full), reference) >= 40


@pytest.mark.parametrize("size_in", [(1601, 1201), (3000, 2000), (1024, 768)])
def test_area_pre_shrink_matches_direct_area_resize(size_in: tuple[int, int]) -> None:
    width, height = size_in
    image = textured(height, width, seed=7)
    out = decode(processor(resize_mode="keep_ratio_largest", encode_format="png").process(cv_encode(image)))
    reference = cv2.resize(image, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_AREA)
    assert psnr(out, reference) >= 40


# ------------------------------------------------------------ resample paths
def _upscale_reference(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4)


def _jpeg_round_trip(image: np.ndarray) -> np.ndarray:
    raw = cv_encode(image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    return cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)


def test_lanczos_upscale_matches_opencv_up_to_rounding() -> None:
    image = textured(150, 200, seed=11)  # keep_ratio 256: a 1.71x upscale to 341x256
    out = decode(processor(resize_mode="keep_ratio", encode_format="png").process(cv_encode(image)))
    reference = _upscale_reference(image, (341, 256))
    assert out.shape == reference.shape
    assert np.abs(out.astype(int) - reference).max() <= 1


def test_lanczos_upscale_into_jpeg_filters_luma_and_stays_close() -> None:
    image = textured(150, 200, seed=12)
    out = decode(processor(resize_mode="keep_ratio", encode_format="jpg").process(cv_encode(image)))
    reference = _jpeg_round_trip(_upscale_reference(image, (341, 256)))
    assert psnr(out, reference) >= 40
    # Luma went through Lanczos, not bicubic: the luma error is smaller than bicubic's.
    bicubic = _jpeg_round_trip(cv2.resize(image, (341, 256), interpolation=cv2.INTER_CUBIC))

    def luma(x: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(x, cv2.COLOR_BGR2YCrCb)[:, :, 0]

    assert psnr(luma(out), luma(reference)) > psnr(luma(bicubic), luma(reference))


def test_uneven_area_shrink_is_identical_to_opencv() -> None:
    image = textured(300, 457, seed=13)  # 1.17:1 shrink: no halving, no reduced decode (PNG)
    out = decode(processor(resize_mode="keep_ratio", encode_format="png").process(cv_encode(image)))
    reference = cv2.resize(image, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.array_equal(out, reference)


@pytest.mark.parametrize(
    ("size_in", "aliasing_shows"),
    [((457, 300), False), ((500, 260), False), ((600, 400), True), ((640, 480), True), ((350, 350), True)],
)
def test_uneven_area_shrink_into_jpeg_is_as_close_to_area_as_the_encode(
    size_in: tuple[int, int], aliasing_shows: bool
) -> None:
    width, height = size_in
    image = textured(height, width, seed=width)
    out = decode(processor(resize_mode="keep_ratio", encode_format="jpg").process(cv_encode(image)))
    exact = cv2.resize(image, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_AREA)
    assert psnr(out, exact) >= psnr(_jpeg_round_trip(exact), exact) - 1.5
    if aliasing_shows:  # still an antialiased average, not a bilinear sample
        bilinear = cv2.resize(image, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_LINEAR)
        assert psnr(out, exact) > psnr(_jpeg_round_trip(bilinear), exact) + 1


@pytest.mark.parametrize("ratio", [1.01, 1.1, 1.2, 1.29, 1.3, 1.45, 1.6, 1.8, 1.99])
def test_supersampled_area_stays_near_the_exact_filter_at_every_ratio(ratio: float) -> None:
    image = textured(round(240 * ratio), round(320 * ratio), seed=21)
    exact = cv2.resize(image, (320, 240), interpolation=cv2.INTER_AREA)
    assert psnr(_supersampled_area(image, (320, 240)), exact) >= 40


@pytest.mark.parametrize(("size_in", "size_out"), [((300, 400), (300, 256)), ((500, 256), (300, 256))])
def test_supersampled_area_leaves_an_unscaled_axis_sharp(
    size_in: tuple[int, int], size_out: tuple[int, int]
) -> None:
    # One axis 1:1, the other over 1.3:1: doubling both axes would blur the unscaled one.
    image = textured(size_in[1], size_in[0], seed=22)
    exact = cv2.resize(image, size_out, interpolation=cv2.INTER_AREA)
    assert psnr(_supersampled_area(image, size_out), exact) >= 45


# ---------------------------------------------------------------- rejections
def test_header_bomb_is_rejected_without_decoding() -> None:
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(
        ImageRejected, match=r"^image header declares 30000x30000 pixels, over the 100000000-pixel cap$"
    ):
        processor().process(bomb)


def _solid_png(height: int, width: int, channels: int, dtype: type) -> bytes:
    return cv_encode(np.full((height, width, channels), 200, dtype) * (257 if dtype is np.uint16 else 1))


def _header_only(png: bytes) -> bytes:
    """The signature, IHDR and the first bytes of IDAT: enough for the header, no pixels."""
    return png[: png.index(b"IDAT") + 20]


def test_decoded_bytes_cap_counts_depth_and_channels_from_the_header() -> None:
    cap = 16 * 1024 * 1024
    deep = _solid_png(1500, 2000, 4, np.uint16)  # 2000x1500 x 4 x 2 bytes = 24 MB, a few KB on disk
    assert len(deep) < 200_000
    message = (
        r"^image header declares 2000x1500 pixels of 4 16-bit channels, 24000000 bytes decoded, "
        rf"over the {cap}-byte cap$"
    )
    with pytest.raises(ImageRejected, match=message):
        processor(max_decoded_bytes=cap).process(deep)
    # Refused from the header alone: without its pixel data the file gets the same answer,
    # while the 8-bit one, which passes the cap, fails where decoding starts.
    with pytest.raises(ImageRejected, match=message):
        processor(max_decoded_bytes=cap).process(_header_only(deep))
    shallow = _solid_png(1500, 2000, 4, np.uint8)  # 12 MB decoded: under the cap
    assert processor(max_decoded_bytes=cap).process(shallow).width == 256
    with pytest.raises(ImageRejected, match=r"^Image decoding error$"):
        processor(max_decoded_bytes=cap).process(_header_only(shallow))
    # The default (512 MiB) lets this one through; the pixel cap alone never looked at depth.
    assert processor(max_decoded_pixels=3_000_000).process(deep).width == 256


def _pil_bytes(mode: str, fmt: str, **params: object) -> bytes:
    return pil_encode(Image.new(mode, (8, 6)), fmt, **params)


@pytest.mark.parametrize(
    ("raw", "layout"),
    [
        (_solid_png(6, 8, 4, np.uint16), (4, 16)),
        (cv_encode(np.zeros((6, 8), np.uint16)), (3, 16)),  # grey: decoded to 3 channels anyway
        (cv_encode(np.zeros((6, 8, 3), np.uint8), ".jpg"), (3, 8)),
        (_pil_bytes("P", "PNG", transparency=0), (4, 8)),
        (_pil_bytes("CMYK", "JPEG"), (4, 8)),
        (cv_encode(np.zeros((6, 8, 3), np.uint16), ".tiff"), (3, 16)),
        (cv_encode(np.zeros((6, 8, 4), np.uint8), ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), (4, 8)),
    ],
    ids=["png-rgba16", "png-grey16", "jpeg", "png-palette-alpha", "jpeg-cmyk", "tiff-rgb16", "webp-rgba"],
)
def test_header_reports_decoded_channels_and_depth(raw: bytes, layout: tuple[int, int]) -> None:
    header = _probe(raw)
    assert (header.channels, header.sample_bits) == layout


def test_size_filters_use_img2dataset_messages() -> None:
    raw = cv_encode(textured(30, 90))
    with pytest.raises(ImageRejected, match=r"^image too small$"):
        processor(min_image_size=31).process(raw)
    with pytest.raises(ImageRejected, match=r"^image area too large$"):
        processor(max_image_area=2699).process(raw)
    with pytest.raises(ImageRejected, match=r"^aspect ratio too large$"):
        processor(max_aspect_ratio=2.9).process(raw)
    assert processor(min_image_size=30, max_image_area=2700, max_aspect_ratio=3).process(raw).width == 256


@pytest.mark.parametrize(
    "raw", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"\xff\xd8\xff"]
)
def test_garbage_is_a_decoding_error(raw: bytes) -> None:
    with pytest.raises(ImageRejected, match=r"^Image decoding error$"):
        processor().process(raw)


@pytest.mark.parametrize("fmt", [".jpg", ".png", ".webp"])
def test_truncated_files_never_raise_anything_else(fmt: str) -> None:
    raw = cv_encode(textured(300, 400), fmt)
    for fraction in (0.02, 0.3, 0.7, 0.99):
        try:
            result = processor().process(raw[: int(len(raw) * fraction)])
        except ImageRejected:
            continue
        assert (result.width, result.height) == (256, 256)


# ----------------------------------------------------------------- skip_reencode
def test_skip_reencode_keeps_bytes_only_when_pixels_are_unchanged() -> None:
    jpeg = cv_encode(textured(150, 200), ".jpg")
    small = {"skip_reencode": True, "resize_only_if_bigger": True}
    assert processor(**small).process(jpeg).data == jpeg  # border, smaller than 256: untouched
    assert processor(skip_reencode=True, resize_mode="no").process(jpeg).data == jpeg
    exact = cv_encode(textured(256, 300), ".jpg")  # keep_ratio to the size it already has
    assert processor(skip_reencode=True, resize_mode="keep_ratio").process(exact).data == exact
    # Anything that changes pixels or format is re-encoded.
    assert processor(skip_reencode=True).process(jpeg).data != jpeg  # padded to 256x256
    assert processor(**small, encode_format="webp").process(jpeg).data[:4] == b"RIFF"
    rotated = pil_encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif_with_orientation(6))
    assert processor(**small).process(rotated).data != rotated
    rgba = cv_encode(np.zeros((20, 20, 4), np.uint8))
    assert processor(**small, encode_format="png").process(rgba).data != rgba
    assert processor(**small).process(jpeg, [[0.1, 0.1, 0.5, 0.5]]).data != jpeg
    assert processor(**small).process(jpeg, []).data == jpeg
    assert processor(skip_reencode=False, resize_mode="no").process(jpeg).data != jpeg


def test_skip_reencode_still_rejects_undecodable_bytes() -> None:
    jpeg = cv_encode(textured(150, 200), ".jpg")
    broken = jpeg[: len(jpeg) // 2]
    with pytest.raises(ImageRejected, match=r"^Image decoding error$"):
        processor(skip_reencode=True, resize_mode="no").process(broken)


# ------------------------------------------------------------------------ blur
def test_blur_changes_the_box_and_not_far_outside() -> None:
    board = (np.indices((200, 200)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = cv2.cvtColor(board, cv2.COLOR_GRAY2BGR)
    raw = cv_encode(image)
    out = decode(processor(resize_mode="no", encode_format="png").process(raw, [[0.25, 0.25, 0.5, 0.5]]))
    inside = out[60:90, 60:90]
    assert inside.std() < 20  # the checkerboard is smoothed to grey
    # The box (50..100) grows by 10 % of its 50-pixel side: 45..105. Outside that, untouched.
    assert np.array_equal(out[110:], image[110:]) and np.array_equal(out[:, 110:], image[:, 110:])
    assert np.array_equal(out[:44], image[:44]) and np.array_equal(out[:, :44], image[:, :44])


def test_blur_happens_after_resize_before_padding() -> None:
    image = cv2.cvtColor((np.indices((100, 200)).sum(axis=0) % 2 * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    out = decode(processor(encode_format="png", image_size=100).process(cv_encode(image), [[0, 0, 1, 1]]))
    assert out.shape == (100, 100, 3)
    assert (out[:25] == 255).all() and (out[-25:] == 255).all()  # padding stays pure white
    assert out[25:75].std() < 20


# A box around (0.15, 0.4) of the stored frame: no orientation 2..8 maps it onto itself, so a
# blur placed in the oriented frame instead would miss it (and land elsewhere).
_STORED_BOX = (0.05, 0.3, 0.25, 0.5)


def _oriented(mask: np.ndarray, orientation: int) -> np.ndarray:
    """Where a stored-frame mask lies once Pillow applies the EXIF orientation (the reference)."""
    raw = pil_encode(Image.fromarray(mask), "PNG", exif=exif_with_orientation(orientation))
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(raw)))) > 127


@pytest.mark.parametrize("orientation", range(1, 9))
def test_blur_covers_the_stored_frame_box_whatever_the_orientation(orientation: int) -> None:
    height, width = 160, 200
    board = (np.indices((height, width)) // 2).sum(axis=0) % 2 * 255  # 2-pixel squares: std 127
    stored = cv2.cvtColor(board.astype(np.uint8), cv2.COLOR_GRAY2BGR)
    source = Image.fromarray(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB))
    raw = pil_encode(source, "JPEG", quality=95, exif=exif_with_orientation(orientation))
    x0, y0, x1, y1 = (round(v * s) for v, s in zip(_STORED_BOX, (width, height, width, height), strict=True))
    inside = np.zeros((height, width), np.uint8)
    inside[y0 + 3 : y1 - 3, x0 + 3 : x1 - 3] = 255
    outside = np.full((height, width), 255, np.uint8)
    outside[: y1 + 20, : x1 + 20] = 0  # well clear of the box, its 10 % growth and the kernel

    result = processor(resize_mode="no", encode_format="png").process(raw, [list(_STORED_BOX)])
    out = decode(result)
    assert out.shape[:2] == ((width, height) if orientation >= 5 else (height, width))
    assert out[_oriented(inside, orientation)].std() < 3, "the face box is still sharp"
    assert out[_oriented(outside, orientation)].std() > 100, "the blur spilled outside the box"


@pytest.mark.parametrize(
    "boxes",
    [
        [[0.1, 0.2]],
        [["a", 0, 1, 1]],
        [[0.5, 0.5, 0.1, 0.1]],
        [[10, 20, 100, 200]],
        [[0, 0, float("nan"), 1]],
        [5],
    ],
)
def test_malformed_boxes_are_rejected(boxes: list) -> None:
    raw = cv_encode(textured(50, 50))
    with pytest.raises(ImageRejected, match="bounding box"):
        processor().process(raw, boxes)


@pytest.mark.parametrize(
    ("encode", "params"),
    [
        (".jpg", []),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".jpg", [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]),
        (".png", []),
        (".webp", []),
    ],
)
def test_header_size_is_what_pillow_reads_and_what_was_encoded(encode, params) -> None:
    pixels = np.random.default_rng(3).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(encode, pixels, params)
    assert ok
    raw = encoded.tobytes()
    with Image.open(io.BytesIO(raw)) as im:
        assert header_size(raw) == im.size == (53, 37)


def test_header_size_of_junk_and_of_a_jpeg_cut_before_its_frame_header() -> None:
    _, encoded = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    raw = encoded.tobytes()
    frame = raw.index(b"\xff\xc0")
    assert header_size(raw[:frame]) is None
    assert header_size(b"not an image") is None
    assert header_size(b"\xff\xd8\xff") is None


def _jpeg_variants() -> dict[str, bytes]:
    """JPEGs of every layout the segment reader reads or must leave to Pillow."""
    rgb = Image.fromarray(np.random.default_rng(5).integers(0, 255, (29, 41, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the orientation must come through either reader
    exif[0x010F] = "maker"

    def save(image: Image.Image, **kwargs: object) -> bytes:
        out = io.BytesIO()
        image.save(out, "JPEG", **kwargs)
        return out.getvalue()

    plain = save(rgb)
    sos = plain.index(b"\xff\xda")
    with_exif = save(rgb, exif=exif.tobytes())
    app1 = with_exif.index(b"\xff\xe1")
    app1_end = app1 + 2 + int.from_bytes(with_exif[app1 + 2 : app1 + 4], "big")
    return {
        "baseline": plain,
        "progressive": save(rgb, progressive=True),
        "4:4:4": save(rgb, subsampling=0),
        "grey": save(rgb.convert("L")),
        "cmyk": save(rgb.convert("CMYK")),
        "exif orientation 6": with_exif,
        "broken exif": with_exif[: app1 + 10] + b"\x00" * (app1_end - app1 - 10) + with_exif[app1_end:],
        "two exif segments": with_exif[:app1_end] + with_exif[app1:],
        "junk before a marker": plain[:sos] + b"\x00junk" + plain[sos:],
        "cut before the first scan": plain[:sos],
        "cut inside the scan": plain[: sos + 40],
        "12-bit frame header": plain.replace(b"\xff\xc0\x00\x11\x08", b"\xff\xc0\x00\x11\x0c", 1),
        "no frame header": plain.replace(b"\xff\xc0", b"\xff\xfe", 1),
    }


@pytest.mark.parametrize("name", list(_jpeg_variants()))
def test_the_jpeg_segment_reader_reads_every_header_as_pillow_does(name) -> None:
    from dataset_assets.engine.image import _jpeg_layout, _probe_with_pillow

    raw = _jpeg_variants()[name]

    def read(probe) -> object:
        try:
            header = probe(raw)
        except ImageRejected as error:
            return str(error)
        fields = {field: getattr(header, field) for field in header.__slots__}
        fields["exif"] = dict(header.exif) if header.exif is not None else None
        return fields

    assert read(_probe) == read(_probe_with_pillow)
    took_the_shortcut = _jpeg_layout(raw) is not None
    plain = ("baseline", "progressive", "4:4:4", "grey", "cmyk", "exif orientation 6", "broken exif")
    assert took_the_shortcut == (name in plain or name == "cut inside the scan")
    if name == "exif orientation 6":
        assert _probe(raw).orientation == 6
    if name == "broken exif":
        assert _probe(raw).exif_failed
