"""What dataset verification costs as shards and images per shard grow (wall, peak memory).

Usage (from the repository root)::

    .venv/bin/python -m bench.bench_verify --shards 12 120 --images 100 2000

Each (shards, images) dataset is written once under ``--root`` by the real shard writer (one
small JPEG per sample, no network), then verified in a fresh subprocess, which reports the wall
time of ``verify_dataset`` and its peak RSS above the RSS it had after the imports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_MEASURE = """
import json, resource, sys, time
from dataset_assets.engine.options import DownloadOptions
from dataset_assets.reporting.verify import verify_dataset
folder, shards, images = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
options = DownloadOptions(output_format="webdataset", number_sample_per_shard=images)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
report = verify_dataset(folder, [f"{i:05d}" for i in range(shards)], options)
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall_s": round(wall, 3), "peak_rss_above_imports_mb": round((peak - base) / 1024, 1),
                  "decoded": report.samples_decoded, "bytes_hashed": report.bytes_hashed,
                  "passed": all(c.passed for c in report.checks.values())}))
"""


def write_shards(folder: Path, shards: int, images: int) -> None:
    import pyarrow as pa

    from dataset_assets.engine.options import DownloadOptions
    from dataset_assets.engine.records import SUCCESS, SampleResult
    from dataset_assets.engine.shards.writer import ShardWriter
    from dataset_assets.io.storage import OutputFolder
    from dataset_assets_tests.fakeweb.images import make_image

    image = make_image(5, 40, 30)
    options = DownloadOptions(output_format="webdataset", number_sample_per_shard=images)
    output = OutputFolder(str(folder))
    for shard_id in range(shards):
        if (folder / f"{shard_id:05d}_stats.json").exists():
            continue
        urls = [f"http://127.0.0.1/{shard_id}/{i}.jpg" for i in range(images)]
        writer = ShardWriter(output, options, shard_id, pa.table({"url": urls}))
        for i in range(images):
            writer.add(SampleResult(shard_id, i, SUCCESS, image=image, width=40, height=30))
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[12, 120])
    parser.add_argument("--images", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "bench_verify")
    args = parser.parse_args()
    for shards in args.shards:
        for images in args.images:
            folder = args.root / f"{shards}x{images}"
            write_shards(folder, shards, images)
            done = subprocess.run(
                [sys.executable, "-c", _MEASURE, str(folder), str(shards), str(images)],
                capture_output=True,
                text=True,
                check=True,
                timeout=3600,
            )
            print(json.dumps({"shards": shards, "images_per_shard": images, **json.loads(done.stdout)}))


if __name__ == "__main__":
    main()
