"""What an origin's policy files and a response's headers say about using its images, no I/O.

Why one place: robots.txt (with its Content-Signal and Content-Usage lines), tdmrep.json and
ai.txt are each fetched once per origin (see ``Fetcher``), and one judgement turns them into
either nothing (fetch it), a refusal naming the signal, the file and the origin (an opt-out,
counted in the consent ledger under a key of :data:`consent.SIGNALS`), or an outage (a file
we needed could not be read: the row fails for now and is not called an opt-out). Each signal
has its own option, and a file is fetched only when an option that reads it is on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from multidict import CIMultiDictProxy

from dataset_assets.engine.consent.robots import RobotsRules, parse_robots
from dataset_assets.engine.consent.tdmrep import TDMREP_PATH, TdmRules, header_reserves, parse_tdmrep
from dataset_assets.engine.consent.usage_prefs import content_signal_refusal, content_usage_refusal

ROBOTS_PATH = "/robots.txt"
AI_TXT_PATH = "/ai.txt"
MAX_QUOTED = 200  # characters of a site's own text (a rule, a policy URL) quoted in a message


class PolicyOptions(Protocol):
    respect_robots_txt: bool
    respect_content_signal: bool
    respect_content_usage: bool
    respect_tdmrep: bool
    respect_ai_txt: bool


@dataclass(frozen=True)
class Unavailable:
    """A policy file that could not be read (timeout, connection failure, 5xx, 429).

    ``unreachable``: the origin itself could not be reached (no answer at all), so its other
    files are not asked either this time.
    """

    reason: str
    unreachable: bool = False


@dataclass(frozen=True)
class Verdict:
    message: str
    opt_out: str | None  # None: an outage, not the site's refusal


PolicyFile = RobotsRules | TdmRules | Unavailable


def files_to_fetch(options: PolicyOptions) -> tuple[str, ...]:
    """The per-origin files the enabled options read; none of them when all are off."""
    paths = []
    if options.respect_robots_txt or options.respect_content_signal or options.respect_content_usage:
        paths.append(ROBOTS_PATH)
    if options.respect_tdmrep:
        paths.append(TDMREP_PATH)
    if options.respect_ai_txt:
        paths.append(AI_TXT_PATH)
    return tuple(paths)


def no_policy(path: str) -> RobotsRules | TdmRules:
    """What a missing file (4xx) says: nothing."""
    return TdmRules() if path == TDMREP_PATH else RobotsRules()


def parse_policy(path: str, data: bytes, tokens: tuple[str, ...]) -> RobotsRules | TdmRules:
    if path == TDMREP_PATH:
        return parse_tdmrep(data)
    return parse_robots(data.decode("utf-8", errors="replace"), tokens)


def _quoted(text: str) -> str:
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED] + "…"


def _name(path: str) -> str:
    return path if path == TDMREP_PATH else path.lstrip("/")


def judge(origin: str, path: str, files: Mapping[str, PolicyFile], options: PolicyOptions) -> Verdict | None:
    """Whether ``path`` (path and query, as it would be sent) may be fetched from ``origin``.

    A refusal by any file that was read wins over another file's outage: the site's answer is
    known, and it is recorded as the opt-out it is.
    """
    robots = files.get(ROBOTS_PATH)
    if isinstance(robots, RobotsRules):
        if options.respect_robots_txt and (rule := robots.blocking_rule(path)):
            return Verdict(f"disallowed by robots.txt of {origin} ({_quoted(rule)})", "robots.txt")
        if options.respect_content_signal:
            for value in robots.content_signals():
                if refusal := content_signal_refusal(value):
                    return Verdict(
                        f"disallowed by Content-Signal {refusal} in robots.txt of {origin}", "content-signal"
                    )
        if options.respect_content_usage:
            for usage in robots.usage_rules(path):
                if refusal := content_usage_refusal(usage.preference):
                    return Verdict(
                        f"disallowed by Content-Usage {refusal} in robots.txt of {origin} "
                        f"({_quoted(usage.line)})",
                        "content-usage",
                    )
    tdm = files.get(TDMREP_PATH)
    if options.respect_tdmrep and isinstance(tdm, TdmRules) and (reserving := tdm.reservation(path)):
        policy = f"; policy: {_quoted(reserving.policy)}" if reserving.policy else ""
        return Verdict(
            f"disallowed by TDMRep tdm-reservation=1 in {TDMREP_PATH} of {origin} "
            f"(location {_quoted(reserving.location)!r}{policy})",
            "tdmrep",
        )
    ai_txt = files.get(AI_TXT_PATH)
    if options.respect_ai_txt and isinstance(ai_txt, RobotsRules) and (rule := ai_txt.blocking_rule(path)):
        return Verdict(f"disallowed by ai.txt of {origin} ({_quoted(rule)})", "ai.txt")
    for file_path, loaded in files.items():
        if isinstance(loaded, Unavailable):
            return Verdict(
                f"{_name(file_path)} of {origin} unavailable ({loaded.reason}); not fetched, retry later",
                None,
            )
    return None


def header_verdict(origin: str, headers: CIMultiDictProxy[str], options: PolicyOptions) -> Verdict | None:
    """A refusal by the image response's own Content-Usage or tdm-reservation header."""
    if options.respect_content_usage:
        usage = headers.getall("Content-Usage", [])
        if usage and (refusal := content_usage_refusal(", ".join(usage))):
            return Verdict(
                f"disallowed by Content-Usage {refusal} response header of {origin}", "content-usage"
            )
    if options.respect_tdmrep and header_reserves(headers.getall("tdm-reservation", [])):
        policy = headers.get("tdm-policy")
        suffix = f" (policy: {_quoted(policy)})" if policy else ""
        return Verdict(
            f"disallowed by TDMRep tdm-reservation=1 response header of {origin}{suffix}", "tdmrep"
        )
    return None
