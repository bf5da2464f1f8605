"""One declaration per option: the spec, the resource, the CLI and README are derived from it."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dataset_assets import catalogue
from dataset_assets.engine import DownloadOptions
from dataset_assets.planning import FilterSettings
from dataset_assets.resources import dataset_resource
from dataset_assets.spec import DatasetSpec, SpecError, load_spec, spec_from_mapping

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_option_table_is_the_schema() -> None:
    text = README.read_text(encoding="utf-8")
    assert catalogue.readme_section() in text, (
        "README's option table differs from the declared options: "
        "run `python -m dataset_assets.catalogue README.md`"
    )
    table = text[text.index(catalogue.README_START) : text.index(catalogue.README_END)]
    listed = re.findall(r"^\| `(\w+)` \|", table.split("Deliberate differences")[0], flags=re.M)
    assert listed == [entry.name for entry in catalogue.options()]


def test_every_field_of_every_block_is_a_declared_option() -> None:
    for block in catalogue.BLOCKS:
        for field in dataclasses.fields(block):
            where = f"{block.__name__}.{field.name}"
            assert "dataset_assets.option" in field.metadata, f"{where} has no declaration"
    names = [entry.name for entry in catalogue.options()]
    assert len(names) == len(set(names))
    assert set(names) == set(DatasetSpec.model_fields)
    assert {f.name for f in dataclasses.fields(FilterSettings)} <= set(names)


def test_help_shows_description_default_and_choices_of_every_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dataset_assets.cli", "download", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "400", "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^  --(\w+) \S+\s+(.*)$", done.stdout, flags=re.M)}
    for entry in catalogue.options():
        if not entry.on_cli:
            assert entry.name not in lines
            continue
        text = lines[entry.name]
        assert entry.help in text
        if entry.declared.info.choices:
            assert "Allowed: " + ", ".join(map(catalogue.format_value, entry.declared.info.choices)) in text
        if entry.name != "url_list":
            assert f"Default: {catalogue.format_value(entry.default('cli'))}." in text, entry.name


def test_every_resource_field_has_a_description(tmp_path: Path) -> None:
    spec = spec_from_mapping({"url_list": "u.txt", "output_folder": str(tmp_path)})
    fields = type(dataset_resource(spec)).model_fields
    assert len(fields) > 40
    for name, field in fields.items():
        assert field.description, name
    assert "Allowed: no, keep_ratio" not in fields["downscale_interpolation"].description  # its own choices
    assert "Allowed: nearest" in fields["downscale_interpolation"].description
    fixed = {e.name for e in catalogue.options() if e.fixed}
    assert {"image_size", "output_format", "number_sample_per_shard", "shards_per_run"} <= fixed
    assert not fixed & set(fields)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("resize_mode", "wide", "resize_mode='wide' is not one of no, keep_ratio, keep_ratio_largest"),
        ("output_format", "tar", "output_format='tar' is not one of webdataset, parquet, files"),
        ("image_size", 0, "image_size must be > 0, got 0"),
        ("success_rate_floor", 1.5, "success_rate_floor must be <= 1, got 1.5"),
        ("max_connections_per_host", -1, "max_connections_per_host must be > 0"),
        ("compute_hash", "crc", "compute_hash='crc' is not one of md5, sha256, sha512"),
        ("min_width", -3, "min_width must be >= 0"),
        ("incremental_mode", "extend", "incremental_mode='extend' is not one of incremental, overwrite"),
        ("timeout", "soon", "timeout: Input should be a valid number"),
    ],
)
def test_a_bad_spec_value_fails_at_load_naming_the_key(
    tmp_path: Path, key: str, value: object, message: str
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"url_list": "u.txt", "output_folder": "out", key: value}))
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    assert str(path) in str(raised.value)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_spec_and_cli_defaults_differ_only_where_the_table_says() -> None:
    spec = spec_from_mapping({"url_list": "u.txt", "output_folder": "out"})
    engine = DownloadOptions()
    differing = {
        name
        for name in DownloadOptions.field_names()
        if getattr(spec, name) != _as_spec(getattr(engine, name))
    }
    assert differing == set(catalogue.SURFACE_DEFAULTS["spec"])
    assert spec.output_format == "webdataset" and engine.output_format == "files"


def _as_spec(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value
