"""The alert loop: checks the jobs' quiet-schedule and duration alerts every interval
(services/alerts.py); the notifications leave through the outbox's delivery loop."""

from __future__ import annotations

import logging

from batchyard.runtime.loops.driver import Driver
from batchyard.services import alerts
from batchyard.services.context import Platform

log = logging.getLogger("batchyard.alerts")


class AlertLoop(Driver):
    def __init__(self, platform: Platform, interval_seconds: float = 30.0) -> None:
        super().__init__("alerts", log)
        self.platform = platform
        self.interval_seconds = interval_seconds

    def step(self) -> float:
        report = alerts.check_alerts(self.platform)
        if report.opened or report.recovered:
            log.info("alerts: %d incident(s) opened, %d recovered", report.opened,
                     report.recovered)
        return self.interval_seconds
