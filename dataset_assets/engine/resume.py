"""Re-reading a finished shard, so a retry pass fetches only the rows that failed.

After a transient outage (a host down for an hour, a DNS hiccup) most of a shard is fine; a
retry should not download the 90 % that already succeeded. The successes of the committed shard
are read back as results (image bytes included) and fed to a fresh writer, and only the failed
rows go to the workers; the new shard replaces the old one atomically.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

import pyarrow.parquet as pq

from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.records import SUCCESS, SampleResult, key_digits, shard_name
from dataset_assets.engine.storage import OutputFolder


def previous_successes(
    output: OutputFolder, shard_id: int, options: DownloadOptions
) -> dict[int, SampleResult]:
    """The committed shard's successful rows by row index, with their stored images."""
    shard = shard_name(shard_id, options.oom_shard_count)
    if options.output_format == "dummy":
        return {}
    hash_col = options.compute_hash
    table = pq.read_table(output.path(f"{shard}.parquet"))
    stride = 10 ** key_digits(options.number_sample_per_shard)
    results: dict[int, SampleResult] = {}
    for row in table.to_pylist():
        if row["status"] != SUCCESS:
            continue
        index = int(row["key"]) - shard_id * stride
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
            image=row.get(options.encode_format) if options.output_format == "parquet" else None,
        )
    if options.output_format != "parquet":
        for key, data in _stored_images(output, shard, options):
            index = int(key) - shard_id * stride
            if index in results:
                results[index].image = data
    # A success whose image went missing is retried rather than kept without its image.
    return {i: r for i, r in results.items() if r.image is not None}


def _stored_images(output: OutputFolder, shard: str, options: DownloadOptions) -> Iterator[tuple[str, bytes]]:
    suffix = f".{options.encode_format}"
    if options.output_format == "webdataset":
        with (
            output.fs.open(output.path(f"{shard}.tar"), "rb") as handle,
            tarfile.open(fileobj=handle, mode="r|") as tar,
        ):
            for member in tar:
                if member.name.endswith(suffix):
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        yield member.name[: -len(suffix)], extracted.read()
    elif options.output_format == "files":
        for path in output.fs.glob(output.path(shard, f"*{suffix}")):
            yield path.rsplit("/", 1)[-1][: -len(suffix)], output.fs.cat_file(path)
