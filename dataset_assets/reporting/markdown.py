"""Text from the web shown in markdown (the card, the UI), made inert.

Why: error messages carry what servers send (an HTTP reason phrase is free text), and URL
lists carry whatever their authors wrote; rendered as markdown, ``404 ![x](https://…)`` is an
image fetched from a stranger's server by everyone who opens the card, and a ``|`` breaks the
table it sits in. Escaped, it reads exactly as it was received.
"""

from __future__ import annotations

import re

# Any ASCII punctuation may be backslash-escaped in CommonMark; these are the characters that
# open markup mid-line (links and images need "[", emphasis, code, HTML, tables, strikethrough).
# Escaping only them keeps messages readable in the raw file ("HTTP Error 404: Not Found").
_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")
_LINE_BREAKS = re.compile(r"[\r\n\t\v\f\u2028\u2029]+")


def inert(text: object) -> str:
    """``text`` as literal markdown on one line (safe inside a table cell)."""
    return _SPECIAL.sub(r"\\\1", _LINE_BREAKS.sub(" ", str(text)))


def fenced(text: str, info: str = "") -> list[str]:
    """``text`` as a fenced code block whose fence no line of it can close (a longer run of
    backticks than any inside: a spec value holding a fence stays inside the block)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{info}", text, fence]


def code_span(text: object) -> str:
    """``text`` as inline code on one line: literal, whatever it holds, also in a table cell.

    Backslash escapes do not work inside code, so the span's backtick fence is made longer than
    any run of backticks in the text, and ``|`` is written ``\\|`` (a table cell reads that as a
    literal pipe, inside code too).
    """
    value = _LINE_BREAKS.sub(" ", str(text))
    longest = max((len(run) for run in re.findall(r"`+", value)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") or not value.strip() else ""
    return f"{fence}{pad}{value.replace('|', chr(92) + '|')}{pad}{fence}"
