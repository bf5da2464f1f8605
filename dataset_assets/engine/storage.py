"""The output folder, through fsspec, with atomic commits.

Every shard file is written under ``_tmp/`` and moved into place when complete; the stats
json is moved last and is the completion marker (img2dataset's convention, so its tools and
our resume logic agree). A killed process therefore leaves only ``_tmp`` debris, never a
complete-looking ``NNNNN.tar``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import uuid
from typing import IO, Any

import fsspec

TMP_DIR = "_tmp"


class OutputFolder:
    def __init__(self, url: str) -> None:
        fs, root = fsspec.core.url_to_fs(url)
        self.fs: fsspec.AbstractFileSystem = fs
        self.root: str = root.rstrip("/") or "/"
        self.url = url
        self.fs.makedirs(self.root, exist_ok=True)
        self.fs.makedirs(self.path(TMP_DIR), exist_ok=True)

    @property
    def is_local(self) -> bool:
        return "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def tmp_path(self, final_name: str) -> str:
        """A unique temporary sibling name, so two writers of one shard never collide."""
        return self.path(TMP_DIR, f"{uuid.uuid4().hex[:12]}.{final_name}")

    def open_tmp(self, final_name: str) -> tuple[str, IO[bytes]]:
        tmp = self.tmp_path(final_name)
        return tmp, self.fs.open(tmp, "wb")

    def commit(self, tmp: str, final_name: str) -> None:
        """Move a finished temporary file or folder to its final name, replacing any old one."""
        final = self.path(final_name)
        if self.fs.exists(final):
            self.fs.rm(final, recursive=True)
        self.fs.mv(tmp, final, recursive=True)

    def write_json_atomic(self, final_name: str, payload: dict[str, Any]) -> None:
        tmp, handle = self.open_tmp(final_name)
        with handle:
            handle.write(json.dumps(payload, indent=4, default=str).encode())
        self.commit(tmp, final_name)

    def sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def read_json(self, name: str) -> dict[str, Any]:
        with self.fs.open(self.path(name), "rb") as handle:
            return json.loads(handle.read())

    def discard(self, tmp: str) -> None:
        try:
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)
        except OSError:
            pass

    def clean_tmp(self) -> None:
        """Remove ``_tmp`` debris left by killed runs (call only when no writer is active)."""
        tmp = self.path(TMP_DIR)
        if self.fs.exists(tmp):
            for entry in self.fs.ls(tmp, detail=False):
                self.discard(entry)
