"""Streams one shard's results into its format and commits its files atomically.

Results arrive in completion order and are written as they come, so a shard's memory is one
parquet row group plus one image, whatever the shard size. Every file goes to ``_tmp`` first
and is committed by :meth:`ShardWriter.close`, stats json last: a shard is complete exactly
when its stats json exists and records that it passed its gates (:mod:`.gates`, judged from
what the writer saw, so no file is read back). A shard with too many internal errors is not
committed at all, and a writer that no longer holds its shard's lease (:mod:`.lease`)
publishes nothing more.
"""

from __future__ import annotations

import time
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from dataset_assets.engine.fingerprint import table_fingerprint
from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.records import SUCCESS, SampleResult
from dataset_assets.engine.shards.formats import SampleSink, StoredSample
from dataset_assets.engine.shards.gates import (
    ShardFacts,
    ShardGates,
    ShardRefused,
    evaluate,
    internal_error_refusal,
)
from dataset_assets.engine.shards.layout import (
    compute_key,
    image_column,
    parquet_name,
    parquet_schema,
    shard_name,
    stats_name,
)
from dataset_assets.engine.shards.lease import ShardLease
from dataset_assets.engine.shards.registry import shard_format
from dataset_assets.engine.stats import ShardStats
from dataset_assets.io.storage import OutputFolder

ROW_GROUP_ROWS = 1024


class ShardWriter:
    """Collects one shard's results and commits its files atomically."""

    def __init__(
        self,
        output: OutputFolder,
        options: DownloadOptions,
        shard_id: int,
        rows: pa.Table,
        gates: ShardGates | None = None,
        lease: ShardLease | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self._output = output
        self._gates = gates or ShardGates()
        self.lease = lease
        self._options = options
        self._format = shard_format(options.output_format)
        self.shard_id = shard_id
        self.shard = shard_name(shard_id, options.oom_shard_count)
        self.expected = rows.num_rows
        self._rows = rows
        self._extra = [n for n in options.save_additional_columns if rows.schema.get_field_index(n) >= 0]
        self._urls = rows.column("url").to_pylist()
        self._captions = rows.column("caption").to_pylist() if options.caption_col else None
        self._extra_values = {n: rows.column(n).to_pylist() for n in self._extra}
        self._pending: list[SampleResult] = []
        self._tmp: list[tuple[str, str]] = []  # (tmp path, final name), committed in order
        self.stats = ShardStats(
            shard_id=shard_id,
            start_time=time.time(),
            input_fingerprint=fingerprint or table_fingerprint(rows),
        )
        self._indices = (rows.num_rows, -1)  # (lowest, highest) row index recorded

        self._image_column = image_column(options, self._format.images_in_parquet)
        self._sink: SampleSink | None = None
        opened = self._format.open_sink(output, self.shard)
        container = self._format.container(self.shard)
        if opened is not None and container is not None:
            tmp, self._sink = opened
            self._tmp.append((tmp, container))
        self._parquet: pq.ParquetWriter | None = None
        self._parquet_handle: IO[bytes] | None = None
        if self._format.writes_parquet:
            tmp, self._parquet_handle = output.open_tmp(parquet_name(self.shard))
            schema = parquet_schema(options, rows.schema, self._format.images_in_parquet)
            self._parquet = pq.ParquetWriter(self._parquet_handle, schema)
            self._tmp.append((tmp, parquet_name(self.shard)))
        self.facts = ShardFacts(
            self.expected,
            options.number_sample_per_shard,
            stores_images=self._sink is not None or self._image_column is not None,
        )

    @property
    def done(self) -> bool:
        return self.stats.count >= self.expected

    def key(self, index: int) -> str:
        return compute_key(
            index, self.shard_id, self._options.number_sample_per_shard, self._options.oom_shard_count
        )

    def metadata(self, result: SampleResult) -> dict[str, Any]:
        """The per-sample json: same fields and order as the parquet columns."""
        i = result.index
        meta: dict[str, Any] = {n: self._extra_values[n][i] for n in self._extra}
        if self._captions is not None:
            meta["caption"] = self._captions[i]
        meta.update(
            url=self._urls[i],
            key=self.key(i),
            status=result.status,
            error_message=result.error_message,
            width=result.width,
            height=result.height,
            original_width=result.original_width,
            original_height=result.original_height,
        )
        if self._options.extract_exif:
            meta["exif"] = result.exif
        if self._options.compute_hash:
            meta[self._options.compute_hash] = result.hash
        return meta

    def add(self, result: SampleResult) -> None:
        self.stats.record(result)
        self.facts.observe(result)
        if result.status == SUCCESS and self._image_column is not None and result.image is not None:
            self.facts.stored += 1
        low, high = self._indices
        self._indices = (min(low, result.index), max(high, result.index))
        if result.status == SUCCESS and self._sink is not None and result.image is not None:
            self.facts.stored += 1
            caption = None
            if self._captions is not None:
                value = self._captions[result.index]
                caption = "" if value is None else str(value)
            self._sink.add(
                StoredSample(
                    self.key(result.index),
                    result.image,
                    self._options.encode_format,
                    caption,
                    self.metadata(result),
                )
            )
        if self._parquet is not None:
            self._pending.append(result)
            if len(self._pending) >= ROW_GROUP_ROWS:
                self._flush_parquet()
        if result.status != SUCCESS or self._image_column is None:
            result.image = None  # release the bytes as soon as they are written

    def _flush_parquet(self) -> None:
        if not self._pending or self._parquet is None:
            return
        pending, self._pending = self._pending, []
        self.facts.parquet_rows += len(pending)
        indices = pa.array([r.index for r in pending], pa.int64())
        columns: dict[str, pa.Array] = {n: self._rows.column(n).take(indices) for n in self._extra}
        if self._captions is not None:
            columns["caption"] = pa.array([self._captions[r.index] for r in pending], pa.string())
        columns["url"] = pa.array([self._urls[r.index] for r in pending], pa.string())
        columns["key"] = pa.array([self.key(r.index) for r in pending], pa.string())
        columns["status"] = pa.array([r.status for r in pending], pa.string())
        columns["error_message"] = pa.array([r.error_message for r in pending], pa.string())
        for name in ("width", "height", "original_width", "original_height"):
            columns[name] = pa.array([getattr(r, name) for r in pending], pa.int32())
        if self._options.extract_exif:
            columns["exif"] = pa.array([r.exif for r in pending], pa.string())
        if self._options.compute_hash:
            columns[self._options.compute_hash] = pa.array([r.hash for r in pending], pa.string())
        if self._image_column:
            columns[self._image_column] = pa.array([r.image for r in pending], pa.binary())
        table = pa.Table.from_pydict(columns)
        schema = self._parquet.schema
        self._parquet.write_table(table.select(schema.names).cast(schema))

    def close(self) -> ShardStats:
        """Finish every file, commit them, judge the gates, then write the stats json.

        Raises :class:`ShardRefused` (too many internal errors) or ``ShardLeaseError`` (another
        writer holds the shard now) with nothing more of this shard published.
        """
        try:
            return self._commit()
        except BaseException:
            self.abort()
            raise

    def _commit(self) -> ShardStats:
        if self.stats.count != self.expected:
            raise RuntimeError(f"shard {self.shard}: {self.stats.count} results for {self.expected} rows")
        refusal = internal_error_refusal(self.shard, self.stats.count, self.facts, self._gates)
        if refusal:
            raise ShardRefused(refusal)
        if self._sink is not None:
            self._sink.close()
        if self._parquet is not None and self._parquet_handle is not None:
            self._flush_parquet()
            self._parquet.close()
            self._parquet_handle.close()
        if self.lease is not None:
            self.lease.check()
        fs = self._output.fs
        # A shard being replaced stops looking complete before any of its files change.
        old_marker = self._output.path(stats_name(self.shard))
        if fs.exists(old_marker):
            fs.rm(old_marker)
        while self._tmp:
            tmp, final = self._tmp[0]
            folder = fs.isdir(tmp)
            if folder:
                self.stats.bytes_written += int(fs.du(tmp))
                self.facts.unhashed.append(final)
            else:
                # The digest of the bytes that went through the handle; read back only for a
                # file written some other way.
                known = self._output.written_digest(tmp)
                digest, size = known if known is not None else (self._output.sha256(tmp), int(fs.size(tmp)))
                self.stats.bytes_written += size
                self.stats.file_sizes[final] = size
                self.stats.checksums[final] = digest
            self._output.commit(tmp, final)
            self._tmp.pop(0)
            if not folder:
                self.facts.files[final] = (size, self._output.size(final))
            self.stats.files.append(self._output.path(final))
        low, high = self._indices
        if high >= 0:
            self.stats.key_range = [self.key(low), self.key(high)]
        self.stats.gates = evaluate(self.stats, self.facts, self._gates, self._format.writes_parquet)
        self.stats.passed_gates = all(gate["passed"] for gate in self.stats.gates.values())
        self.stats.end_time = time.time()
        self.stats.duration = self.stats.end_time - self.stats.start_time
        if self.lease is not None:
            self.lease.check()  # the last look before the completion marker
        self._output.write_json_atomic(stats_name(self.shard), self.stats.to_json())
        self.stats.files.append(self._output.path(stats_name(self.shard)))
        if self.lease is not None:
            self.lease.release()
        return self.stats

    def abort(self) -> None:
        """Drop every temporary file; nothing of this shard becomes visible."""
        for closer in (self._sink, self._parquet, self._parquet_handle):
            try:
                if closer is not None:
                    closer.close()
            except Exception:
                pass
        for tmp, _ in self._tmp:
            self._output.discard(tmp)
        self._tmp = []
        if self.lease is not None:
            self.lease.release()
