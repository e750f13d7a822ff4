"""The scheduler's driver: fire what is due, then sleep until the next due instant.

No scan per tick: it asks the database for the earliest ``next_fire_at`` (an index
lookup) and sleeps until then, at most ``max_sleep`` (other processes may publish
schedules it does not hear of), or until this process publishes one.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from batchyard.services import scheduler
from batchyard.services.context import Platform

log = logging.getLogger("batchyard.scheduler")


class SchedulerLoop:
    def __init__(self, platform: Platform, max_sleep: float = 30.0) -> None:
        self.platform = platform
        self.max_sleep = max_sleep
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def step(self, now: datetime | None = None) -> float:
        """Fire what is due; return how long to sleep before the next look."""
        report = scheduler.fire_due(self.platform, now)
        if report.jobs:
            log.info("fired %d job(s): %d queued, %d blocked, %d missed, %d coalesced",
                     report.jobs, report.queued, report.blocked, report.missed,
                     report.coalesced)
        due = scheduler.next_due(self.platform)
        if due is None:
            return self.max_sleep
        wait = (due - self.platform.clock.now()).total_seconds()
        return min(max(wait, 0.0), self.max_sleep)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                wait = self.step()
            except Exception:
                log.exception("scheduler step failed")
                wait = 1.0
            self._wake.wait(wait)
            self._wake.clear()
