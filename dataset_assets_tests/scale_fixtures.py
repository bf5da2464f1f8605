"""Real servers on loopback for the scale-out tests: an S3 API (moto), PostgreSQL, dagster-daemon.

Every process started here is bounded twice: a finalizer stops it, and it runs under
``timeout`` so that it stops by itself even if pytest is killed before the finalizer runs.
Postgres is not started here: ``.ci/postgres start`` (called by ``.ci/run``) exports
``DATASET_ASSETS_TEST_PG``; without it the tests that need it are skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

PG_ENV = "DATASET_ASSETS_TEST_PG"
REGION = "us-east-1"
ACCESS_KEY = "dataset-assets-test"
SECRET_KEY = "dataset-assets-test-secret"
MOTO_MAX_LIFETIME_S = 1800
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bounded(command: list[str], lifetime_s: float) -> list[str]:
    """``command`` under coreutils ``timeout``: TERM after ``lifetime_s``, KILL 10 s later."""
    wrapper = shutil.which("timeout")
    if wrapper is None:  # pragma: no cover - coreutils is everywhere we run
        return command
    return [wrapper, "-k", "10", str(int(lifetime_s)), *command]


def stop_process_group(process: subprocess.Popen[Any], grace_s: float = 15.0) -> None:
    """SIGTERM the process's whole group (it was started in its own session), then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_s)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    @property
    def storage_options(self) -> dict[str, Any]:
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": REGION},
        }

    def environment(self) -> dict[str, str]:
        """The standard AWS variables pointing at this server (for subprocesses)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return sorted(
            item["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 API on 127.0.0.1 and a random free port, in a subprocess."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            bounded(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], MOTO_MAX_LIFETIME_S
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield S3Server(endpoint)
    finally:
        stop_process_group(process)


@dataclass(frozen=True)
class PostgresDatabase:
    url: str

    @property
    def parts(self) -> dict[str, str]:
        u = urlsplit(self.url)
        return {
            "host": u.hostname or "127.0.0.1",
            "port": str(u.port or 5432),
            "user": u.username or "postgres",
            "password": u.password or "",
            "db": u.path.lstrip("/"),
        }

    def storage_config(self) -> dict[str, Any]:
        """dagster.yaml ``storage`` section for this database."""
        p = self.parts
        return {
            "postgres": {
                "postgres_db": {
                    "hostname": p["host"],
                    "port": int(p["port"]),
                    "username": p["user"],
                    "password": p["password"],
                    "db_name": p["db"],
                    "scheme": "postgresql+psycopg2",
                }
            }
        }

    def environment(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables deploy/dagster.yaml reads."""
        p = self.parts
        return {
            "DAGSTER_PG_HOST": p["host"],
            "DAGSTER_PG_PORT": p["port"],
            "DAGSTER_PG_USER": p["user"],
            "DAGSTER_PG_PASSWORD": p["password"],
            "DAGSTER_PG_DB": p["db"],
        }


def _pg_server_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(
            f'no PostgreSQL for this test: set {PG_ENV} (`eval "$(.ci/postgres start)"`, as .ci/run does)'
        )
    host = urlsplit(url).hostname or ""
    if not host.startswith("127.") and host != "localhost":
        pytest.skip(f"{PG_ENV} must point at a loopback server, got host {host!r}")
    import psycopg2

    try:
        psycopg2.connect(url, connect_timeout=5).close()
    except psycopg2.Error as error:
        pytest.skip(f"PostgreSQL at {PG_ENV} is not reachable: {error}")
    return url


@pytest.fixture
def postgres_db() -> Iterator[PostgresDatabase]:
    """A fresh, empty database on the test server; dropped afterwards."""
    import psycopg2

    server = _pg_server_url()
    name = f"dagster_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server, connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        u = urlsplit(server)
        yield PostgresDatabase(u._replace(path=f"/{name}").geturl())
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextlib.contextmanager
def running_daemon(
    home: Path, workspace: Path, env: dict[str, str], lifetime_s: float = 600
) -> Iterator[subprocess.Popen[Any]]:
    """``dagster-daemon run`` (with its code server) in its own session; stopped on exit."""
    log = home / "daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            bounded(
                [sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)],
                lifetime_s,
            ),
            env=env,
            cwd=str(home),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process_group(process)
