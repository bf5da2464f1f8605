"""Blurring boxes (e.g. faces, DataComp's ``face_bboxes``) in the stored image.

A separate job from decoding and resizing: it takes the boxes a user supplies (relative
coordinates, validated here with a clear message) and blurs those regions of the image. The
boxes describe the frame the file is stored in (img2dataset never applies EXIF orientation, and
detectors ran on its output), so the caller blurs before orienting.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

from dataset_assets.engine.records import ImageRejected

# A bounding box coordinate this far outside [0, 1] is not a relative coordinate (most likely
# pixels); anything closer is detector jitter at the image edge and is clamped.
_BBOX_SLACK = 0.1


def parse_bboxes(bboxes: Iterable[Any]) -> list[tuple[float, float, float, float]]:
    """Validate [x_min, y_min, x_max, y_max] relative boxes; user data, so reject clearly."""
    boxes = []
    try:
        for box in bboxes:
            values = [float(v) for v in box]
            if len(values) != 4:
                raise ImageRejected(
                    f"bounding box {list(box)!r} must have 4 values [x_min, y_min, x_max, y_max]"
                )
            if not all(math.isfinite(v) and -_BBOX_SLACK <= v <= 1 + _BBOX_SLACK for v in values):
                raise ImageRejected(f"bounding box {values!r} is not in relative coordinates [0, 1]")
            x0, y0, x1, y1 = (min(1.0, max(0.0, v)) for v in values)
            if x1 < x0 or y1 < y0:
                raise ImageRejected(f"bounding box {values!r} has x_max < x_min or y_max < y_min")
            boxes.append((x0, y0, x1, y1))
    except (TypeError, ValueError):
        raise ImageRejected(
            f"malformed bounding boxes {bboxes!r}: expected a list of 4-number lists"
        ) from None
    return boxes


def blur_boxes(image: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """Gaussian-blur each box, enlarged by 10 % of its size, with sigma = 0.1 x the largest box.

    Box "size" is max(width, height) in pixels, which img2dataset (after the ImageNet face
    obfuscation code) calls the diagonal. Unlike img2dataset, whose feathered mask leaves the box
    edges partly sharp, every pixel inside an enlarged box is fully blurred and nothing outside
    changes; the blur itself still sees the real neighbourhood, so there is no seam from padding.
    """
    height, width = image.shape[:2]
    rects = []
    largest = 0
    for bx0, by0, bx1, by1 in boxes:
        x0, y0, x1, y1 = int(bx0 * width), int(by0 * height), int(bx1 * width), int(by1 * height)
        side = max(x1 - x0, y1 - y0)
        largest = max(largest, side)
        grow = 0.1 * side
        rect = (
            max(0, int(x0 - grow)),
            max(0, int(y0 - grow)),
            min(width, int(x1 + grow)),
            min(height, int(y1 + grow)),
        )
        if rect[2] > rect[0] and rect[3] > rect[1]:
            rects.append(rect)
    sigma = 0.1 * largest
    if not rects or sigma <= 0:
        return image
    ksize = 2 * math.ceil(4 * sigma) + 1
    margin = ksize // 2
    # Blur only the region the boxes (plus the kernel's reach) cover, not the whole image.
    rx0 = max(0, min(r[0] for r in rects) - margin)
    ry0 = max(0, min(r[1] for r in rects) - margin)
    rx1 = min(width, max(r[2] for r in rects) + margin)
    ry1 = min(height, max(r[3] for r in rects) + margin)
    blurred = cv2.GaussianBlur(image[ry0:ry1, rx0:rx1], (ksize, ksize), sigma)
    if not image.flags.writeable:
        image = image.copy()
    for x0, y0, x1, y1 in rects:
        image[y0:y1, x0:x1] = blurred[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
    return image
