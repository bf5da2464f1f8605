"""robots.txt syntax (RFC 9309): groups, rules and matching, no I/O.

Python's ``urllib.robotparser`` predates the RFC: it ignores ``*`` and ``$`` in paths and
applies the first matching rule instead of the most specific one, so it both over- and
under-blocks. This is the RFC's algorithm (the longest matching pattern wins, ``allow`` wins a
tie), with the lines that later proposals add to a group read alongside: Cloudflare's
``Content-Signal`` and the IETF aipref ``Content-Usage`` rule. Spawning's ai.txt uses the same
syntax, so it is parsed here too.

Which groups apply: we answer to several product tokens (ours, the user's, and img2dataset's,
whose command lines we accept and which the most copied AI block lists name). RFC 9309 picks
the one group of the matching agent; with several tokens of ours a site may address any of
them, so each token's groups (merged, RFC 9309 §2.2.1) are judged on their own and a path is
refused when any of them refuses it. Merging them into one group instead would let an
``Allow: /`` for one token cancel a ``Disallow: /`` for another (allow wins a tie), which
under-honours a block that names us. Only when no group names any of our tokens does ``*``
apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# RFC 9309 §2.5: crawlers must parse at least 500 KiB; we stop there (for every policy file).
MAX_ROBOTS_BYTES = 500 * 1024


@dataclass(frozen=True)
class Rule:
    allow: bool
    pattern: str
    regex: re.Pattern[str]

    @property
    def line(self) -> str:
        return f"{'Allow' if self.allow else 'Disallow'}: {self.pattern}"


@dataclass(frozen=True)
class UsageRule:
    """A ``Content-Usage: [path] preference`` line; no path applies to every path."""

    pattern: str
    regex: re.Pattern[str]
    preference: str

    @property
    def line(self) -> str:
        return f"Content-Usage: {self.pattern + ' ' if self.pattern else ''}{self.preference}"


@dataclass
class RuleSet:
    """What one of our tokens (or ``*``) is told: its groups merged."""

    rules: list[Rule] = field(default_factory=list)
    usage: list[UsageRule] = field(default_factory=list)
    signals: list[str] = field(default_factory=list)  # Content-Signal values, origin-wide

    def blocking_rule(self, path: str) -> str | None:
        best: Rule | None = None
        for rule in self.rules:
            if rule.regex.match(path) and (
                best is None
                or len(rule.pattern) > len(best.pattern)
                or (len(rule.pattern) == len(best.pattern) and rule.allow and not best.allow)
            ):
                best = rule
        return None if best is None or best.allow else best.line

    def usage_rules(self, path: str) -> list[UsageRule]:
        """The Content-Usage rules for ``path``: those of the longest matching path (all of
        them: identical paths with different preferences are combined, the stricter wins)."""
        matching = [rule for rule in self.usage if rule.regex.match(path)]
        if not matching:
            return []
        longest = max(len(rule.pattern) for rule in matching)
        return [rule for rule in matching if len(rule.pattern) == longest]


@dataclass
class RobotsRules:
    """The rule sets that apply to us on one origin (one per token of ours named, else ``*``)."""

    sets: list[RuleSet] = field(default_factory=list)

    def blocking_rule(self, path: str) -> str | None:
        """The rule that forbids ``path`` (path plus query, as sent), or None if allowed."""
        if path == "/robots.txt":
            return None
        return next((line for rule_set in self.sets if (line := rule_set.blocking_rule(path))), None)

    def content_signals(self) -> list[str]:
        return [value for rule_set in self.sets for value in rule_set.signals]

    def usage_rules(self, path: str) -> list[UsageRule]:
        return [rule for rule_set in self.sets for rule in rule_set.usage_rules(path)]


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """RFC 9309 §2.2.3 pattern: ``*`` is any run of characters, a final ``$`` anchors the end;
    otherwise it matches a prefix of the path."""
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    return re.compile(regex + ("$" if anchored else ""))


def _usage_rule(value: str) -> UsageRule:
    """Split ``[path] preference``: a path starts with ``/`` and ends at the first blank."""
    pattern, preference = "", value
    if value.startswith("/"):
        pattern, _, preference = re.sub(r"[ \t]", " ", value, count=1).partition(" ")
    return UsageRule(pattern, compile_pattern(pattern), preference.strip())


def parse_robots(text: str, product_tokens: tuple[str, ...]) -> RobotsRules:
    """The rule sets for each of ``product_tokens`` that a group names, else that of ``*``.

    ``Content-Signal`` and ``Content-Usage`` lines before the first group apply to every agent
    (RFC 9309 would ignore them; a site that wrote them meant everyone).
    """
    groups: list[tuple[list[str], RuleSet]] = []
    top = RuleSet()
    agents: list[str] = []
    current = RuleSet()
    in_rules = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        key = key.lower()
        if key == "user-agent":
            if in_rules:
                groups.append((agents, current))
                agents, current, in_rules = [], RuleSet(), False
            agents.append(value.lower())
            continue
        target = current if agents else top
        if key in ("allow", "disallow") and agents:
            in_rules = True
            if value:  # an empty Disallow allows everything: no rule
                current.rules.append(Rule(key == "allow", value, compile_pattern(value)))
        elif key == "content-usage" and value:
            in_rules = bool(agents)
            target.usage.append(_usage_rule(value))
        elif key == "content-signal" and value:
            in_rules = bool(agents)
            target.signals.append(value)
    if agents:
        groups.append((agents, current))

    def merged(token: str) -> RuleSet | None:
        named = [rule_set for group_agents, rule_set in groups if token in group_agents]
        if not named:
            return None
        return RuleSet(
            [rule for s in named for rule in s.rules],
            [rule for s in (*named, top) for rule in s.usage],
            [value for s in (*named, top) for value in s.signals],
        )

    ours = [s for token in dict.fromkeys(t.lower() for t in product_tokens) if (s := merged(token))]
    if ours:
        return RobotsRules(ours)
    anyone = merged("*")
    if anyone is not None:
        return RobotsRules([anyone])
    return RobotsRules([top] if top.usage or top.signals else [])
