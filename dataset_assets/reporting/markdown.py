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
