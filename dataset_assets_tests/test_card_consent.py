"""The dataset card's Consent section: every signal, whether it was checked, and what it refused."""

from __future__ import annotations

from pathlib import Path

from markdown_it import MarkdownIt

from dataset_assets.assets.shards import shard_metadata
from dataset_assets.engine.consent import SIGNALS
from dataset_assets.engine.runner import download_shard
from dataset_assets.reporting.card import CardInputs, build_card
from dataset_assets.reporting.verify import verify_dataset
from dataset_assets_tests.conftest import local_options, rows
from dataset_assets_tests.fakeweb.server import ImageServer


def _consent_rows(markdown: str) -> dict[str, list[str]]:
    section = markdown.split("## Consent")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    return {
        cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table)
    }


def test_consent_section_lists_each_signal_with_its_counts(image_server: ImageServer, tmp_path: Path) -> None:
    listing = tmp_path / "removals.txt"
    listing.write_text(f"{image_server.url('portrait.jpg')}\n")
    options = local_options(output_format="parquet", url_blocklist=str(listing), respect_xmp_datamining=False)
    urls = [
        image_server.url("landscape.jpg"),
        image_server.url("portrait.jpg"),
        image_server.url_for("/robots-tag/noai/landscape.jpg"),
        image_server.url_for("/status/503"),  # a failure, not an opt-out
    ]
    stats = download_shard(rows(urls), str(tmp_path / "out"), options)
    assert stats.opt_outs == {"blocklist": 1, "x-robots-tag": 1}

    report = {
        "rows_in": 7,
        "rows_out": 4,
        "removed": {"invalid_url": 1, "url_blocklist": 2},
        "skipped_rules": {},
    }
    card = build_card(
        str(tmp_path / "out"),
        CardInputs(title="t", spec={}, shard_keys=["00000"], options=options, filter_report=report),
    )
    table = _consent_rows(card.markdown)
    assert [name for name in table if name != "**total**"] == list(SIGNALS)  # every signal, once
    assert table["blocklist"][1:] == ["yes", "3 (2 removed before download)"]
    assert table["x-robots-tag"][1:] == ["yes", "1"]
    assert table["xmp-datamining"][1:] == ["no", "0"]  # turned off for this build
    assert table["robots.txt"][1:] == ["yes", "0"]
    assert table["**total**"][-1] == "**4**"
    assert "opted out: 4 (see Consent)" in card.markdown
    html = MarkdownIt("commonmark").enable("table").render(card.markdown)
    assert (
        html.split("Consent</h2>")[1].split("</table>")[0].count("<tr>") == len(SIGNALS) + 2
    )  # header, signals, total

    # The same ledger in the partition's metadata and in the verification roll-up.
    metadata = shard_metadata(stats)
    assert metadata["opted_out"] == 2
    assert metadata["opt_outs"].data == {"blocklist": 1, "x-robots-tag": 1}
    assert verify_dataset(str(tmp_path / "out"), ["00000"], options).opt_outs == {
        "blocklist": 1,
        "x-robots-tag": 1,
    }
