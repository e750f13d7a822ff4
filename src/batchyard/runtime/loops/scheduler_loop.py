"""The scheduler's driver: fire what is due, then sleep until the next due instant.

No scan per tick: it asks the database for the earliest ``next_fire_at`` (an index
lookup) and sleeps until then, at most ``max_sleep`` (other processes may publish
schedules it does not hear of), or until this process publishes one.
"""

from __future__ import annotations

import logging
from datetime import datetime

from batchyard.runtime.loops.driver import Driver, seconds_until
from batchyard.services import scheduler
from batchyard.services.context import Platform

log = logging.getLogger("batchyard.scheduler")


class SchedulerLoop(Driver):
    def __init__(self, platform: Platform, max_sleep: float = 30.0,
                 busy_backoff: float = 1.0) -> None:
        super().__init__("scheduler", log)
        self.platform = platform
        self.max_sleep = max_sleep
        self.busy_backoff = busy_backoff

    def step(self, now: datetime | None = None) -> float:
        """Fire what is due; return how long to sleep before the next look."""
        report = scheduler.fire_due(self.platform, now)
        if report.jobs:
            log.info("fired %d job(s): %d queued, %d blocked, %d missed, %d coalesced",
                     report.jobs, report.queued, report.blocked, report.missed,
                     report.coalesced)
        due, now = scheduler.next_due(self.platform), self.platform.clock.now()
        if due is not None and due <= now and not report.jobs:
            # Still due, yet nothing fired: another transaction holds those rows (another
            # scheduler firing them, a publish). Sleeping "until" a past instant would spin.
            return min(self.busy_backoff, self.max_sleep)
        return seconds_until(due, now, self.max_sleep)
