"""Re-reading a finished shard, so a retry pass fetches only the rows that failed.

After a transient outage (a host down for an hour, a DNS hiccup) most of a shard is fine; a
retry should not download the 90 % that already succeeded. The successes of the committed shard
are read back as results (image bytes included) and fed to a fresh writer, and only the failed
rows go to the workers; the new shard replaces the old one atomically.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.records import SUCCESS, SampleResult
from dataset_assets.engine.shards.layout import parquet_name, row_index, shard_name
from dataset_assets.engine.shards.registry import shard_format
from dataset_assets.io.storage import OutputFolder


def previous_successes(
    output: OutputFolder, shard_id: int, options: DownloadOptions
) -> dict[int, SampleResult]:
    """The committed shard's successful rows by row index, with their stored images."""
    shard = shard_name(shard_id, options.oom_shard_count)
    fmt = shard_format(options.output_format)
    if not fmt.writes_parquet:
        return {}
    hash_col = options.compute_hash
    table = pq.read_table(output.path(parquet_name(shard)), filesystem=output.fs)
    nsps = options.number_sample_per_shard
    results: dict[int, SampleResult] = {}
    for row in table.to_pylist():
        if row["status"] != SUCCESS:
            continue
        index = row_index(row["key"], shard_id, nsps)
        results[index] = SampleResult(
            shard_id,
            index,
            SUCCESS,
            width=row["width"],
            height=row["height"],
            original_width=row["original_width"],
            original_height=row["original_height"],
            exif=row.get("exif"),
            hash=row.get(hash_col) if hash_col else None,
            image=row.get(options.encode_format) if fmt.images_in_parquet else None,
        )
    if not fmt.images_in_parquet:
        for sample in fmt.read_samples(output, shard, options.encode_format):
            index = row_index(sample.key, shard_id, nsps)
            if index in results:
                results[index].image = sample.image
    # A success whose image went missing is retried rather than kept without its image.
    return {i: r for i, r in results.items() if r.image is not None}
