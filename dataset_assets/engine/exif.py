"""EXIF tags as img2dataset's ``exif`` column shows them (exifread's names and printable values).

A separate job from decoding: the tags are read from the original bytes' header (Pillow) and
turned into the flat {"Image Make": "Canon", ...} json that img2dataset's users filter on.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

# exifread's printable names for the enumerated tags people actually filter on.
_ENUMS: dict[int, dict[int, str]] = {
    0x0112: {
        1: "Horizontal (normal)",
        2: "Mirrored horizontal",
        3: "Rotated 180",
        4: "Mirrored vertical",
        5: "Mirrored horizontal then rotated 90 CCW",
        6: "Rotated 90 CW",
        7: "Mirrored horizontal then rotated 90 CW",
        8: "Rotated 90 CCW",
    },
    0x0128: {1: "Not Absolute", 2: "Pixels/Inch", 3: "Pixels/Centimeter"},
    0x0213: {1: "Centered", 2: "Co-sited"},
    0xA001: {1: "sRGB", 2: "Adobe RGB", 65533: "Uncalibrated", 65535: "Uncalibrated"},
    0x8822: {
        0: "Unidentified",
        1: "Manual",
        2: "Program Normal",
        3: "Aperture Priority",
        4: "Shutter Priority",
        5: "Program Creative",
        6: "Program Action",
        7: "Portrait Mode",
        8: "Landscape Mode",
    },
    0x9207: {
        0: "Unidentified",
        1: "Average",
        2: "CenterWeightedAverage",
        3: "Spot",
        4: "MultiSpot",
        5: "Pattern",
        6: "Partial",
        255: "other",
    },
    0xA402: {0: "Auto Exposure", 1: "Manual Exposure", 2: "Auto Bracket"},
    0xA403: {0: "Auto", 1: "Manual"},
}
_NAME_OVERRIDES = {0xA005: "InteroperabilityOffset"}
_USER_COMMENT = 0x9286


def exif_dict(exif: Image.Exif) -> dict[str, str]:
    """exifread-style ``{"IFD TagName": printable}`` from Pillow's parser (exifread is pure
    Python and several times slower; only the naming and value printing are mimicked)."""
    out: dict[str, str] = {}
    _dump_ifd(out, "Image", exif, ExifTags.TAGS)
    if ExifTags.IFD.Exif in exif:
        exif_ifd = exif.get_ifd(ExifTags.IFD.Exif)
        _dump_ifd(out, "EXIF", exif_ifd, ExifTags.TAGS)
        if ExifTags.IFD.Interop in exif_ifd:
            _dump_ifd(out, "Interoperability", exif.get_ifd(ExifTags.IFD.Interop), ExifTags.TAGS)
    if ExifTags.IFD.GPSInfo in exif:
        _dump_ifd(out, "GPS", exif.get_ifd(ExifTags.IFD.GPSInfo), ExifTags.GPSTAGS)
    thumbnail = exif.get_ifd(ExifTags.IFD.IFD1)
    if thumbnail:
        _dump_ifd(out, "Thumbnail", thumbnail, ExifTags.TAGS)
    return out


def _dump_ifd(out: dict[str, str], prefix: str, ifd: Mapping[int, Any], names: Mapping[int, str]) -> None:
    for tag, value in ifd.items():
        name = _NAME_OVERRIDES.get(tag) or names.get(tag) or f"Tag 0x{tag:04X}"
        if isinstance(value, dict):  # a sub-IFD Pillow already expanded; dumped separately
            continue
        enum = _ENUMS.get(tag)
        if enum is not None and isinstance(value, int):
            text = enum.get(value, str(value))
        elif tag == _USER_COMMENT and isinstance(value, bytes):
            text = value[8:].decode("utf-8", "replace").strip("\x00 ")
        else:
            text = _printable(value)
        out[f"{prefix} {name}"] = text.strip()


def _printable(value: Any) -> str:
    if isinstance(value, str):
        return value.rstrip("\x00")
    if isinstance(value, bytes):
        stripped = value.rstrip(b"\x00")
        if stripped and all(32 <= b < 127 for b in stripped):
            return stripped.decode("ascii")
        return _list_text(list(value))
    if isinstance(value, tuple):
        return _list_text([_printable(v) for v in value])
    if isinstance(value, IFDRational):
        return _ratio_text(value)
    return str(value)


def _ratio_text(value: Any) -> str:
    """exifread prints rationals reduced: 72/1 -> "72", 10/1000 -> "1/100"."""
    numerator, denominator = int(value.numerator), int(value.denominator)
    if denominator == 0:
        return f"{numerator}/0"
    fraction = Fraction(numerator, denominator)
    if fraction.denominator == 1:
        return str(fraction.numerator)
    return f"{fraction.numerator}/{fraction.denominator}"


def _list_text(items: list[Any]) -> str:
    """exifread truncates long value lists to 20 items, ending in ", ... ]"."""
    if len(items) > 20:
        return "[" + ", ".join(str(v) for v in items[:20]) + ", ... ]"
    return "[" + ", ".join(str(v) for v in items) + "]"
