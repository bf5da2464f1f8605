"""Shard writers in img2dataset's layout: webdataset tar, parquet, or a folder of files.

Results arrive in completion order and are streamed out as they come, so a shard's memory is
one parquet row group plus one image, whatever the shard size. Every file goes to ``_tmp``
first and is committed by :meth:`ShardWriter.close`, stats json last.
"""

from __future__ import annotations

import json
import tarfile
import time
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.records import SUCCESS, SampleResult, compute_key, shard_name
from dataset_assets.engine.stats import ShardStats
from dataset_assets.engine.storage import OutputFolder

ROW_GROUP_ROWS = 1024


# Containers are the only values that json.dumps(indent=4) lays out over several lines.
_NESTED = (dict, list, tuple)
_INDENT_SEPARATORS = (",\n    ", ": ")


def sample_json(meta: dict[str, Any]) -> str:
    """``json.dumps(meta, indent=4, default=str)``, identical output, several times faster.

    With ``indent`` json falls back to its pure-Python encoder; a flat dict (the per-sample
    metadata, unless an additional column holds lists or structs) is laid out the same way by
    the C encoder given indent=4's separators, plus the opening and closing newlines.
    """
    if not meta or any(isinstance(value, _NESTED) for value in meta.values()):
        return json.dumps(meta, indent=4, default=str)
    return "{\n    " + json.dumps(meta, separators=_INDENT_SEPARATORS, default=str)[1:-1] + "\n}"


def stats_name(shard: str) -> str:
    return f"{shard}_stats.json"


def metadata_schema(options: DownloadOptions, input_schema: pa.Schema) -> pa.Schema:
    """Column order and types of img2dataset's per-sample metadata (parquet and json)."""
    fields: list[pa.Field] = [
        input_schema.field(name)
        for name in options.save_additional_columns
        if input_schema.get_field_index(name) >= 0
    ]
    if options.caption_col:
        fields.append(pa.field("caption", pa.string()))
    fields += [
        pa.field("url", pa.string()),
        pa.field("key", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
    ]
    if options.extract_exif:
        fields.append(pa.field("exif", pa.string()))
    if options.compute_hash:
        fields.append(pa.field(options.compute_hash, pa.string()))
    return pa.schema(fields)


class _TarSink:
    """Tar members as webdataset.TarWriter writes them (owner bigdata, mode 0444).

    The bytes are exactly those of ``tarfile.open(mode="w|").addfile()`` (PAX format, so the
    float mtime gets a PAX record per member, as with webdataset), but built without tarfile's
    per-member header machinery, which cost more parent CPU than everything else it does per
    sample: the PAX block is the same for every member of a shard, so it is built once, and the
    ustar header is a template with name, size and checksum filled in. Names that are long or
    not ASCII and huge sizes go through ``TarInfo.tobuf`` as tarfile itself would.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._mtime = time.time()
        self._offset = 0
        header = self._info("-", 0).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        self._pax_block = header[: -tarfile.BLOCKSIZE]  # the mtime PAX record (header + data)
        template = bytearray(header[-tarfile.BLOCKSIZE :])
        template[148:156] = b" " * 8  # checksum field counts as spaces while summing
        self._template = bytes(template)
        self._template_sum = sum(template) - sum(template[0:100]) - sum(template[124:136])

    def _info(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = self._mtime
        info.mode = 0o444
        info.uname = info.gname = "bigdata"
        return info

    def add(self, name: str, data: bytes) -> None:
        size = len(data)
        encoded = name.encode("ascii", "ignore")
        if len(encoded) == len(name) and 0 < len(encoded) <= 100 and size < 8**11:
            name_field = encoded.ljust(100, tarfile.NUL)
            size_field = b"%011o\0" % size
            checksum = self._template_sum + sum(name_field) + sum(size_field)
            header = b"".join(
                (
                    self._pax_block,
                    name_field,
                    self._template[100:124],
                    size_field,
                    self._template[136:148],
                    b"%06o\0" % checksum,
                    self._template[155:],
                )
            )
        else:
            header = self._info(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        padding = tarfile.NUL * (-size % tarfile.BLOCKSIZE)
        self._handle.write(b"".join((header, data, padding)))  # one write call per member
        self._offset += len(header) + size + len(padding)

    def close(self) -> None:
        """End-of-archive blocks, then zeros up to a whole record, as TarFile.close() writes."""
        self._handle.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        self._offset += 2 * tarfile.BLOCKSIZE
        remainder = self._offset % tarfile.RECORDSIZE
        if remainder:
            self._handle.write(tarfile.NUL * (tarfile.RECORDSIZE - remainder))


class _FolderSink:
    def __init__(self, output: OutputFolder, tmp_dir: str) -> None:
        self._output = output
        self._dir = tmp_dir
        output.fs.makedirs(tmp_dir, exist_ok=True)

    def add(self, name: str, data: bytes) -> None:
        with self._output.fs.open(f"{self._dir}/{name}", "wb") as handle:
            handle.write(data)

    def close(self) -> None:
        pass


class ShardWriter:
    """Collects one shard's results and commits its files atomically."""

    def __init__(self, output: OutputFolder, options: DownloadOptions, shard_id: int, rows: pa.Table) -> None:
        self._output = output
        self._options = options
        self.shard_id = shard_id
        self.shard = shard_name(shard_id, options.oom_shard_count)
        self.expected = rows.num_rows
        self._rows = rows
        self._schema = metadata_schema(options, rows.schema)
        self._extra = [n for n in options.save_additional_columns if rows.schema.get_field_index(n) >= 0]
        self._urls = rows.column("url").to_pylist()
        self._captions = rows.column("caption").to_pylist() if options.caption_col else None
        self._extra_values = {n: rows.column(n).to_pylist() for n in self._extra}
        self._pending: list[SampleResult] = []
        self._tmp: list[tuple[str, str]] = []  # (tmp path, final name), committed in order
        self.stats = ShardStats(shard_id=shard_id, start_time=time.time())

        fmt = options.output_format
        self._image_column = options.encode_format if fmt == "parquet" else None
        self._sink: _TarSink | _FolderSink | None = None
        self._sink_handle: IO[bytes] | None = None
        if fmt == "webdataset":
            tmp, self._sink_handle = output.open_tmp(f"{self.shard}.tar")
            self._sink = _TarSink(self._sink_handle)
            self._tmp.append((tmp, f"{self.shard}.tar"))
        elif fmt == "files":
            tmp = output.tmp_path(self.shard)
            self._sink = _FolderSink(output, tmp)
            self._tmp.append((tmp, self.shard))
        self._parquet: pq.ParquetWriter | None = None
        if fmt != "dummy":
            tmp, self._parquet_handle = output.open_tmp(f"{self.shard}.parquet")
            schema = self._schema
            if self._image_column:
                schema = schema.append(pa.field(self._image_column, pa.binary()))
            self._parquet = pq.ParquetWriter(self._parquet_handle, schema)
            self._tmp.append((tmp, f"{self.shard}.parquet"))

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
        if result.status == SUCCESS and self._sink is not None and result.image is not None:
            key = self.key(result.index)
            self._sink.add(f"{key}.{self._options.encode_format}", result.image)
            if self._captions is not None:
                caption = self._captions[result.index]
                self._sink.add(f"{key}.txt", ("" if caption is None else str(caption)).encode())
            self._sink.add(f"{key}.json", sample_json(self.metadata(result)).encode())
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
        """Finish every file, commit them, then write the stats json that marks completion."""
        if self.stats.count != self.expected:
            raise RuntimeError(f"shard {self.shard}: {self.stats.count} results for {self.expected} rows")
        if self._sink is not None:
            self._sink.close()
        if self._sink_handle is not None:
            self._sink_handle.close()
        if self._parquet is not None:
            self._flush_parquet()
            self._parquet.close()
            self._parquet_handle.close()
        fs = self._output.fs
        # A shard being replaced stops looking complete before any of its files change.
        old_marker = self._output.path(stats_name(self.shard))
        if fs.exists(old_marker):
            fs.rm(old_marker)
        for tmp, final in self._tmp:
            if fs.isdir(tmp):
                self.stats.bytes_written += int(fs.du(tmp))
            else:
                self.stats.bytes_written += int(fs.size(tmp))
                self.stats.checksums[final] = self._output.sha256(tmp)
            self._output.commit(tmp, final)
            self.stats.files.append(self._output.path(final))
        self.stats.end_time = time.time()
        self.stats.duration = self.stats.end_time - self.stats.start_time
        self._output.write_json_atomic(stats_name(self.shard), self.stats.to_json())
        self.stats.files.append(self._output.path(stats_name(self.shard)))
        return self.stats

    def abort(self) -> None:
        """Drop every temporary file; nothing of this shard becomes visible."""
        for closer in (self._sink, self._sink_handle, self._parquet, getattr(self, "_parquet_handle", None)):
            try:
                if closer is not None:
                    closer.close()
            except Exception:
                pass
        for tmp, _ in self._tmp:
            self._output.discard(tmp)
