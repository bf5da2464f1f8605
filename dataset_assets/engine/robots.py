"""robots.txt rules (RFC 9309): parsing and matching, no I/O.

Python's ``urllib.robotparser`` predates the RFC: it ignores ``*`` and ``$`` in paths and
applies the first matching rule instead of the most specific one, so it both over- and
under-blocks. This is the RFC's algorithm: the group for our product token (else ``*``), the
longest matching pattern wins, ``allow`` wins a tie.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# RFC 9309 §2.5: crawlers must parse at least 500 KiB; we stop there.
MAX_ROBOTS_BYTES = 500 * 1024


@dataclass(frozen=True)
class Rule:
    allow: bool
    pattern: str
    regex: re.Pattern[str]

    @property
    def line(self) -> str:
        return f"{'Allow' if self.allow else 'Disallow'}: {self.pattern}"


@dataclass
class RobotsRules:
    """The rules that apply to us on one origin."""

    rules: list[Rule] = field(default_factory=list)
    # Set when robots.txt could not be read (timeout, 5xx, 429): the site said nothing, so the
    # fetcher fails its rows for now (RFC 9309 §2.3.1.4) without calling that an opt-out.
    unavailable_reason: str | None = None

    def blocking_rule(self, path: str) -> str | None:
        """The rule that forbids ``path`` (path plus query, as sent), or None if allowed."""
        if path == "/robots.txt":
            return None
        best: Rule | None = None
        for rule in self.rules:
            if rule.regex.match(path) and (
                best is None
                or len(rule.pattern) > len(best.pattern)
                or (len(rule.pattern) == len(best.pattern) and rule.allow and not best.allow)
            ):
                best = rule
        return None if best is None or best.allow else best.line


def _compile(pattern: str) -> re.Pattern[str]:
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    return re.compile(regex + ("$" if anchored else ""))


def parse_robots(text: str, product_tokens: tuple[str, ...]) -> RobotsRules:
    """The rules of the groups naming one of ``product_tokens`` (in order), else of ``*``."""
    groups: list[tuple[list[str], list[Rule]]] = []
    agents: list[str] = []
    rules: list[Rule] = []
    in_rules = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        key = key.lower()
        if key == "user-agent":
            if in_rules:
                groups.append((agents, rules))
                agents, rules, in_rules = [], [], False
            agents.append(value.lower())
        elif key in ("allow", "disallow") and agents:
            in_rules = True
            if value:  # an empty Disallow allows everything: no rule
                rules.append(Rule(key == "allow", value, _compile(value)))
    if agents:
        groups.append((agents, rules))
    for token in (*(t.lower() for t in product_tokens), "*"):
        selected = [group_rules for group_agents, group_rules in groups if token in group_agents]
        if selected:  # all groups naming the token are merged (RFC 9309 §2.2.1)
            return RobotsRules([rule for group_rules in selected for rule in group_rules])
    return RobotsRules()
