"""Bar charts for the dataset card, drawn as PNG images with OpenCV (already a dependency).

Why images: a card is read where markdown renders (a Hugging Face page, GitHub, Dagster's
asset page), and there a table of 200 shard rates says less than one glance at 200 bars. Why
not a plotting library: four bar charts do not justify a dependency the product does not
otherwise need. Labels are ASCII (OpenCV's Hershey fonts): other characters become "?", so
a label taken from a server's message can only ever be text in a picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

WIDTH = 720
BAR_COLOUR = (180, 119, 31)  # BGR: a steady blue
AXIS_COLOUR = (90, 90, 90)
TEXT_COLOUR = (30, 30, 30)
BACKGROUND = 255
FONT = cv2.FONT_HERSHEY_SIMPLEX
MAX_COLUMNS = 200  # more shards than this are shown as the mean of consecutive groups
MAX_LABEL_CHARS = 48


@dataclass(frozen=True)
class Chart:
    """One chart of the card: its file name stem, its title (the image's alt text) and PNG."""

    name: str
    title: str
    png: bytes


def _ascii(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


def _encode(canvas: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:  # pragma: no cover - encoding a plain uint8 canvas does not fail
        raise RuntimeError("could not encode a chart")
    return encoded.tobytes()


def _title(canvas: np.ndarray, title: str) -> None:
    cv2.putText(canvas, _ascii(title), (12, 26), FONT, 0.6, TEXT_COLOUR, 1, cv2.LINE_AA)


def grouped(values: Sequence[float], groups: int = MAX_COLUMNS) -> tuple[list[float], int]:
    """``values`` as at most ``groups`` means of consecutive runs, and the run length."""
    if len(values) <= groups:
        return list(values), 1
    size = -(-len(values) // groups)
    return [sum(values[i : i + size]) / len(values[i : i + size]) for i in range(0, len(values), size)], size


def column_chart(
    title: str,
    values: Sequence[float],
    *,
    top: float | None = None,
    value_label: Callable[[float], str] = lambda v: f"{v:.3g}",  # axis ticks: 69.3, not 69.3325
    first_label: str = "",
    last_label: str = "",
) -> bytes:
    """One column per value (e.g. per shard), left to right, on a 0..``top`` scale."""
    height, left, right, upper, lower = 260, 64, 16, 44, 36
    canvas = np.full((height, WIDTH, 3), BACKGROUND, np.uint8)
    _title(canvas, title)
    scale_top = top if top is not None else max([*values, 0.0]) or 1.0
    plot_w, plot_h = WIDTH - left - right, height - upper - lower
    cv2.line(canvas, (left, upper), (left, upper + plot_h), AXIS_COLOUR, 1)
    cv2.line(canvas, (left, upper + plot_h), (left + plot_w, upper + plot_h), AXIS_COLOUR, 1)
    for fraction in (0.0, 0.5, 1.0):
        y = upper + plot_h - round(fraction * plot_h)
        label = value_label(fraction * scale_top)
        cv2.putText(canvas, _ascii(label), (4, y + 4), FONT, 0.4, TEXT_COLOUR, 1, cv2.LINE_AA)
    if values:
        step = plot_w / len(values)
        for i, value in enumerate(values):
            bar = max(0.0, min(1.0, value / scale_top)) * plot_h
            x0 = left + 1 + round(i * step)
            x1 = max(x0, left + round((i + 1) * step) - (1 if step >= 3 else 0))
            if bar >= 1:
                cv2.rectangle(
                    canvas, (x0, upper + plot_h - round(bar)), (x1, upper + plot_h - 1), BAR_COLOUR, -1
                )
    baseline = height - 12
    cv2.putText(canvas, _ascii(first_label), (left, baseline), FONT, 0.4, TEXT_COLOUR, 1, cv2.LINE_AA)
    (text_w, _), _ = cv2.getTextSize(_ascii(last_label), FONT, 0.4, 1)
    cv2.putText(
        canvas, _ascii(last_label), (WIDTH - right - text_w, baseline), FONT, 0.4, TEXT_COLOUR, 1, cv2.LINE_AA
    )
    return _encode(canvas)


def row_chart(title: str, rows: Sequence[tuple[str, float]]) -> bytes:
    """One labelled horizontal bar per (label, value), top to bottom, value written at its end."""
    row_h, upper, label_w, value_w = 22, 44, 330, 80
    height = upper + max(1, len(rows)) * row_h + 12
    canvas = np.full((height, WIDTH, 3), BACKGROUND, np.uint8)
    _title(canvas, title)
    longest = max([value for _, value in rows] + [0.0]) or 1.0
    plot_w = WIDTH - label_w - value_w
    for i, (label, value) in enumerate(rows):
        y = upper + i * row_h
        text = _ascii(label)
        if len(text) > MAX_LABEL_CHARS:
            text = text[: MAX_LABEL_CHARS - 3] + "..."
        cv2.putText(canvas, text, (8, y + 15), FONT, 0.4, TEXT_COLOUR, 1, cv2.LINE_AA)
        bar = round(max(0.0, value) / longest * plot_w)
        if bar >= 1:
            cv2.rectangle(canvas, (label_w, y + 3), (label_w + bar, y + row_h - 4), BAR_COLOUR, -1)
        cv2.putText(canvas, f"{value:g}", (label_w + bar + 6, y + 15), FONT, 0.4, TEXT_COLOUR, 1, cv2.LINE_AA)
    return _encode(canvas)
