"""Consent: the machine-readable ways a site says "not for AI training", and where each is read.

Modules: ``robots`` (robots.txt and ai.txt groups, RFC 9309 matching), ``usage_prefs``
(Content-Signal and IETF aipref Content-Usage), ``tdmrep`` (W3C TDMRep), ``origin_policy`` (an
origin's files and headers together: fine, refused, or unavailable), ``xmp`` (IPTC/PLUS
DataMining in the image's own bytes), ``blocklist`` (the run's removal list, read through ``io``). No
network here: the fetcher fetches, these decide.

Why one table: every refused row carries the signal that refused it (``SampleResult.opt_out``),
each shard's stats count them by these keys (``opt_outs``), and the UI, the card and README list
them from here, so a new signal is added in one place and can never be counted as a failure of
another kind (an unreachable robots.txt is an outage, not an opt-out, and carries no signal).
"""

from __future__ import annotations

# key in ``opt_outs`` -> where the signal is read, as the card and README describe it
SIGNALS: dict[str, str] = {
    "robots.txt": "robots.txt Disallow rules for our tokens, img2dataset's, or *",
    "content-signal": "Cloudflare Content-Signal `ai-train=no` in robots.txt",
    "content-usage": "IETF aipref Content-Usage `train-ai=n` (robots.txt rule or response header)",
    "tdmrep": "W3C TDMRep: /.well-known/tdmrep.json or the tdm-reservation response header",
    "ai.txt": "Spawning ai.txt (/ai.txt, robots syntax)",
    "x-robots-tag": "X-Robots-Tag response header directives",
    "xmp-datamining": "IPTC/PLUS DataMining in the image's own XMP",
    "blocklist": "the url_blocklist given for the run (URLs, URL sha256 digests or domains)",
}
