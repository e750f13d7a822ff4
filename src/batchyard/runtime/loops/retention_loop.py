"""The retention loop: deletes expired executions and audit entries, gives the space back.

Runs in every ``serve`` process (deletes are idempotent; two processes only share the
work). Each batch is a short transaction and the loop pauses between batches, so the
invoke path and the workers never wait long for SQLite's single write lock. Freed pages
are returned to the file system by ``PRAGMA incremental_vacuum`` in small steps (the
store is ``auto_vacuum=INCREMENTAL``; PostgreSQL's autovacuum reuses the space itself).
uv's download cache is cleaned (``uv cache clean``, which refuses while an install uses
the cache) when it grows above its bound.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from batchyard.runtime.loops.driver import Driver
from batchyard.services import retention
from batchyard.services.context import Platform

log = logging.getLogger("batchyard.retention")
# Between two batches: another writer waiting for the lock gets it first.
PAUSE_SECONDS = 0.02
BATCHES_PER_STEP = 50
VACUUM_PAGES = 1000
UV_CLEAN_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class RetentionPolicy:
    batch_size: int = 200
    audit_retention_days: int = 365
    interval_seconds: float = 300.0


@dataclass(frozen=True)
class UvCache:
    folder: Path
    max_bytes: int
    uv: str
    environment: Mapping[str, str]


class RetentionLoop(Driver):
    def __init__(self, platform: Platform, policy: RetentionPolicy,
                 uv_cache: UvCache | None = None) -> None:
        super().__init__("retention", log)
        self.platform = platform
        self.policy = policy
        self.uv_cache = uv_cache

    def step(self) -> float:
        deleted = 0
        for _ in range(BATCHES_PER_STEP):
            purged = retention.purge_batch(self.platform, self.policy.batch_size,
                                           self.policy.audit_retention_days)
            deleted += purged.total
            self.give_back_space()
            if purged.executions < self.policy.batch_size and \
                    purged.audit_entries < self.policy.batch_size:
                break
            if self._stopping.wait(PAUSE_SECONDS):
                return 0.0
        else:
            if deleted:
                log.info("retention: %d rows deleted, more to go", deleted)
            return PAUSE_SECONDS  # more expired rows: carry on after a breath
        if deleted:
            log.info("retention: %d expired executions and audit entries deleted", deleted)
        retention.purge_alerts(self.platform, self.policy.audit_retention_days)
        self.bound_uv_cache()
        return self.policy.interval_seconds

    def give_back_space(self) -> None:
        """Return the free pages to the file system, a small step at a time."""
        while self.platform.db.give_back_space(VACUUM_PAGES) > 0:
            if self._stopping.wait(PAUSE_SECONDS):
                return

    def bound_uv_cache(self) -> None:
        cache = self.uv_cache
        if cache is None or not cache.folder.exists():
            return
        size = folder_bytes(cache.folder)
        if size <= cache.max_bytes:
            return
        try:
            done = subprocess.run([cache.uv, "cache", "clean"], env=dict(cache.environment),
                                  capture_output=True, timeout=UV_CLEAN_TIMEOUT_SECONDS,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("uv cache at %s is %d MiB: cleaning failed: %s", cache.folder,
                        size >> 20, exc)
            return
        if done.returncode != 0:
            log.warning("uv cache at %s is %d MiB; uv cache clean: %s", cache.folder,
                        size >> 20, done.stderr.decode("utf-8", "replace").strip()[-300:])
        else:
            log.info("uv cache at %s was %d MiB: cleaned", cache.folder, size >> 20)


def folder_bytes(folder: Path) -> int:
    """Allocated bytes under ``folder`` (a hard link counted once; links not followed)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                info = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total
