"""One writer per shard at a time: a lease file beside the shard's temporary files.

Why: two runs of one partition at once (a backfill and a retry, two Dagster deployments, a
CLI run beside a Dagster run) would each commit their own tar and parquet, and the shard could
end up with the tar of one run and the parquet of the other.

How: the writer creates ``_tmp/{shard}.lease`` (owner id, host, pid, expiry) with an
exclusive create before it downloads anything, renews it while the shard is in flight, checks
that it still names it right before committing the shard's files and again right before
publishing the stats json (the completion marker), and removes it when the shard is committed
or aborted. A writer that finds a live lease of another owner raises :class:`ShardLeaseError`
at once, before fetching a row; one that finds its lease gone or taken over aborts its shard
(nothing more of it is published).

What is guaranteed, and its limits:

* Local disk and S3 (``If-None-Match: *``, honoured by AWS S3 and moto): of two writers that
  start while no live lease exists, exactly one gets it; the other never writes the shard.
* A lease expires ``LEASE_TTL_S`` after its last renewal (so a killed run's shard is not
  locked for ever), or at once when its holder ran on this host and that process is gone. An
  expired lease is taken over by delete-then-create, so two writers that both find it expired
  may both believe they hold it for a moment; the re-checks before committing make the one that
  was overwritten abort, but a takeover that lands between a writer's last check and its stats
  json PUT is not seen (the window is one small PUT).
* Expiry compares wall clocks: machines whose clocks disagree by more than the TTL can take a
  live lease. A holder stalled longer than the TTL (a frozen VM) can lose it while it works;
  the re-checks catch that before it publishes.
* Other object stores get a check-then-create that is not exclusive (see
  :meth:`~dataset_assets.io.storage.OutputFolder.create_exclusive`): there the re-checks are
  the only guard.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from typing import Any

from dataset_assets.io.storage import TMP_DIR, OutputFolder

LEASE_TTL_S = 120.0
LEASE_RENEW_S = 30.0  # how often the pool renews the leases of the shards in flight
_READ_ATTEMPTS = 5  # a lease being created locally may be read empty for an instant
_READ_PAUSE_S = 0.02


class ShardLeaseError(RuntimeError):
    """Another writer holds (or took over) this shard's lease; the message names it."""


def lease_name(shard: str) -> str:
    return f"{TMP_DIR}/{shard}.lease"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    left = float(holder.get("expires_at", 0)) - time.time()
    return f"{holder.get('owner', '?')} (expires in {max(left, 0):.0f}s)"


class ShardLease:
    """The lease one :class:`~dataset_assets.engine.shards.writer.ShardWriter` holds."""

    def __init__(self, output: OutputFolder, shard: str, ttl_s: float = LEASE_TTL_S) -> None:
        self.output = output
        self.shard = shard
        self.ttl_s = ttl_s
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.name = lease_name(shard)
        self.renewed_at = 0.0

    @classmethod
    def acquire(cls, output: OutputFolder, shard: str, ttl_s: float = LEASE_TTL_S) -> ShardLease:
        """Take the shard's lease or raise :class:`ShardLeaseError` naming its live holder."""
        lease = cls(output, shard, ttl_s)
        if output.create_exclusive(lease.name, lease._payload()):
            return lease
        holder = lease._holder()
        if holder is None or lease._stale(holder):
            output.remove(lease.name)
            if output.create_exclusive(lease.name, lease._payload()):
                return lease
            holder = lease._holder() or {}
        raise ShardLeaseError(
            f"shard {shard} is being written by another run: {_describe(holder)}; "
            f"not writing it twice (lease {output.url_of(lease.name)})"
        )

    def _payload(self) -> bytes:
        self.renewed_at = time.monotonic()
        return json.dumps(
            {
                "owner": self.owner,
                "host": self.host,
                "pid": os.getpid(),
                "expires_at": time.time() + self.ttl_s,
            }
        ).encode()

    def _holder(self) -> dict[str, Any] | None:
        """The lease as stored now; None when there is none.

        An unreadable one (empty, truncated, edited by hand) reads as held until ``ttl_s``
        after it was last written, like any lease its holder stopped renewing: reading it as
        held for good would lock its shard out of every later run.
        """
        for _ in range(_READ_ATTEMPTS):
            try:
                payload = self.output.read_json(self.name)
            except FileNotFoundError:
                return None
            except ValueError:  # being written now (a store with no whole-file exclusive create)
                time.sleep(_READ_PAUSE_S)
                continue
            if isinstance(payload, dict):
                return payload
        try:
            written = self.output.modified_at(self.name)
        except FileNotFoundError:
            return None
        written = time.time() if written is None else written
        return {"owner": "unknown (unreadable lease)", "expires_at": written + self.ttl_s}

    def _stale(self, holder: dict[str, Any]) -> bool:
        if float(holder.get("expires_at", 0)) < time.time():
            return True
        pid = holder.get("pid")
        return holder.get("host") == self.host and isinstance(pid, int) and not _pid_alive(pid)

    def check(self) -> None:
        """Raise :class:`ShardLeaseError` unless the stored lease is still this one."""
        holder = self._holder()
        if holder is None or holder.get("owner") != self.owner:
            taken = f"taken over by {_describe(holder)}" if holder else "removed"
            raise ShardLeaseError(
                f"shard {self.shard}: this run's lease was {taken}; aborting the shard, "
                "nothing more of it is published"
            )

    def renew(self) -> None:
        """Push the expiry forward (after checking the lease is still this one)."""
        self.check()
        self.output.write_bytes_atomic(self.name, self._payload())

    def release(self) -> None:
        """Remove the lease if it is still this one (never another writer's)."""
        try:
            holder = self._holder()
        except OSError:
            return
        if holder is not None and holder.get("owner") == self.owner:
            with contextlib.suppress(OSError):
                self.output.remove(self.name)
