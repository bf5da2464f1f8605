"""tfrecord: img2dataset's ``{shard}.tfrecord`` of ``tf.train.Example`` records, without TensorFlow.

Each stored sample is one Example with the features img2dataset writes: ``key``, the image under
its encode_format (``jpg``), ``txt`` when there is a caption column, then every metadata field
(ints and bools as int64, floats as float, lists by their first element's type, everything else
as UTF-8 bytes, none as empty bytes). The framing is TFRecord's: length, masked CRC-32C of the
length, data, masked CRC-32C of the data. Both protobuf messages are simple enough to encode by
hand, which spares users a 500 MB TensorFlow install to write a dataset TensorFlow reads.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import IO, Any

import crc32c

from dataset_assets.engine.shards.formats import (
    ReadSample,
    SampleSink,
    ShardFormat,
    ShardReadError,
    StoredSample,
)
from dataset_assets.io.storage import OutputFolder

_MASK_DELTA = 0xA282EAD8
# Feature's oneof field numbers.
_BYTES, _FLOAT, _INT64 = 1, 2, 3


def masked_crc(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # int64 as protobuf encodes it: negatives take 10 bytes
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _feature(value: Any) -> bytes:
    """One ``tf.train.Feature``, typed as img2dataset types it."""
    if isinstance(value, list | tuple) and value:
        first = value[0]
        if isinstance(first, int) and not isinstance(first, str):
            return _length_delimited(_INT64, _length_delimited(1, b"".join(_varint(int(v)) for v in value)))
        if isinstance(first, float):
            return _length_delimited(_FLOAT, _length_delimited(1, struct.pack(f"<{len(value)}f", *value)))
        return _length_delimited(_BYTES, b"".join(_length_delimited(1, _as_bytes(v)) for v in value))
    if isinstance(value, bool | int) and not isinstance(value, list | tuple):
        return _length_delimited(_INT64, _length_delimited(1, _varint(int(value))))
    if isinstance(value, float):
        return _length_delimited(_FLOAT, _length_delimited(1, struct.pack("<f", value)))
    return _length_delimited(_BYTES, _length_delimited(1, _as_bytes(value)))


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str).encode()
    return str(value).encode()


def encode_example(features: dict[str, Any]) -> bytes:
    """A serialized ``tf.train.Example`` with one feature per item."""
    entries = b"".join(
        _length_delimited(1, _length_delimited(1, name.encode()) + _length_delimited(2, _feature(value)))
        for name, value in features.items()
    )
    return _length_delimited(1, entries)


def frame(record: bytes) -> bytes:
    length = struct.pack("<Q", len(record))
    return b"".join(
        (length, struct.pack("<I", masked_crc(length)), record, struct.pack("<I", masked_crc(record)))
    )


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message (varint, fixed and delimited)."""
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
            if pos > len(data):
                raise ValueError("truncated field")
        elif wire == 5:
            value, pos = struct.unpack_from("<f", data, pos)[0], pos + 4
        elif wire == 1:
            value, pos = struct.unpack_from("<q", data, pos)[0], pos + 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield field, wire, value


def _decode_feature(data: bytes) -> list[Any]:
    values: list[Any] = []
    for kind, _, payload in _fields(data):
        for _, wire, item in _fields(payload):
            if kind == _BYTES:
                values.append(item)
            elif kind == _FLOAT:
                if wire == 2:  # packed
                    values.extend(struct.unpack(f"<{len(item) // 4}f", item))
                else:
                    values.append(item)
            elif kind == _INT64:
                if wire == 2:
                    pos = 0
                    while pos < len(item):
                        number, pos = _read_varint(item, pos)
                        values.append(number - (1 << 64) if number >> 63 else number)
                else:
                    values.append(item - (1 << 64) if item >> 63 else item)
    return values


def decode_example(record: bytes) -> dict[str, list[Any]]:
    """A serialized Example as {feature name: values}."""
    features: dict[str, list[Any]] = {}
    for _, _, body in _fields(record):
        for _, _, entry in _fields(body):
            name, value = "", b""
            for field, _, item in _fields(entry):
                if field == 1:
                    name = item.decode()
                elif field == 2:
                    value = item
            features[name] = _decode_feature(value)
    return features


def read_records(handle: IO[bytes]) -> Iterator[bytes]:
    """The records of a TFRecord stream; raises ValueError on a truncated or corrupt one."""
    while True:
        header = handle.read(12)
        if not header:
            return
        if len(header) < 12:
            raise ValueError("truncated record header")
        length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:])
        if masked_crc(length_bytes) != length_crc:
            raise ValueError("record length checksum mismatch")
        (length,) = struct.unpack("<Q", length_bytes)
        record = handle.read(length)
        footer = handle.read(4)
        if len(record) < length or len(footer) < 4:
            raise ValueError("truncated record")
        if masked_crc(record) != struct.unpack("<I", footer)[0]:
            raise ValueError("record checksum mismatch")
        yield record


class TFRecordSink:
    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle

    def add(self, sample: StoredSample) -> None:
        features: dict[str, Any] = {"key": sample.key, sample.extension: sample.image}
        if sample.caption is not None:
            features["txt"] = sample.caption
        features.update(sample.meta)
        self._handle.write(frame(encode_example(features)))

    def close(self) -> None:
        self._handle.close()


class TFRecordFormat(ShardFormat):
    name = "tfrecord"

    def container(self, shard: str) -> str | None:
        return f"{shard}.tfrecord"

    def open_sink(self, output: OutputFolder, shard: str) -> tuple[str, SampleSink] | None:
        tmp, handle = output.open_tmp(f"{shard}.tfrecord")
        return tmp, TFRecordSink(handle)

    def read_samples(self, output: OutputFolder, shard: str, extension: str) -> Iterator[ReadSample]:
        name = f"{shard}.tfrecord"
        try:
            with output.fs.open(output.path(name), "rb") as handle:
                for record in read_records(handle):
                    features = decode_example(record)
                    image = features.pop(extension, [b""])[0]
                    features.pop("txt", None)
                    meta = {k: _meta_value(v) for k, v in features.items()}
                    yield ReadSample(str(meta.get("key", "")), image, meta)
        except (OSError, ValueError, UnicodeDecodeError, IndexError) as error:
            raise ShardReadError(f"{name}: {error}") from None


def _meta_value(values: list[Any]) -> Any:
    """A metadata feature as the json would hold it: one value, text decoded, empty = none."""
    if len(values) != 1:
        return [v.decode() if isinstance(v, bytes) else v for v in values]
    value = values[0]
    if isinstance(value, bytes):
        return value.decode() if value else None
    return value
