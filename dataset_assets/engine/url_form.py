"""The normal form of a URL, in Python, equal to the planner's DuckDB ``normalize_url_sql``.

Why both: the planner normalises millions of rows in SQL (``fetch_url``), while a removal list's
lines and the rows of a CLI run (which has no planner) are normalised here; a URL written two
ways must match the same way on either path. The patterns are shared with the planner, which
imports them from here, and a test checks the two implementations agree.
"""

from __future__ import annotations

import re

URL_WHITESPACE = " \t\n\r\x0b\x0c"
# scheme :// [userinfo@] host[:port] path?query [#fragment]
URL_PATTERN = r"^([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#@]*@)?([^/?#]*)([^#]*)"
# A usable authority: an IPv6 literal or a host without spaces, controls or URL delimiters,
# then an optional numeric port. Non-ASCII (IDN) hosts are allowed as they are.
HOSTPORT_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[^\x00-\x20\x7f/?#@:\[\]<>\"\\^`{|}%]+)(:[0-9]{0,5})?$"
# The host inside the authority ("user@host:port") of a normalised URL.
HOST_IN_AUTHORITY_PATTERN = r"^(?:[^@]*@)?(\[[^\]]*\]|[^:]*)"

_URL = re.compile(URL_PATTERN)
_HOSTPORT = re.compile(HOSTPORT_PATTERN)
_HOST_IN_AUTHORITY = re.compile(HOST_IN_AUTHORITY_PATTERN)


def _encode(text: str) -> str:
    """Percent-encode (UTF-8) every character outside printable ASCII; ``%XX`` stays as it is."""
    if all(33 <= ord(ch) <= 126 for ch in text):
        return text
    return "".join(
        ch if 33 <= ord(ch) <= 126 else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        for ch in text
    )


def normalize_url(url: str | None) -> str | None:
    """The http(s) URL in normal form, or None if it is not one (see ``normalize_url_sql``)."""
    if not url:
        return None
    match = _URL.match(url.strip(URL_WHITESPACE))
    if match is None:
        return None
    scheme, userinfo, hostport, rest = match.group(1), match.group(2) or "", match.group(3), match.group(4)
    if scheme.lower() not in ("http", "https") or not _HOSTPORT.match(hostport):
        return None
    path = _encode(rest)
    if rest == "" or rest.startswith("?"):
        path = "/" + path
    return f"{scheme.lower()}://{userinfo}{hostport.lower()}{path}"


def host_of(normalized_url: str) -> str:
    """The host (no userinfo, port or trailing dot) of a URL from :func:`normalize_url`."""
    authority = normalized_url.split("/", 3)[2]
    match = _HOST_IN_AUTHORITY.match(authority)
    return (match.group(1) if match else authority).rstrip(".")
