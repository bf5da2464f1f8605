"""W3C TDMRep (TDM Reservation Protocol): ``/.well-known/tdmrep.json`` and its header, no I/O.

A site reserves text-and-data-mining rights (the EU DSM Directive's Article 4 opt-out) with
``tdm-reservation: 1``, per path in the origin's tdmrep.json or per response in a header, and
may point to a licensing policy with ``tdm-policy``. ``0`` says the rights are not reserved;
no matching rule says nothing.

Matching follows the spec: ``location`` is a robots.txt-style pattern (``*``, final ``$``),
case sensitive, matched against the path; the most specific (longest) pattern wins and, for
equally long ones, the first in the file. Where the spec leaves room we refuse rather than
guess: the old draft's ``2`` (reserved, with a policy) and a ``"1"`` string reserve too. A
file that is not a JSON array of rules is no policy (the spec: the origin does not implement
the protocol), so an HTML error page served with 200 reserves nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from dataset_assets.engine.consent.robots import compile_pattern

TDMREP_PATH = "/.well-known/tdmrep.json"


@dataclass(frozen=True)
class TdmRule:
    location: str
    regex: re.Pattern[str]
    reserved: bool
    policy: str | None


@dataclass
class TdmRules:
    rules: list[TdmRule] = field(default_factory=list)

    def reservation(self, path: str) -> TdmRule | None:
        """The rule reserving ``path``, or None (allowed by a ``0`` rule, or no rule matches)."""
        best: TdmRule | None = None
        for rule in self.rules:
            if rule.regex.match(path) and (best is None or len(rule.location) > len(best.location)):
                best = rule
        return best if best is not None and best.reserved else None


def _reservation(value: object) -> bool | None:
    """True (reserved), False (not reserved), or None (a protocol error: unset)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str) and str(value).strip() in ("0", "1", "2"):
        return str(value).strip() != "0"
    return None


def parse_tdmrep(data: bytes) -> TdmRules:
    try:
        document = json.loads(data.decode("utf-8", errors="replace"))
    except ValueError:
        return TdmRules()
    if isinstance(document, dict):  # a lone rule where an array was meant
        document = [document]
    if not isinstance(document, list):
        return TdmRules()
    rules = []
    for entry in document:
        if not isinstance(entry, dict) or not isinstance(entry.get("location"), str):
            continue
        reserved = _reservation(entry.get("tdm-reservation"))
        if reserved is None:
            continue
        policy = entry.get("tdm-policy")
        location = entry["location"].strip()
        rules.append(
            TdmRule(
                location, compile_pattern(location), reserved, policy if isinstance(policy, str) else None
            )
        )
    return TdmRules(rules)


def header_reserves(values: list[str]) -> bool:
    """Whether ``tdm-reservation`` response header values reserve the rights."""
    return any(_reservation(value) for value in values)
