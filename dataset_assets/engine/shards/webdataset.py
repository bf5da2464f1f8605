"""webdataset: a tar per shard with ``{key}.jpg``, ``{key}.txt`` and ``{key}.json`` members."""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Iterator
from typing import IO

from dataset_assets.engine.shards.formats import (
    ReadSample,
    SampleSink,
    ShardFormat,
    ShardReadError,
    StoredSample,
    sample_json,
)
from dataset_assets.io.storage import OutputFolder


class TarSink:
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


class TarSampleSink:
    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._tar = TarSink(handle)

    def add(self, sample: StoredSample) -> None:
        """Members in the order webdataset's TarWriter (img2dataset's writer) gives them: sorted
        by extension (``jpg``, ``json``, ``txt``), so a tar lists exactly as img2dataset's does."""
        members = {sample.extension: sample.image, "json": sample_json(sample.meta).encode()}
        if sample.caption is not None:
            members["txt"] = sample.caption.encode()
        for extension in sorted(members):
            self._tar.add(f"{sample.key}.{extension}", members[extension])

    def close(self) -> None:
        self._tar.close()
        self._handle.close()


class WebDatasetFormat(ShardFormat):
    name = "webdataset"

    def container(self, shard: str) -> str | None:
        return f"{shard}.tar"

    def open_sink(self, output: OutputFolder, shard: str) -> tuple[str, SampleSink] | None:
        tmp, handle = output.open_tmp(f"{shard}.tar")
        return tmp, TarSampleSink(handle)

    def read_samples(self, output: OutputFolder, shard: str, extension: str) -> Iterator[ReadSample]:
        """Images with their json, in tar order; an image whose json is missing comes last."""
        name = f"{shard}.tar"
        pending_json: dict[str, dict] = {}
        images: dict[str, bytes] = {}
        try:
            with (
                output.fs.open(output.path(name), "rb") as handle,
                tarfile.open(fileobj=handle, mode="r|") as tar,
            ):
                for member in tar:
                    key, _, suffix = member.name.partition(".")
                    extracted = tar.extractfile(member)
                    if extracted is None:
                        continue
                    payload = extracted.read()
                    if suffix == "json":
                        pending_json[key] = json.loads(payload)
                    elif suffix == extension:
                        images[key] = payload
                    if key in images and key in pending_json:
                        yield ReadSample(key, images.pop(key), pending_json.pop(key))
        except (tarfile.TarError, OSError, EOFError, ValueError) as error:
            raise ShardReadError(f"{name}: {error}") from None
        for key, payload in images.items():
            yield ReadSample(key, payload, None)
