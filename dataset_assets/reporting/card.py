"""The dataset card: a README for the data, written next to it.

Whoever finds the shards later (a colleague, a training job's log, a data audit) should learn
from one file where the images came from, how they were filtered and processed, what failed,
which opt-outs were honoured, and what the images look like. It is a Hugging Face dataset
card (YAML front matter, then markdown), so the output folder can be published as it is: the
totals and pictures first, what explains the build (card_sections.py) next, the spec last.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from dataset_assets.engine.fetch import user_agent
from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.shards.formats import ShardReadError
from dataset_assets.engine.shards.layout import parquet_name, stats_name
from dataset_assets.engine.shards.registry import shard_format
from dataset_assets.engine.stats import SHORT_SIDE_BUCKETS, short_side_bucket
from dataset_assets.io.storage import OutputFolder, StorageOptions
from dataset_assets.reporting.card_sections import (
    SPEC_ANCHOR,
    BuildFacts,
    consent_section,
    contact_section,
    licence_section,
    limitations_section,
    provenance_section,
    spec_setting,
)
from dataset_assets.reporting.charts import Chart, column_chart, grouped, row_chart
from dataset_assets.reporting.frontmatter import front_matter, size_category, split_front_matter
from dataset_assets.reporting.markdown import code_span, fenced, inert
from dataset_assets.reporting.provenance import spec_hash
from dataset_assets.reporting.sample_schema import schema_section

CARD_NAME = "DATASET_CARD.md"
GRID_NAME = "DATASET_CARD_samples.jpg"
CHART_NAME = "DATASET_CARD_{}.png"  # beside the card, so its relative links resolve anywhere
CHART_FAILURE_REASONS = 10
THUMB = 96
GRID_COLUMNS = 8
GRID_ROWS = 4
SIZE_BUCKETS = SHORT_SIDE_BUCKETS
SPEC_HEADING = "Appendix: spec"


@dataclass
class CardInputs:
    title: str
    spec: dict[str, Any]
    shard_keys: list[str]
    options: DownloadOptions
    filter_report: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # How to read the spec's url_list (remote lists), to hash it for the Provenance section.
    input_storage_options: StorageOptions | None = None


@dataclass
class Card:
    """``markdown``: the whole DATASET_CARD.md, YAML front matter first."""

    markdown: str
    grid_jpeg: bytes | None
    totals: dict[str, float]
    charts: list[Chart] = field(default_factory=list)


@dataclass
class _ShardSeries:
    """Per-shard figures in shard order, for the charts (one small record per shard)."""

    keys: list[str] = field(default_factory=list)
    success_rates: list[float] = field(default_factory=list)
    images_per_sec: list[float] = field(default_factory=list)

    def add(self, key: str, rows: int, successes: int, duration: float) -> None:
        self.keys.append(key)
        self.success_rates.append(successes / rows if rows else 0.0)
        # Stored images per second: a shard of failures is fast, and must not look productive.
        self.images_per_sec.append(successes / duration if duration > 0 else 0.0)


def _output(output_folder: str | OutputFolder) -> OutputFolder:
    return output_folder if isinstance(output_folder, OutputFolder) else OutputFolder(output_folder)


def build_card(output_folder: str | OutputFolder, inputs: CardInputs) -> Card:
    """``output_folder``: a path/URL, or an OutputFolder (remote storage with its options).

    Totals, statuses, opt-outs and the size histogram come from the shards' stats (one small
    read per shard); only the thumbnail grid reads images, the first few.
    """
    output = _output(output_folder)
    statuses: Counter[str] = Counter()
    opt_outs: Counter[str] = Counter()
    totals = Counter({"shards": 0, "rows": 0, "successes": 0, "bytes_written": 0})
    short_sides: Counter[int] = Counter()
    series = _ShardSeries()
    facts = BuildFacts()
    for shard in inputs.shard_keys:
        try:
            stats = output.read_json(stats_name(shard))
            counts = (int(stats["count"]), int(stats["successes"]), int(stats.get("bytes_written", 0)))
            duration = float(stats.get("duration", 0.0))
            shard_statuses = Counter({str(k): int(v) for k, v in stats["status_dict"].items()})
            shard_opt_outs = Counter({str(k): int(v) for k, v in stats.get("opt_outs", {}).items()})
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue  # missing or unreadable: not complete (verification names it)
        totals.update(shards=1, rows=counts[0], successes=counts[1], bytes_written=counts[2])
        series.add(shard, counts[0], counts[1], duration)
        statuses.update(shard_statuses)
        opt_outs.update(shard_opt_outs)
        short_sides.update(_short_sides(output, shard, stats, inputs.options))
        _observe(facts, output, shard, stats, inputs.options)
    grid = _thumbnail_grid(output, inputs)
    rate = totals["successes"] / totals["rows"] if totals["rows"] else 0.0
    charts = _charts(series, statuses, short_sides)
    body = _render(inputs, totals, rate, statuses, opt_outs, short_sides, grid is not None, charts, facts)
    markdown = f"{_front_matter(inputs, totals)}\n\n{body}"
    return Card(markdown, grid, {**totals, "success_rate": rate}, charts)


def _observe(
    facts: BuildFacts, output: OutputFolder, shard: str, stats: dict[str, Any], options: DownloadOptions
) -> None:
    """Fold one shard's times and input fingerprint in; read the first parquet's schema (a footer)."""
    # An older or hand-edited stats file: the window says what the others recorded.
    with contextlib.suppress(TypeError, ValueError):
        facts.window.add(float(stats.get("start_time") or 0), float(stats.get("end_time") or 0))
    fingerprint = stats.get("input_fingerprint")
    if isinstance(fingerprint, str) and fingerprint:
        facts.fingerprints.append((shard, fingerprint))
    if facts.parquet_schema is None and shard_format(options.output_format).writes_parquet:
        try:
            with output.fs.open(output.path(parquet_name(shard)), "rb") as handle:
                facts.parquet_schema = pq.read_schema(handle).remove_metadata()
        except (OSError, ValueError, pa.ArrowException):
            pass


def _front_matter(inputs: CardInputs, totals: Counter[str]) -> str:
    """Hugging Face's dataset-card metadata; every value from the spec is quoted by the emitter."""
    return front_matter(
        {
            "pretty_name": inputs.title,
            "license": spec_setting(inputs.spec, "card_license"),
            "task_categories": list(spec_setting(inputs.spec, "card_task_categories")),
            "size_categories": [size_category(int(totals["successes"]))],
            "tags": list(spec_setting(inputs.spec, "card_tags")),
        }
    )


def _charts(series: _ShardSeries, statuses: Counter[str], short_sides: Counter[int]) -> list[Chart]:
    """Success rate and images/s by shard, failures by reason, original sizes: from stats only."""
    if not series.keys:
        return []
    rates, group = grouped(series.success_rates)
    speeds, _ = grouped(series.images_per_sec)
    span = dict(first_label=f"shard {series.keys[0]}", last_label=f"shard {series.keys[-1]}")
    per = f" (columns: means of {group} shards)" if group > 1 else ""
    charts = [
        Chart(
            "success_rate",
            "Success rate by shard",
            column_chart(
                f"Success rate by shard{per}", rates, top=1.0, value_label=lambda v: f"{v:.0%}", **span
            ),
        ),
        Chart(
            "images_per_sec",
            "Images stored per second, by shard",
            column_chart(f"Images stored per second, by shard{per}", speeds, **span),
        ),
    ]
    failures = [(m, float(n)) for m, n in statuses.most_common() if m != "success"][:CHART_FAILURE_REASONS]
    if failures:
        charts.append(
            Chart("failures", "Failures by reason", row_chart("Failures by reason (rows)", failures))
        )
    if short_sides:
        rows = [(label, float(short_sides.get(low, 0))) for low, label in _size_buckets()]
        charts.append(
            Chart("sizes", "Original sizes", row_chart("Original size, shorter side (px): images", rows))
        )
    return charts


def _size_buckets() -> list[tuple[int, str]]:
    bounds = (*SIZE_BUCKETS[1:], None)
    return [
        (low, f"{low}-{high - 1}" if high else f">= {low}")
        for low, high in zip(SIZE_BUCKETS, bounds, strict=True)
    ]


def _short_sides(
    output: OutputFolder, shard: str, stats: dict[str, Any], options: DownloadOptions
) -> Counter[int]:
    """The shard's rows by short-side bucket: from its stats; from its parquet for older stats."""
    recorded = stats.get("short_sides")
    if isinstance(recorded, dict):
        try:
            return Counter({int(bucket): int(n) for bucket, n in recorded.items()})
        except (TypeError, ValueError):
            return Counter()
    if not shard_format(options.output_format).writes_parquet:
        return Counter()
    try:
        with output.fs.open(output.path(parquet_name(shard)), "rb") as handle:
            table = pq.read_table(handle, columns=["original_width", "original_height"])
    except (OSError, ValueError, pa.ArrowException):
        return Counter()
    widths = table.column("original_width").to_pylist()
    heights = table.column("original_height").to_pylist()
    pairs = zip(widths, heights, strict=True)
    return Counter(short_side_bucket(w, h) for w, h in pairs if w is not None and h is not None)


def write_card(output_folder: str | OutputFolder, card: Card) -> list[str]:
    output = _output(output_folder)
    paths = []
    for chart in card.charts:
        name = CHART_NAME.format(chart.name)
        tmp, handle = output.open_tmp(name)
        with handle:
            handle.write(chart.png)
        output.commit(tmp, name)
        paths.append(output.path(name))
    if card.grid_jpeg is not None:
        tmp, handle = output.open_tmp(GRID_NAME)
        with handle:
            handle.write(card.grid_jpeg)
        output.commit(tmp, GRID_NAME)
        paths.append(output.path(GRID_NAME))
    tmp, handle = output.open_tmp(CARD_NAME)
    with handle:
        handle.write(card.markdown.encode())
    output.commit(tmp, CARD_NAME)
    paths.append(output.path(CARD_NAME))
    return paths


def card_images(card: Card) -> dict[str, tuple[str, bytes]]:
    """The files the card links, by the name it links them under: (MIME type, bytes)."""
    images = {CHART_NAME.format(chart.name): ("image/png", chart.png) for chart in card.charts}
    if card.grid_jpeg is not None:
        images[GRID_NAME] = ("image/jpeg", card.grid_jpeg)
    return images


def ui_markdown(card: Card) -> str:
    """The card as Dagster's asset page shows it: images inlined, front matter as a code block.

    The page has no folder to resolve ``DATASET_CARD_*.png`` against, so each linked image is
    inlined as a data URI (here only; the file on disk keeps its links). The page's renderer
    does not know front matter and would show the YAML as a paragraph above the title, so it
    becomes a fenced block near the end, before the spec: still there to review before
    publishing (licence, size category), without pushing the totals down.
    """
    meta, body = split_front_matter(card.markdown)
    for name, (mime, data) in card_images(card).items():
        body = body.replace(f"]({name})", f"](data:{mime};base64,{base64.b64encode(data).decode()})")
    if meta is None:
        return body
    code = "\n".join(fenced(meta, "yaml"))
    block = (
        f"## Hugging Face metadata\n\n{CARD_NAME} starts with this front matter, which the Hugging "
        f"Face Hub reads:\n\n{code}\n\n"
    )
    heading = f"## {SPEC_HEADING}"
    at = body.rfind(f"\n{heading}\n")
    return body[: at + 1] + block + body[at + 1 :] if at >= 0 else f"{body.rstrip()}\n\n{block}"


def _render(
    inputs: CardInputs,
    totals: Counter[str],
    rate: float,
    statuses: Counter[str],
    opt_outs: Counter[str],
    short_sides: Counter[int],
    has_grid: bool,
    charts: list[Chart],
    facts: BuildFacts,
) -> str:
    """The card below its front matter: what a reader needs first (totals, pictures) at the top,
    the full spec at the end."""
    options = inputs.options
    consent, opted_out = consent_section(inputs, opt_outs)
    lines = [
        f"# {inert(inputs.title)}",
        "",
        f"{totals['successes']} images from {totals['rows']} input rows ({rate:.1%} stored), built "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC} by dataset_assets from "
        f"{code_span(inputs.spec.get('url_list'))}. Limitations, consent and contact are below; the "
        f"full spec is in the [appendix](#{SPEC_ANCHOR}).",
        "",
        "## Totals",
        "",
        "| | |",
        "|---|---|",
        f"| shards | {totals['shards']} of {len(inputs.shard_keys)} registered |",
        f"| input rows | {totals['rows']} |",
        f"| images stored | {totals['successes']} |",
        f"| success rate | {rate:.1%} |",
        f"| bytes written | {totals['bytes_written']:,} |",
        f"| format | {options.output_format}, {options.encode_format} q{options.encode_quality}, "
        f"{options.resize_mode} {options.image_size}px |",
        "",
    ]
    if charts:
        lines += ["## At a glance", ""]
        lines += [f"![{chart.title}]({CHART_NAME.format(chart.name)})" for chart in charts]
        lines.append("")
    if has_grid:
        lines += ["## Samples", "", f"![samples]({GRID_NAME})", ""]
    lines += provenance_section(inputs, facts)
    lines += schema_section(options, facts.parquet_schema)
    if inputs.filter_report:
        report = inputs.filter_report
        lines += ["## URL-list filtering", "", "| rule | rows removed |", "|---|---|"]
        lines += [f"| {rule} | {count} |" for rule, count in report.get("removed", {}).items()]
        lines += [f"| **kept** | **{report.get('rows_out')}** of {report.get('rows_in')} |", ""]
        for rule, why in report.get("skipped_rules", {}).items():
            lines.append(f"- `{rule}` not applied: {why}")
        lines.append("")
    lines += ["## Status breakdown", "", "| status / error | rows |", "|---|---|"]
    lines += [f"| {inert(message)} | {n} |" for message, n in statuses.most_common(20)]
    lines += ["", "## Original image sizes (shorter side, px)", "", "| range | images |", "|---|---|"]
    lines += _histogram(short_sides)
    lines += [
        "",
        "## Crawling etiquette",
        "",
        f"- User agent: `{user_agent(options.user_agent_token)}`",
        f"- X-Robots-Tag directives honoured: {', '.join(options.disallowed_header_directives) or 'none'}",
        f"- Rows not stored because the owner opted out: {opted_out} (see Consent)",
        f"- At most {options.max_connections_per_host} connections per host for the whole run;"
        f" total deadline {options.timeout:g}s per request",
        "",
        *consent,
        *licence_section(inputs),
        *limitations_section(inputs, totals, rate, statuses, facts),
        *contact_section(inputs),
    ]
    if inputs.verification:
        failed = [n for n, c in inputs.verification.get("checks", {}).items() if not c["passed"]]
        lines += ["## Verification", "", f"Checks failed: {', '.join(failed) or 'none'}", ""]
    lines += [
        f"## {SPEC_HEADING}",
        "",
        f"The spec this dataset was built with (secrets removed; sha256 `{spec_hash(inputs.spec)}`).",
        "",
        *fenced(yaml.safe_dump(inputs.spec, sort_keys=True).rstrip(), "yaml"),
        "",
    ]
    return "\n".join(lines)


def _histogram(counts: Counter[int]) -> list[str]:
    rows = []
    for low, high in zip(SIZE_BUCKETS, (*SIZE_BUCKETS[1:], None), strict=True):
        label = f"{low}-{high - 1}" if high else f"≥ {low}"
        rows.append(f"| {label} | {counts.get(low, 0)} |")
    return rows


def _thumbnail_grid(output: OutputFolder, inputs: CardInputs) -> bytes | None:
    """A grid of the first stored images (webdataset and files formats)."""
    wanted = GRID_COLUMNS * GRID_ROWS
    thumbs: list[np.ndarray] = []
    for data in _first_images(output, inputs, wanted):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            continue
        h, w = image.shape[:2]
        scale = THUMB / max(h, w)
        small = cv2.resize(
            image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
        tile = np.full((THUMB, THUMB, 3), 255, np.uint8)
        y, x = (THUMB - small.shape[0]) // 2, (THUMB - small.shape[1]) // 2
        tile[y : y + small.shape[0], x : x + small.shape[1]] = small
        thumbs.append(tile)
    if not thumbs:
        return None
    while len(thumbs) % GRID_COLUMNS:
        thumbs.append(np.full((THUMB, THUMB, 3), 255, np.uint8))
    rows = [np.hstack(thumbs[i : i + GRID_COLUMNS]) for i in range(0, len(thumbs), GRID_COLUMNS)]
    ok, encoded = cv2.imencode(".jpg", np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return encoded.tobytes() if ok else None


def _first_images(output: OutputFolder, inputs: CardInputs, wanted: int) -> list[bytes]:
    found: list[bytes] = []
    fmt = shard_format(inputs.options.output_format)
    for shard in inputs.shard_keys:
        if len(found) >= wanted:
            break
        if not output.exists(stats_name(shard)):
            continue
        try:
            for sample in fmt.read_samples(output, shard, inputs.options.encode_format):
                found.append(sample.image)
                if len(found) >= wanted:
                    break
        except (ShardReadError, OSError, ValueError):
            continue  # verification reports it; the card shows the images it can read
    return found


def card_spec(spec_values: dict[str, Any]) -> dict[str, Any]:
    """The spec as shown on the card: JSON-safe and without secrets-looking keys."""
    return json.loads(json.dumps({k: v for k, v in spec_values.items() if "secret" not in k}, default=str))
