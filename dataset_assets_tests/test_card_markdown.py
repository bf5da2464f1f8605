"""What servers send is shown as text in the dataset card, never as markup."""

from __future__ import annotations

import re
from urllib.parse import quote

from markdown_it import MarkdownIt

from dataset_assets.engine.runner import download_shard
from dataset_assets.reporting.card import CardInputs, build_card
from dataset_assets.reporting.frontmatter import split_front_matter
from dataset_assets_tests.conftest import local_options, rows
from dataset_assets_tests.fakeweb.server import ImageServer

HOSTILE_REASON = "Not Found ![x](https://tracker.example/p.png) | <img src=https://tracker.example/q>"


def test_a_servers_reason_phrase_reaches_the_card_as_plain_text(image_server: ImageServer, tmp_path) -> None:
    url = image_server.url_for(f"/reason/404/{quote(HOSTILE_REASON, safe='')}")
    options = local_options(output_format="parquet")
    stats = download_shard(rows([url, image_server.url("landscape.jpg")]), str(tmp_path), options)
    (message,) = [m for m in stats.status_dict if m != "success"]
    assert "tracker.example/p.png" in message  # the phrase really came through the engine

    card = build_card(
        str(tmp_path), CardInputs(title="t *x*", spec={}, shard_keys=["00000"], options=options)
    )
    # Rendered as the Hub and GitHub render a card: the front matter read off, the rest as markdown.
    meta, body = split_front_matter(card.markdown)
    assert meta is not None and "tracker.example" not in meta
    html = MarkdownIt("commonmark").enable("table").render(body)

    sources = re.findall(r'<img src="([^"]*)"', html)
    assert sources and all(re.fullmatch(r"DATASET_CARD_\w+\.(png|jpg)", s) for s in sources)  # ours only
    assert html.count("<img") == len(sources)
    assert "tracker.example/p.png" in html  # still there, as text
    status_table = html.split("Status breakdown")[1].split("</table>")[0]
    assert all(row.count("<td>") == 2 for row in status_table.split("<tr>")[2:])  # "|" kept the table
    assert "<em>" not in html.split("</h1>")[0]  # the title is text too
