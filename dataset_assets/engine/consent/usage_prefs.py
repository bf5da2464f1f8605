"""Reading "may this be used to train AI?" out of Content-Usage and Content-Signal values.

Two vocabularies say it: the IETF aipref one (draft-ietf-aipref-vocab, attached by
draft-ietf-aipref-attach as the ``Content-Usage`` header and robots.txt rule) as a structured
field dictionary ``train-ai=n, search=y``, and Cloudflare's Content Signals Policy as
``Content-Signal: search=yes, ai-train=no`` in robots.txt. Building an image dataset is
collecting for training, so a refusal of training refuses our rows.

Where the texts leave room we read them the stricter way, so no refusal meant for us is
missed: labels of earlier aipref drafts still deployed are honoured (``ai`` and ``genai`` for
training, ``train-genai`` as a dataset may train a generative model, and the broader
``all``/``bots``/``tdm``, which refuse unless training is explicitly allowed: the more
specific label wins), keys are matched case-insensitively, and a member the strict
structured-field grammar would reject does not void the others.
"""

from __future__ import annotations

import re

# Labels whose ``n`` refuses training outright.
TRAINING_LABELS = ("train-ai", "train-genai", "ai", "genai")
# Broader categories (automated processing): their ``n`` refuses unless training is allowed.
BROADER_LABELS = ("all", "bots", "tdm")

_MEMBER = re.compile(r"^\s*([A-Za-z*][A-Za-z0-9_.*-]*)\s*(?:=\s*([^;]*))?")


def _dictionary(value: str) -> dict[str, str]:
    """The members of a structured-field dictionary: key -> bare value (parameters dropped).

    A member without ``=`` is boolean true (``?1``); the last of a repeated key wins, as in
    RFC 9651. Commas inside quoted strings do not split members.
    """
    members: dict[str, str] = {}
    for part in _split_members(value):
        match = _MEMBER.match(part)
        if match:
            members[match.group(1).lower()] = (match.group(2) or "?1").strip()
    return members


def _split_members(value: str) -> list[str]:
    """Split at commas outside quoted strings, in one pass (a hostile line can be 500 KiB)."""
    parts: list[str] = []
    start, quoted, escaped = 0, False, False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append(value[start:index])
            start = index + 1
    parts.append(value[start:])
    return parts


def content_usage_refusal(value: str) -> str | None:
    """The ``label=n`` of a Content-Usage value that refuses training, or None."""
    prefs = _dictionary(value)
    for label in TRAINING_LABELS:
        if prefs.get(label) == "n":
            return f"{label}=n"
    if prefs.get("train-ai") == "y":
        return None
    return next((f"{label}=n" for label in BROADER_LABELS if prefs.get(label) == "n"), None)


def content_signal_refusal(value: str) -> str | None:
    """``ai-train=no`` if a Content-Signal value says so, else None (search/ai-input do not
    concern a dataset)."""
    prefs = _dictionary(value)
    return "ai-train=no" if prefs.get("ai-train", "").lower() == "no" else None
