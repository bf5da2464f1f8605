"""The card's YAML front matter: the metadata block a Hugging Face dataset repository indexes.

Why its own module: every value in it can come from a user (the title, the contact, tags), and
front matter is parsed, not rendered, so one stray ``---`` line or an unquoted ``: `` in a
title would end the block early or change its keys. Values are therefore flattened to one line
and written by a YAML emitter (which quotes whatever needs quoting), never by string formatting.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

DELIMITER = "---"
# Hugging Face's size_categories buckets, by their lower bound (number of samples).
SIZE_CATEGORIES: tuple[tuple[int, str], ...] = (
    (0, "n<1K"),
    (10**3, "1K<n<10K"),
    (10**4, "10K<n<100K"),
    (10**5, "100K<n<1M"),
    (10**6, "1M<n<10M"),
    (10**7, "10M<n<100M"),
    (10**8, "100M<n<1B"),
    (10**9, "1B<n<10B"),
    (10**10, "10B<n<100B"),
    (10**11, "100B<n<1T"),
    (10**12, "n>1T"),
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def size_category(samples: int) -> str:
    """The Hugging Face bucket of a dataset of ``samples`` stored images."""
    return max((low, name) for low, name in SIZE_CATEGORIES if samples >= low)[1]


def one_line(value: object) -> str:
    """``value`` as a single line of printable text (line breaks and controls become a space)."""
    return " ".join(_CONTROL.sub(" ", str(value)).split())


def _clean(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    if isinstance(value, dict):
        return {one_line(k): _clean(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float):
        return value
    return one_line(value)


def front_matter(values: dict[str, Any]) -> str:
    """``---``, ``values`` as YAML (keys in the given order, strings quoted as needed), ``---``.

    Empty values (None, empty lists) are left out: Hugging Face reads an empty key as a wrong one.
    """
    kept = {k: _clean(v) for k, v in values.items() if v is not None and v != [] and v != ()}
    body = yaml.safe_dump(kept, sort_keys=False, allow_unicode=True, width=10**9, default_flow_style=False)
    # Every string is one line and the emitter never folds it (width), so each line of the block
    # starts with a key or a list item's "- ": none can be a delimiter.
    return "\n".join([DELIMITER, *body.splitlines(), DELIMITER])


def split_front_matter(text: str) -> tuple[str | None, str]:
    """(the YAML between the delimiters, the rest) of a card; (None, text) when it has none."""
    lines = text.split("\n")
    if not lines or lines[0] != DELIMITER:
        return None, text
    try:
        end = lines.index(DELIMITER, 1)
    except ValueError:
        return None, text
    return "\n".join(lines[1:end]), "\n".join(lines[end + 1 :]).lstrip("\n")
