"""Composition root of a remote worker (``batchyard worker --server URL --token-file F``):
the attempt box of this host behind the HTTP worker port; no database, no SMTP secrets."""

from __future__ import annotations

import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from batchyard.app import build_supervisor, worker_labels
from batchyard.config import Settings
from batchyard.domain.attempts import ClaimedAttempt, WorkerPortClosed
from batchyard.nodelock import take_node_slot
from batchyard.runtime.loops.node_loop import NodeHeartbeat
from batchyard.runtime.loops.pool import PoolTiming, WorkerPool
from batchyard.runtime.port_remote import RemotePort

log = logging.getLogger("batchyard.remote")


def _node_id(data_dir: Path) -> str:
    path = data_dir / "node.id"
    if path.exists():
        return path.read_text().strip()
    made = "node-" + secrets.token_hex(6)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(made)
    return made


class RemoteWorker:
    def __init__(self, settings: Settings, server_url: str, token: str) -> None:
        self.settings = settings
        data_dir = settings.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        # Several worker processes may share a host's data folder: a slot each.
        self.slot = take_node_slot(data_dir, _node_id(data_dir), shared_store=True)
        self.labels = worker_labels(settings.worker_labels)
        self.port = RemotePort(server_url, token, data_dir / "code-cache", labels=self.labels)
        hello = self.port.hello()
        log.info("worker token %s (%s) accepted by %s", hello["worker"], hello["name"],
                 server_url)
        self.supervisor = build_supervisor(settings, data_dir)
        port = self.port

        def forward(attempt: ClaimedAttempt, record: Any) -> dict[str, Any]:
            return port.request(attempt, record)

        # The job's requests run in the control plane, which holds the credentials.
        self.supervisor.requests.update({"db": forward, "email": forward})
        lease = float(hello["lease_seconds"])
        timing = PoolTiming(poll_interval=0.1, lease_seconds=lease,
                            heartbeat_seconds=float(hello["heartbeat_seconds"]),
                            sweep_interval=lease, hold_claim=True)
        # Set by a signal (run's caller) or by the control plane refusing this worker.
        self._stop = threading.Event()
        self.pool = WorkerPool(port, self.supervisor,
                               f"{self.slot.node_id}:{secrets.token_hex(3)}",
                               settings.workers, timing, on_closed=lambda: self._stop.set())
        self.heartbeat = NodeHeartbeat(self.beat, float(hello["node_heartbeat_seconds"]))

    def beat(self) -> None:
        try:
            self.port.heartbeat(self.slot.node_id, self.settings.workers,
                                self.pool.running_count(), self.labels)
        except WorkerPortClosed as exc:
            self.pool.close(str(exc))

    def run(self, stop: threading.Event) -> int:
        """Until ``stop`` is set (0) or the control plane refuses this worker (1)."""
        self._stop = stop
        if self.pool.closed.is_set():
            stop.set()
        self.heartbeat.start()
        self.pool.start()
        try:
            stop.wait()
            return 1 if self.pool.closed.is_set() else 0
        finally:
            self.pool.stop()
            self.supervisor.close()
            self.heartbeat.stop()
            self.port.close()
            self.slot.release()
