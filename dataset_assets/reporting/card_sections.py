"""The dataset card's sections that explain the build: provenance, consent, licence, limitations,
contact. Each is written from the build's own figures (stats, filter report, spec), never by hand,
so a card cannot claim a filter or a check the build did not run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from dataset_assets import catalogue
from dataset_assets.engine.consent import SIGNALS
from dataset_assets.engine.options import DownloadOptions
from dataset_assets.reporting.markdown import code_span, inert
from dataset_assets.reporting.provenance import (
    CrawlWindow,
    InputDigest,
    code_version,
    input_digest,
    rows_fingerprint,
    spec_hash,
    utc,
)

if TYPE_CHECKING:
    from dataset_assets.reporting.card import CardInputs

SPEC_ANCHOR = "appendix-spec"  # the anchor Hugging Face and GitHub give the spec's heading

# The option that turns each signal's check on (a true value = checked). An option this
# version does not declare counts as on: each is on by default where it exists.
SIGNAL_OPTIONS = {
    "robots.txt": "respect_robots_txt",
    "content-signal": "respect_content_signal",
    "content-usage": "respect_content_usage",
    "tdmrep": "respect_tdmrep",
    "ai.txt": "respect_ai_txt",
    "x-robots-tag": "disallowed_header_directives",
    "xmp-datamining": "respect_xmp_datamining",
    "blocklist": "url_blocklist",
}
# The planner's rule that removes a signal's rows before sharding (counted in its report).
PLANNER_RULES = {"blocklist": "url_blocklist"}


@dataclass
class BuildFacts:
    """What the shards' stats say about their build: when it ran and from which rows."""

    window: CrawlWindow = field(default_factory=CrawlWindow)
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    parquet_schema: pa.Schema | None = None


def spec_setting(spec: dict[str, Any], name: str) -> Any:
    """A card option from the spec shown on the card, else its declared default (declared once)."""
    return spec[name] if name in spec else catalogue.by_name()[name].default("spec")


def provenance_section(inputs: CardInputs, facts: BuildFacts) -> list[str]:
    """Where the data came from, as hashes and times a reader can check against their copy."""
    spec = inputs.spec
    url_list = spec.get("url_list")
    window = facts.window
    lines = ["## Provenance", "", "| | |", "|---|---|"]
    lines.append(f"| URL list | {code_span(url_list) if url_list else 'not recorded'} |")
    if url_list:
        lines.append(f"| URL list hash | {_input_hash(inputs, str(url_list))} |")
    if facts.fingerprints:
        shards = len(facts.fingerprints)
        lines.append(
            f"| planned rows fingerprint | `{rows_fingerprint(facts.fingerprints)}` "
            f"(blake2b over the input fingerprints recorded by {shards} shard(s)) |"
        )
    lines += [
        f"| spec sha256 | `{spec_hash(spec)}` (the [appendix](#{SPEC_ANCHOR})'s spec as sorted, "
        "compact JSON) |",
        f"| code | `{code_version()}` (the code that wrote this card) |",
        f"| crawl start | {utc(window.start) if window.start else 'not recorded'} |",
        f"| crawl end | {utc(window.end) if window.end else 'not recorded'} |",
        "",
        "Crawl times are the earliest start and latest end recorded in the shards' stats.",
        "",
    ]
    return lines


def _input_hash(inputs: CardInputs, url_list: str) -> str:
    try:
        digest = input_digest(
            url_list, str(inputs.spec.get("input_format", "txt")), inputs.input_storage_options
        )
    except (OSError, ValueError) as error:
        return (
            f"not readable now: {inert(str(error).splitlines()[0] if str(error) else type(error).__name__)}"
        )
    return _describe_digest(digest)


def _describe_digest(digest: InputDigest) -> str:
    files = f"{digest.files} file{'s' if digest.files != 1 else ''}, {digest.bytes:,} bytes"
    if digest.kind == "listing":
        return (
            f"listing sha256 `{digest.digest}` ({files}: names, sizes and versions; too large to hash here)"
        )
    what = "of the file" if digest.files == 1 else "of the files' sha256 digests, one a line"
    return f"sha256 `{digest.digest}` ({what}; {files}; as read when this card was written)"


def licence_section(inputs: CardInputs) -> list[str]:
    licence = spec_setting(inputs.spec, "card_license")
    lines = ["## Licence", ""]
    if licence in ("other", "unknown"):
        lines.append(
            f"`license: {licence}`: each image keeps the licence of its source, which this build did "
            "not check. This dataset stores URLs, captions and resized copies for research use."
        )
    else:
        lines.append(
            f"`license: {inert(licence)}` (the spec's card_license) covers this compilation: the URLs, "
            "captions and metadata. Each image keeps the licence of its source, which this build did "
            "not check."
        )
    lines += [
        "Check the source terms before redistributing, and honour removal requests by deleting the",
        "rows by key.",
        "",
    ]
    return lines


def limitations_section(
    inputs: CardInputs, totals: Counter[str], rate: float, statuses: Counter[str], facts: BuildFacts
) -> list[str]:
    """What the data is not, in this build's own figures: written from the stats, never by hand."""
    options, spec = inputs.options, inputs.spec
    failed = totals["rows"] - totals["successes"]
    lines = ["## Limitations", ""]
    if totals["rows"]:
        reasons = [(m, n) for m, n in statuses.most_common() if m != "success"][:3]
        main = "; ".join(f"{inert(m)}: {n} ({n / failed:.0%} of failures)" for m, n in reasons)
        lines.append(
            f"- {failed} of {totals['rows']} input rows ({1 - rate:.1%}) were not stored"
            + (f". Main reasons: {main}." if main else ".")
        )
    missing = len(inputs.shard_keys) - totals["shards"]
    if missing:
        lines.append(
            f"- {missing} of {len(inputs.shard_keys)} shards are not complete; their rows are not counted."
        )
    if options.caption_col:
        lines.append(
            "- Captions are the URL list's text (usually alt-text) as given: not filtered, checked or "
            "corrected. They may be wrong, offensive or contain personal data."
        )
    else:
        lines.append("- No captions: the URL list's text was not kept (caption_col is unset).")
    lines.append(
        "- Licences of the source images were not checked; see Licence. Opt-outs were read at crawl "
        "time only: a site that opts out later is not reflected until the dataset is rebuilt."
    )
    lines.append(
        f"- Images are re-encoded copies ({options.encode_format}, {options.resize_mode} to "
        f"{options.image_size}px), not the originals; original_width and original_height keep the "
        "downloaded sizes."
    )
    punsafe = spec.get("max_punsafe")
    if punsafe is None:
        lines.append("- No NSFW filter was applied (max_punsafe is unset): unsafe images may be included.")
    else:
        lines.append(
            f"- NSFW images were removed only by the URL list's score (max_punsafe {punsafe}), a model's "
            "estimate: some unsafe images may remain."
        )
    if "duplicate" in (inputs.filter_report or {}).get("removed", {}):
        lines.append(
            "- Duplicates were removed by normalised URL only: the same image at two URLs is kept twice."
        )
    else:
        lines.append("- No de-duplication is recorded for this build (no URL-list filter report).")
    if options.bbox_col:
        lines.append(
            f"- Only the boxes the URL list gives ({inert(options.bbox_col)}) were blurred: faces it "
            "does not list are not."
        )
    else:
        lines.append("- Faces and other personal features were not blurred (bbox_col is unset).")
    unchecked = [signal for signal in SIGNALS if signal != "blocklist" and not checked(options, signal)]
    if unchecked:
        lines.append(
            f"- These opt-out signals were not checked: {', '.join(unchecked)}; rows they would have "
            "refused may be included (see Consent)."
        )
    if not facts.window.start:
        lines.append("- The shards' stats record no crawl times: when the images were fetched is unknown.")
    failed_checks = [
        n for n, c in ((inputs.verification or {}).get("checks") or {}).items() if not c.get("passed")
    ]
    if failed_checks:
        lines.append(f"- Verification checks failed: {', '.join(map(inert, failed_checks))}.")
    lines.append("")
    return lines


def contact_section(inputs: CardInputs) -> list[str]:
    contact = spec_setting(inputs.spec, "card_contact")
    lines = ["## Contact", ""]
    if contact:
        lines.append(f"Questions and removal requests: {inert(contact)}")
    else:
        lines.append("No contact was given for this dataset (the spec's card_contact is unset).")
    lines.append("")
    return lines


def checked(options: DownloadOptions, signal: str) -> bool:
    name = SIGNAL_OPTIONS.get(signal)
    return bool(getattr(options, name, True)) if name else True


def consent_section(inputs: CardInputs, opt_outs: Counter[str]) -> tuple[list[str], int]:
    """The Consent section (each signal: checked or not, rows refused) and the total refused.

    Rows a signal refused at download time come from the shards' ``opt_outs``; rows the planner
    removed for it before sharding (the url_blocklist) from the filter report. Outages (an
    unreachable robots.txt) are failures, never opt-outs, and are not counted here.
    """
    options = inputs.options
    removed = (inputs.filter_report or {}).get("removed", {})
    lines = [
        "## Consent",
        "",
        "Machine-readable opt-outs this build checked, and the rows each one refused.",
        "",
        "| signal | where it is read | checked | rows refused |",
        "|---|---|---|---|",
    ]
    total = 0
    for signal, where in SIGNALS.items():
        on = checked(options, signal)
        refused = int(opt_outs.get(signal, 0))
        before = int(removed.get(PLANNER_RULES.get(signal, ""), 0))
        total += refused + before
        count = f"{refused + before} ({before} removed before download)" if before else str(refused)
        lines.append(f"| {signal} | {where} | {'yes' if on else 'no'} | {count} |")
    others = {k: v for k, v in opt_outs.items() if k not in SIGNALS}
    for signal, refused in sorted(others.items()):  # a signal of a newer engine than this card
        total += int(refused)
        lines.append(f"| {inert(signal)} | | yes | {int(refused)} |")
    lines += [f"| **total** | | | **{total}** |", ""]
    if getattr(options, "url_blocklist", None):
        lines += [f"- url_blocklist: {inert(options.url_blocklist)}", ""]
    return lines, total
