"""The end-to-end demo: generate images, serve them on 127.0.0.1, build the dataset with Dagster.

    python -m dataset_assets.demo [--images 1500] [--dir demo_output]

It materialises the whole asset graph against a persistent Dagster instance
(``{dir}/dagster_home``), one run per shard partition, exactly as a backfill would, then prints
where the dataset and its card are and how to open the same instance in ``dagster dev``. The
image server is the tests' fake web (``dataset_assets_tests.fakeweb``): the demo runs from a
checkout (README's first command), and the product image carries no test server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from dataset_assets.demo.prepare import DemoPaths, prepare_demo
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

SERVER_LIFETIME_S = 1800.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataset_assets.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--images", type=int, default=1500, help="distinct images to generate")
    parser.add_argument("--dir", default="demo_output", help="where everything is written")
    parser.add_argument("--port", type=int, default=0, help="image server port (0 = any free one)")
    parser.add_argument(
        "--serve-only",
        action="store_true",
        help="prepare and serve, then wait (for `dagster dev` / `dagster asset materialize` runs)",
    )
    args = parser.parse_args(argv)
    paths = DemoPaths(Path(args.dir).resolve())
    config = ServerConfig(latency_s=(0.005, 0.03), port=args.port, max_lifetime_s=SERVER_LIFETIME_S)
    with ImageServer(root=paths.images, config=config) as server:
        prepare_demo(paths, server, args.images)
        os.environ["DATASET_SPEC"] = str(paths.spec)
        os.environ["DAGSTER_HOME"] = str(paths.dagster_home)
        print(f"serving {args.images} images at {server.base_url}; spec {paths.spec}", flush=True)
        if args.serve_only:
            print("serving until interrupted (Ctrl-C) or for at most 30 minutes", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.wait(SERVER_LIFETIME_S)
            return 0
        from dataset_assets.demo.build import build_dataset

        started = time.monotonic()
        outcome = build_dataset()
    print(
        f"\nbuilt {outcome.shards} shards, {outcome.images} images "
        f"({outcome.success_rate:.1%} of {outcome.rows} rows) in {time.monotonic() - started:.0f}s"
    )
    verdict = "all passed" if outcome.checks_passed else f"FAILED: {outcome.failed_checks}"
    print(f"verification checks: {verdict}")
    print(f"dataset:      {paths.dataset}")
    print(f"dataset card: {paths.dataset / 'DATASET_CARD.md'}")
    print(f"browse it:    DAGSTER_HOME={paths.dagster_home} DATASET_SPEC={paths.spec} dagster dev")
    return 0 if outcome.checks_passed else 1


if __name__ == "__main__":
    sys.exit(main())
