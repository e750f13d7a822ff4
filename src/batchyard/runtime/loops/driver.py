"""A background thread that runs a step, then sleeps as long as the step said or until woken.

The scheduler and the delivery loop work alike: do what is due, ask when the next
thing is due, sleep until then (bounded: other processes write work this one does
not hear of), and wake early when this process writes some.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime


def seconds_until(due: datetime | None, now: datetime, max_sleep: float) -> float:
    """How long to sleep for something due at ``due``: never negative, at most ``max_sleep``."""
    if due is None:
        return max_sleep
    return min(max((due - now).total_seconds(), 0.0), max_sleep)


class Driver:
    """Subclasses implement ``step()``; a failed step is logged and retried after a second."""

    def __init__(self, name: str, log: logging.Logger) -> None:
        self._log = log
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def step(self) -> float:
        """Do what is due; return how long to sleep before the next look."""
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            # Cleared before the step: a wake during the step is not lost.
            self._wake.clear()
            try:
                wait = self.step()
            except Exception:
                self._log.exception("%s step failed", self._thread.name)
                wait = 1.0
            self._wake.wait(wait)
