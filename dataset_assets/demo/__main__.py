"""The end-to-end demo: generate images, serve them on 127.0.0.1, build the dataset with Dagster.

    python -m dataset_assets.demo [--images 1500] [--dir demo_output] [--ui]

It materialises the whole asset graph against a persistent Dagster instance
(``{dir}/dagster_home``), shards a run as a backfill would, then prints where the dataset and
its card are and the command that opens the same instance in ``dagster dev``. With ``--ui`` it
then starts that UI itself (127.0.0.1 only) and keeps serving the images until the UI is
stopped, so runs launched from the UI can download too. Dagster's event stream goes to
``{dir}/logs/dagster.log``; the terminal shows progress and the summary. The image server is
the tests' fake web (``dataset_assets_tests.fakeweb``): the demo runs from a checkout (README's
first command), and the product image carries no test server.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from dataset_assets.demo.prepare import DemoPaths, prepare_demo
from dataset_assets.demo.progress import TerminalProgress
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

SERVER_LIFETIME_S = 1800.0
# With --ui the images are served as long as the UI runs, up to this bound (the server must
# stop by itself even if nobody stops the UI).
UI_LIFETIME_S = 8 * 3600.0
UI_HOST = "127.0.0.1"


def ui_environment(paths: DemoPaths) -> dict[str, str]:
    """What ``dagster dev`` needs to show the demo: its instance (runs, partitions) and its spec."""
    return {"DAGSTER_HOME": str(paths.dagster_home), "DATASET_SPEC": str(paths.spec)}


def ui_argv(port: int | None = None) -> list[str]:
    """``dagster dev`` on the project's definitions, bound to loopback, from any directory."""
    argv = ["dagster", "dev", "-m", "dataset_assets.definitions", "-h", UI_HOST]
    return argv + (["-p", str(port)] if port else [])


def ui_command(paths: DemoPaths) -> str:
    """The shell command that opens the demo's runs in the UI (absolute paths: works anywhere)."""
    env = " ".join(f"{name}={shlex.quote(value)}" for name, value in ui_environment(paths).items())
    return f"{env} {shlex.join(ui_argv())}"


def route_warnings(log_file: Path) -> None:
    """Python warnings (Dagster's preview/beta notices) go to the log file, not the terminal."""
    logging.captureWarnings(True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.addHandler(handler)
    warnings_logger.propagate = False


def run_ui(paths: DemoPaths, server: ImageServer, port: int) -> None:
    """Run ``dagster dev`` on the demo's instance until it stops or Ctrl-C, then return."""
    env = {**os.environ, **ui_environment(paths)}
    argv = [sys.executable, "-m", *ui_argv(port)]  # python -m dagster dev: the demo's interpreter
    print(
        f"\nstarting the UI: http://{UI_HOST}:{port} (dagster dev on the demo's instance, logs below);\n"
        f"the image server at {server.base_url} stays up until you stop the UI with Ctrl-C",
        flush=True,
    )
    ui = subprocess.Popen(argv, env=env)
    with _interrupt_requests() as interrupted:
        while ui.poll() is None and not interrupted.is_set():
            if server.wait(1.0):
                print("the image server reached its time limit; stopping the UI", flush=True)
                break
        _stop(ui)
    print("UI stopped; the image server stops now", flush=True)


@contextlib.contextmanager
def _interrupt_requests() -> Iterator[threading.Event]:
    """Ctrl-C sets an event instead of raising, for as long as the UI runs and stops.

    A KeyboardInterrupt can land anywhere, including inside the shutdown itself, and a
    terminal or GNU ``timeout`` may deliver SIGINT twice (to the process, then to its group);
    an exception there would leave ``dagster dev`` running and the demo dead by signal. The
    shutdown escalates by itself in bounded time, so nothing needs a second Ctrl-C.
    """
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop(ui: subprocess.Popen[bytes]) -> None:
    """Let ``dagster dev`` shut its webserver and daemon down (one SIGINT), then insist."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        ui.wait(3.0)  # a terminal's Ctrl-C reached it too
    if ui.poll() is None:
        ui.send_signal(signal.SIGINT)  # dagster dev's own clean shutdown
    for wait_s, action in ((30.0, ui.terminate), (10.0, ui.kill)):
        try:
            ui.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            action()
    ui.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataset_assets.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--images", type=int, default=1500, help="distinct images to generate")
    parser.add_argument("--dir", default="demo_output", help="where everything is written")
    parser.add_argument("--port", type=int, default=0, help="image server port (0 = any free one)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--serve-only",
        action="store_true",
        help="prepare and serve, then wait (for `dagster dev` / `dagster asset materialize` runs)",
    )
    mode.add_argument(
        "--ui",
        action="store_true",
        help=f"after the build, run `dagster dev` on {UI_HOST} on the demo's instance, serving the "
        "images until the UI is stopped (Ctrl-C)",
    )
    parser.add_argument("--ui-port", type=int, default=3000, help="the UI's port with --ui")
    args = parser.parse_args(argv)
    paths = DemoPaths(Path(args.dir).resolve())
    lifetime = UI_LIFETIME_S if args.ui else SERVER_LIFETIME_S
    config = ServerConfig(latency_s=(0.005, 0.03), port=args.port, max_lifetime_s=lifetime)
    with ImageServer(root=paths.images, config=config) as server:
        prepare_demo(paths, server, args.images)
        route_warnings(paths.log_file)
        os.environ.update(ui_environment(paths))
        print(f"serving {args.images} images at {server.base_url}; spec {paths.spec}", flush=True)
        if args.serve_only:
            print("serving until interrupted (Ctrl-C) or for at most 30 minutes", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.wait(SERVER_LIFETIME_S)
            return 0
        from dataset_assets.demo.build import QUIET_CONSOLE, build_dataset
        from dataset_assets.spec import load_spec

        print(f"Dagster's event log (every event, DEBUG included): {paths.log_file}", flush=True)
        spec = load_spec(paths.spec)
        progress = TerminalProgress(paths.dataset, Path(spec.shard_inputs_folder))
        started = time.monotonic()
        outcome = build_dataset(progress=progress, run_config=QUIET_CONSOLE)
        print(
            f"\nbuilt {outcome.shards} shards, {outcome.images} images "
            f"({outcome.success_rate:.1%} of {outcome.rows} rows) in {time.monotonic() - started:.0f}s"
        )
        verdict = "all passed" if outcome.checks_passed else f"FAILED: {outcome.failed_checks}"
        print(f"verification checks: {verdict}")
        print(f"dataset:      {paths.dataset}")
        print(f"dataset card: {paths.dataset / 'DATASET_CARD.md'}")
        print(f"Dagster log:  {paths.log_file}", flush=True)
        if args.ui:
            print(f"later, without --ui: {ui_command(paths)}")
            run_ui(paths, server, args.ui_port)
            return 0 if outcome.checks_passed else 1
    print(
        f"image server: stopped; its URLs ({server.base_url}) no longer answer, so runs launched "
        "from the UI cannot download: use `--ui` for that"
    )
    print("open the demo's runs in the UI (then http://127.0.0.1:3000):")
    print(f"  {ui_command(paths)}")
    print("  or: python -m dataset_assets.demo --ui   (the same, with the images served until you stop it)")
    return 0 if outcome.checks_passed else 1


if __name__ == "__main__":
    sys.exit(main())
