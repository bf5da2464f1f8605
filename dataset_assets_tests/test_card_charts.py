"""The card's charts: drawn from the shards' stats, written beside the card, linked from it."""

from __future__ import annotations

import cv2
import numpy as np

from dataset_assets.engine.runner import download_shard
from dataset_assets.reporting.card import CHART_NAME, CardInputs, build_card, write_card
from dataset_assets.reporting.charts import BAR_COLOUR, column_chart, grouped
from dataset_assets_tests.conftest import local_options, rows
from dataset_assets_tests.fakeweb.server import ImageServer


def _bar_pixels(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return np.all(image == np.array(BAR_COLOUR, np.uint8), axis=2)


def test_a_column_is_as_tall_as_its_value() -> None:
    bars = _bar_pixels(column_chart("rates", [1.0, 0.0, 0.5], top=1.0))
    columns = np.nonzero(bars.any(axis=0))[0]
    width = bars.shape[1]
    heights = [bars[:, c].sum() for c in columns]
    first = [h for c, h in zip(columns, heights, strict=True) if c < width / 3]
    middle = [c for c in columns if 300 < c < 460]  # the plot spans x 64..704: three thirds
    last = [h for c, h in zip(columns, heights, strict=True) if c > 2 * width / 3]
    assert first and last and not middle  # the 0 % column draws nothing
    assert abs(max(last) / max(first) - 0.5) < 0.05


def test_many_shards_are_grouped_into_means() -> None:
    values, size = grouped([1.0] * 300 + [0.0] * 300, groups=200)
    assert size == 3 and len(values) == 200 and values[0] == 1.0 and values[-1] == 0.0


def test_the_card_links_charts_that_exist_and_show_an_outage_shard(
    image_server: ImageServer, tmp_path
) -> None:
    options = local_options(output_format="webdataset")
    download_shard(rows([image_server.url("landscape.jpg")] * 3), str(tmp_path), options, shard_id=0)
    download_shard(rows(["http://127.0.0.1:1/a.jpg"] * 3), str(tmp_path), options, shard_id=1)

    card = build_card(str(tmp_path), CardInputs("t", {}, ["00000", "00001"], options))
    written = write_card(str(tmp_path), card)

    names = {chart.name for chart in card.charts}
    assert names == {"success_rate", "images_per_sec", "failures", "sizes"}
    for chart in card.charts:
        file = tmp_path / CHART_NAME.format(chart.name)
        assert str(file) in written and file.read_bytes() == chart.png
        assert f"]({CHART_NAME.format(chart.name)})" in card.markdown
        assert cv2.imdecode(np.frombuffer(chart.png, np.uint8), cv2.IMREAD_COLOR) is not None
    rate_bars = _bar_pixels(next(c.png for c in card.charts if c.name == "success_rate"))
    columns = np.nonzero(rate_bars.any(axis=0))[0]
    assert columns.max() <= 64 + 640 // 2  # plot x 64..704, two columns: 00001 stored nothing
