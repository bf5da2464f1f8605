"""The demo's terminal: one line per step and per finished shard, with images/s and an ETA.

Dagster's own event stream (about fifteen DEBUG events per step) goes to the demo's log file
(see ``prepare.instance_yaml``); what the terminal shows is read from the engine's own account
of a finished shard, its ``NNNNN_stats.json``, which is written last and atomically when the
shard commits. Counting fresh stats files needs no parsing of log text and sees each shard the
moment it is done, although Dagster reports a run's partitions only when the run ends.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import pyarrow.parquet as pq

from dataset_assets.engine.shards.layout import parquet_name, stats_name

POLL_S = 0.5


def _eta(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class TerminalProgress:
    """Prints the demo's progress for a local dataset folder and its plan's shard inputs."""

    def __init__(self, dataset: Path, shard_inputs: Path, out: TextIO | None = None) -> None:
        self.dataset = dataset
        self.shard_inputs = shard_inputs
        self.out = out if out is not None else sys.stdout

    def stage(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _rows(self, keys: Sequence[str]) -> int:
        total = 0
        for key in keys:
            with contextlib.suppress(OSError):
                total += pq.read_metadata(self.shard_inputs / parquet_name(key)).num_rows
        return total

    @contextlib.contextmanager
    def downloading(self, keys: Sequence[str], total_shards: int) -> Iterator[None]:
        """Watch ``keys`` being downloaded until the block ends (then one last look)."""
        watch = _ShardWatch(self, list(keys), total_shards, self._rows(keys))
        self.stage(f"image_shards: downloading {len(keys)} of {total_shards} shards ({watch.rows} rows)")
        thread = threading.Thread(target=watch.run, name="demo-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            watch.stop.set()
            thread.join(5.0)
            watch.poll()


class _ShardWatch:
    def __init__(self, progress: TerminalProgress, keys: list[str], total_shards: int, rows: int) -> None:
        self.progress = progress
        self.keys = keys
        self.total_shards = total_shards
        self.already = total_shards - len(keys)
        self.rows = rows
        self.started = time.time()
        self.stop = threading.Event()
        self.done: dict[str, tuple[int, int]] = {}  # key -> (rows, images stored)
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.wait(POLL_S):
            self.poll()

    def _fresh_stats(self, key: str) -> tuple[int, int] | None:
        path = self.progress.dataset / stats_name(key)
        try:
            # Older stats are a previous run's: this run may be redoing the shard.
            if path.stat().st_mtime < self.started - 1.0:
                return None
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return int(payload.get("count", 0)), int(payload.get("successes", 0))

    def poll(self) -> None:
        with self._lock:
            for key in self.keys:
                if key in self.done:
                    continue
                found = self._fresh_stats(key)
                if found is not None:
                    self.done[key] = found
                    self._report(key)

    def _report(self, key: str) -> None:
        elapsed = max(time.time() - self.started, 1e-6)
        rows_done = sum(rows for rows, _ in self.done.values())
        images = sum(stored for _, stored in self.done.values())
        rows, stored = self.done[key]
        line = (
            f"  shard {key}: {stored}/{rows} images | {self.already + len(self.done)}/{self.total_shards} "
            f"shards, {images} images, {images / elapsed:.0f} images/s"
        )
        left = self.rows - rows_done
        if left > 0 and rows_done:
            line += f", ETA {_eta(left * elapsed / rows_done)}"
        self.progress.stage(line)
