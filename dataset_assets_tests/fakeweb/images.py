"""Synthetic, deterministic, web-like images for tests, benchmarks and the demo.

Flat-colour test images are misleading for a downloader benchmark: JPEG decode/encode cost and
file size both scale with texture, so a corpus of solid rectangles makes resizing look far cheaper
than on real web data. These images mix smooth gradients, hard-edged shapes, blotchy mid-frequency
texture and fine grain, with the amount of each drawn per seed so file sizes spread out the way
real crawls do.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

_ENCODE_EXT = {"jpg": ".jpg", "jpeg": ".jpg", "png": ".png", "webp": ".webp"}


def _encode_params(fmt: str, quality: int) -> tuple[str, list[int]]:
    key = fmt.lower().lstrip(".")
    if key not in _ENCODE_EXT:
        raise ValueError(f"unsupported image format {fmt!r}; expected one of {sorted(_ENCODE_EXT)}")
    ext = _ENCODE_EXT[key]
    if ext == ".jpg":
        return ext, [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    if ext == ".webp":
        return ext, [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    # PNG is lossless, so "quality" has no meaning; a middle compression level keeps encoding fast.
    return ext, [cv2.IMWRITE_PNG_COMPRESSION, 3]


def _smooth_field(rng: np.random.Generator, width: int, height: int, cells: int, channels: int) -> np.ndarray:
    """Upsampled coarse noise: cheap stand-in for low-frequency photographic structure."""
    gw = max(2, cells)
    gh = max(2, round(cells * height / max(width, 1)))
    coarse = rng.standard_normal((gh, gw, channels), dtype=np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return field.reshape(height, width, channels)


def pixels(seed: int, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = height, width
    # Per-image "detail level", so the corpus has both easy and hard-to-compress images.
    detail = float(rng.uniform(0.3, 1.0))

    ys = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    xs = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    start = rng.uniform(20, 235, size=3).astype(np.float32)
    dx = rng.uniform(-120, 120, size=3).astype(np.float32)
    dy = rng.uniform(-120, 120, size=3).astype(np.float32)
    img = start + dx * xs + dy * ys
    img = img + 35.0 * _smooth_field(rng, w, h, int(rng.integers(2, 6)), 3)

    canvas = np.clip(img, 0, 255).astype(np.uint8)
    scale = max(w, h)
    for _ in range(int(rng.integers(4, 25))):
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        kind = int(rng.integers(0, 5))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = max(2, int(scale * rng.uniform(0.03, 0.35)))
        thickness = -1 if rng.random() < 0.6 else max(1, int(rng.integers(1, 6)))
        if kind == 0:
            cv2.circle(canvas, (cx, cy), size, color, thickness, cv2.LINE_AA)
        elif kind == 1:
            x2 = cx + int(rng.integers(-size, size + 1))
            y2 = cy + int(rng.integers(-size, size + 1))
            cv2.rectangle(canvas, (cx, cy), (x2, y2), color, thickness, cv2.LINE_AA)
        elif kind == 2:
            axes = (size, max(1, int(size * rng.uniform(0.2, 1.0))))
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(canvas, (cx, cy), axes, angle, 0, 360, color, thickness, cv2.LINE_AA)
        elif kind == 3:
            x2, y2 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.line(canvas, (cx, cy), (x2, y2), color, max(1, int(rng.integers(1, 8))), cv2.LINE_AA)
        else:
            n = int(rng.integers(3, 8))
            pts = np.stack(
                [cx + rng.integers(-size, size + 1, n), cy + rng.integers(-size, size + 1, n)], axis=1
            ).astype(np.int32)
            cv2.fillPoly(canvas, [pts], color, cv2.LINE_AA)

    out = canvas.astype(np.float32)
    # Mid-frequency blotches (foliage, fabric, walls) and per-pixel grain (sensor noise): these are
    # what make JPEG work hard, scaled by the per-image detail level.
    out += (14.0 * detail) * _smooth_field(rng, w, h, max(4, scale // 12), 3)
    out += (2.0 * detail) * rng.standard_normal((h, w, 1), dtype=np.float32)
    out += (1.0 * detail) * rng.standard_normal((h, w, 3), dtype=np.float32)
    if rng.random() < 0.3:
        # Some photos are soft; blurring keeps a realistic share of cheap images.
        k = 2 * int(rng.integers(1, 3)) + 1
        out = cv2.GaussianBlur(out, (k, k), 0)
    return np.clip(out, 0, 255).astype(np.uint8)


def make_image(seed: int, width: int, height: int, fmt: str = "jpg", quality: int = 90) -> bytes:
    """Encode one textured image; the same arguments always give the same pixels.

    ``fmt`` is ``jpg``/``jpeg``, ``png`` or ``webp``; ``quality`` applies to JPEG and WebP.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    ext, params = _encode_params(fmt, quality)
    ok, buf = cv2.imencode(ext, pixels(seed, width, height), params)
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for {ext}")
    return buf.tobytes()


def web_like_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """Draw ``n`` (width, height) pairs shaped like a LAION crawl.

    About 40 % are thumbnails whose short side is 100..255 px (these are the ones a
    ``min_image_size=256`` filter drops); the rest have a long side of 256..1600 px (log-uniform,
    so mid-sized images dominate as on the web) and a short side of at least 256 px. Aspect
    ratios are log-uniform in 0.5..2 with either orientation.
    """
    rng = np.random.default_rng(seed)
    sizes: list[tuple[int, int]] = []
    for _ in range(n):
        ratio = math.exp(float(rng.uniform(math.log(0.5), math.log(2.0))))  # width / height
        stretch = max(ratio, 1.0 / ratio)
        if rng.random() < 0.4:
            short = int(rng.integers(100, 256))
            long = round(short * stretch)
        else:
            long = round(math.exp(float(rng.uniform(math.log(256), math.log(1600)))))
            short = max(256, min(long, round(long / stretch)))
        sizes.append((long, short) if ratio >= 1.0 else (short, long))
    return sizes


def iter_corpus(n: int, seed: int = 0, fmt: str = "jpg") -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, encoded bytes)`` for the corpus :func:`write_corpus` writes, lazily.

    Image ``i`` depends only on ``(seed, i)``, so corpora of different ``n`` share a prefix.
    """
    ext = _encode_params(fmt, 90)[0].lstrip(".")
    for i, (w, h) in enumerate(web_like_sizes(n, seed)):
        yield f"{i:06d}.{ext}", make_image(seed * 1_000_003 + i, w, h, fmt=ext)


def corpus_images(n: int, seed: int = 0, fmt: str = "jpg") -> dict[str, bytes]:
    """The corpus in memory, e.g. for ``ImageServer(images=...)`` without touching disk."""
    return dict(iter_corpus(n, seed, fmt))


def write_corpus(folder: str | os.PathLike[str], n: int, seed: int = 0, fmt: str = "jpg") -> list[str]:
    """Write ``n`` web-like images named ``{i:06d}.{ext}`` and return the names in order."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for name, data in iter_corpus(n, seed, fmt):
        (out / name).write_bytes(data)
        names.append(name)
    return names
