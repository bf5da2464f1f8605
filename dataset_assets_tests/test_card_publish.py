"""The dataset card a publisher ships: Hugging Face front matter, provenance, schema, pictures.

A real dataset is built by the real asset graph (DuckDB plan, loopback image server, Dagster
instance), and its DATASET_CARD.md is read back as the Hub would read it.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml
from markdown_it import MarkdownIt

from dataset_assets.definitions import build_defs
from dataset_assets.engine.runner import download_shard
from dataset_assets.partitions import shards_partitions
from dataset_assets.reporting import provenance
from dataset_assets.reporting.card import (
    CHART_NAME,
    GRID_NAME,
    CardInputs,
    build_card,
    ui_markdown,
    write_card,
)
from dataset_assets.reporting.frontmatter import size_category, split_front_matter
from dataset_assets.reporting.markdown import code_span
from dataset_assets.reporting.provenance import InputDigest, input_digest
from dataset_assets.spec import spec_from_mapping
from dataset_assets_tests.conftest import local_options, rows
from dataset_assets_tests.fakeweb.images import corpus_images
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

IMAGES = 10
HOSTILE_TITLE = "Evil\n---\nlicense: mit\n# x: 'y' \"z\" {a: [b]} | ![t](https://tracker.example/t.png)"
HOSTILE_CAPTION = "a cat\n---\nlicense: mit\npretty_name: pwned"
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer(
        images=corpus_images(IMAGES, seed=11), config=ServerConfig(max_lifetime_s=300)
    ) as running:
        yield running


def _section(markdown: str, heading: str) -> str:
    return markdown.split(f"\n## {heading}\n")[1].split("\n## ")[0]


def _table_rows(section: str) -> list[list[str]]:
    lines = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def _front_matter(markdown: str) -> dict:
    meta, _ = split_front_matter(markdown)
    assert meta is not None, markdown[:200]
    values = yaml.safe_load(meta)
    assert isinstance(values, dict)
    return values


def _build(server: ImageServer, root: Path, instance: dg.DagsterInstance) -> dict:
    """Plan, download every shard, verify and publish: the card's materialization metadata."""
    names = sorted(corpus_images(IMAGES, seed=11))
    urls = root / "urls.csv"
    with urls.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "caption", "source_id"])
        writer.writerows((server.url(name), f"caption of {name}", i) for i, name in enumerate(names))
        writer.writerow([server.url_for("/status/404"), "a dead link", 100])
        writer.writerow([server.url(names[0]) + "?again=1", HOSTILE_CAPTION, 101])
    spec = spec_from_mapping(
        {
            "url_list": str(urls),
            "input_format": "csv",
            "caption_col": "caption",
            "save_additional_columns": ["source_id"],
            "output_folder": str(root / "dataset"),
            "output_format": "webdataset",
            "number_sample_per_shard": 6,
            "image_size": 64,
            "processes_count": 1,
            "thread_count": 8,
            "timeout": 5,
            "allow_private_addresses": True,
            "card_title": HOSTILE_TITLE,
            "card_license": "cc-by-4.0",
            "card_tags": ["img2dataset", "tag: with colon"],
            "card_contact": "data-team@example.org\n---\nlicense: mit",
        }
    )
    defs = build_defs(spec)
    job = defs.resolve_implicit_global_asset_job_def()
    job.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("filtered_urls"), dg.AssetKey("url_shards")]
    )
    for key in instance.get_dynamic_partitions(shards_partitions.name):
        job.execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("image_shards")], partition_key=key
        )
    result = job.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("dataset_verification"), dg.AssetKey("dataset_card")]
    )
    (materialization,) = result.asset_materializations_for_node("dataset_card")
    return materialization.metadata


def test_a_built_dataset_ships_a_hugging_face_card(server: ImageServer, tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        metadata = _build(server, tmp_path, instance)
    dataset = tmp_path / "dataset"
    card = (dataset / "DATASET_CARD.md").read_text()
    stats = [json.loads(p.read_text()) for p in sorted(dataset.glob("*_stats.json"))]
    stored = sum(s["successes"] for s in stats)
    assert len(stats) == 2 and stored == IMAGES + 1  # the 404 is the one failure

    # (1) The front matter is YAML with the Hub's keys; the size category fits the image count.
    front = _front_matter(card)
    assert front["pretty_name"] == " ".join(HOSTILE_TITLE.split())  # one line, quoted, intact
    assert front["license"] == "cc-by-4.0"
    assert front["task_categories"] == ["text-to-image", "image-to-text"]
    assert front["size_categories"] == ["n<1K"] == [size_category(stored)]
    assert front["tags"] == ["img2dataset", "tag: with colon"]
    assert set(front) == {"pretty_name", "license", "task_categories", "size_categories", "tags"}
    _, body = split_front_matter(card)
    assert body.startswith("# Evil")
    assert body.index("## Totals") < body.index("## Provenance") < body.index("## Appendix: spec")
    assert f"| images stored | {stored} |" in _section(card, "Totals")

    # (2) Every image the card links is a file next to it: charts and the sample grid.
    links = IMAGE_LINK.findall(body.split("## Appendix: spec")[0])  # the spec is a code block
    expected = {CHART_NAME.format(n) for n in ("success_rate", "images_per_sec", "failures", "sizes")}
    assert set(links) == expected | {GRID_NAME}
    assert all((dataset / link).is_file() and (dataset / link).stat().st_size > 0 for link in links)
    html = MarkdownIt("commonmark").enable("table").render(body)
    assert sorted(re.findall(r'<img src="([^"]*)"', html)) == sorted(links)  # the title's image is text

    # (3) Provenance: the URL list's hash, the rows' fingerprint, the crawl window from the stats.
    provenance = _section(card, "Provenance")
    assert hashlib.sha256((tmp_path / "urls.csv").read_bytes()).hexdigest() in provenance
    assert code_span(tmp_path / "urls.csv") in provenance
    window = {
        name: dt.datetime.strptime(
            re.search(rf"\| crawl {name} \| (\S+ \S+) UTC \|", provenance).group(1), "%Y-%m-%d %H:%M:%S"
        ).replace(tzinfo=dt.UTC)
        for name in ("start", "end")
    }
    first = dt.datetime.fromtimestamp(min(s["start_time"] for s in stats), dt.UTC).replace(microsecond=0)
    last = dt.datetime.fromtimestamp(max(s["end_time"] for s in stats), dt.UTC).replace(microsecond=0)
    assert window == {"start": first, "end": last}
    assert re.search(r"\| spec sha256 \| `[0-9a-f]{64}`", provenance)
    assert re.search(r"\| code \| `dataset_assets \d", provenance)

    # (4) The schema lists exactly the parquet's columns, and the json fields a tar really holds.
    schema = {r[0].strip("`"): r for r in _table_rows(_section(card, "Sample schema"))}
    assert set(schema) == set(pq.read_schema(dataset / "00000.parquet").names)
    assert schema["source_id"][1] == "int64" and schema["width"][1] == "int32"
    with tarfile.open(dataset / "00000.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".json"))
        sidecar = json.load(io.BytesIO(tar.extractfile(member).read()))
    assert {name for name, r in schema.items() if r[4] == "yes"} == set(sidecar)

    # Limitations and contact are generated from this build; the hostile contact is one inert line.
    limitations = _section(card, "Limitations")
    assert "1 of 12 input rows (8.3%) were not stored" in limitations and "alt-text" in limitations
    assert "by normalised URL only" in limitations and "signals were not checked" not in limitations
    assert "data-team@example.org --- license: mit" in _section(card, "Contact")

    # The asset page's copy: images inlined, the front matter a code block, nothing linked.
    shown = metadata["card"].value
    assert shown.startswith("# Evil") and "](DATASET_CARD_" not in shown
    assert shown.count("](data:image/png;base64,") == 4 and shown.count("](data:image/jpeg;base64,") == 1
    block = shown.split("## Hugging Face metadata")[1].split("```yaml\n")[1].split("\n```")[0]
    assert yaml.safe_load(block) == front
    assert shown.index("## Hugging Face metadata") < shown.index("## Appendix: spec")


def test_hostile_values_cannot_break_the_front_matter(image_server: ImageServer, tmp_path: Path) -> None:
    options = local_options(output_format="webdataset", caption_col="caption")
    download_shard(
        rows([image_server.url("landscape.jpg")], captions=[HOSTILE_CAPTION]), str(tmp_path), options
    )
    spec = {
        "card_contact": "x\n...\n---",
        "card_tags": ["---", "...", "- y", "k: v", "\u2028new: key"],
        "card_task_categories": ["image-to-text"],
    }
    card = build_card(str(tmp_path), CardInputs(HOSTILE_TITLE + "\r\n---\r\n", spec, ["00000"], options))
    write_card(str(tmp_path), card)
    text = (tmp_path / "DATASET_CARD.md").read_text()

    lines = text.split("\n")
    assert lines[0] == "---"
    end = lines.index("---", 1)
    block = yaml.safe_load("\n".join(lines[1:end]))  # the first delimiter line closes the block
    assert block == {
        "pretty_name": " ".join(HOSTILE_TITLE.split()) + " ---",
        "license": "other",  # the declared default, not the title's "license: mit"
        "task_categories": ["image-to-text"],
        "size_categories": ["n<1K"],
        "tags": ["---", "...", "- y", "k: v", "new: key"],
    }
    assert lines[end + 2].startswith("# Evil")  # the title heading follows, one line
    assert HOSTILE_CAPTION not in text  # captions are data, never card text


def test_old_stats_without_times_or_fingerprints_still_make_a_card(
    image_server: ImageServer, tmp_path: Path
) -> None:
    options = local_options(output_format="parquet", respect_tdmrep=False)
    download_shard(rows([image_server.url("portrait.jpg")]), str(tmp_path), options)
    stats_path = tmp_path / "00000_stats.json"
    stats = json.loads(stats_path.read_text())
    for key in ("start_time", "end_time", "input_fingerprint", "short_sides"):
        stats.pop(key)
    stats_path.write_text(json.dumps(stats))

    card = build_card(str(tmp_path), CardInputs("t", {}, ["00000"], options))
    provenance = _section(card.markdown, "Provenance")
    assert "| crawl start | not recorded |" in provenance and "| crawl end | not recorded |" in provenance
    assert "planned rows fingerprint" not in provenance
    limitations = _section(card.markdown, "Limitations")
    assert "no crawl times" in limitations and "No de-duplication is recorded" in limitations
    assert "signals were not checked: tdmrep;" in limitations
    assert "| tdmrep |" in _section(card.markdown, "Consent")
    assert card.totals["successes"] == 1
    # output_format parquet: the image column is on the card, as the file has it.
    schema = {r[0].strip("`") for r in _table_rows(_section(card.markdown, "Sample schema"))}
    assert schema == set(pq.read_schema(tmp_path / "00000.parquet").names) and "jpg" in schema
    assert card.grid_jpeg is not None  # read from the parquet's image column
    assert ui_markdown(card).count("](data:image/") == len(card.charts) + 1


def test_the_url_list_hash_is_sha256sum_or_a_listing_when_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "a.csv").write_text("url\nhttp://127.0.0.1/a.jpg\n")
    (folder / "b.csv").write_text("url\nhttp://127.0.0.1/b.jpg\n")
    (folder / "notes.txt").write_text("not part of the list")
    one = input_digest(str(folder / "a.csv"), "csv")
    size = (folder / "a.csv").stat().st_size
    assert one == InputDigest(1, size, "sha256", hashlib.sha256((folder / "a.csv").read_bytes()).hexdigest())
    both = input_digest(str(folder), "csv")
    lines = "".join(hashlib.sha256((folder / n).read_bytes()).hexdigest() + "\n" for n in ("a.csv", "b.csv"))
    assert both == InputDigest(2, 2 * size, "sha256", hashlib.sha256(lines.encode()).hexdigest())

    monkeypatch.setattr(provenance, "HASH_LIMIT_BYTES", 10)  # as if the list were 100 GB
    listing = input_digest(str(folder), "csv")
    assert listing.kind == "listing" and listing.files == 2 and listing.digest != both.digest
    (folder / "b.csv").write_text("url\nhttp://127.0.0.1/changed.jpg\n")
    assert input_digest(str(folder), "csv").digest != listing.digest  # another size: another listing


@pytest.mark.parametrize(
    ("images", "bucket"),
    [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (99_999, "10K<n<100K"), (10**6, "1M<n<10M")],
)
def test_size_category_is_the_hubs_bucket(images: int, bucket: str) -> None:
    assert size_category(images) == bucket
