"""Stopping a job's running query from another thread: past its timeout, or when its
attempt ends.

The server-side timeouts (PostgreSQL ``statement_timeout``, MariaDB ``max_statement_time``)
are session settings the job's own SQL can change (``SET statement_timeout = 0`` ahead of
the slow statement of a ``multi`` request), and the drivers wait for an answer without a
limit of their own. So every request also has a guard: a thread that, at the statement
timeout plus ``SLACK_SECONDS`` (or at once when the request's attempt ends), asks the
server to stop the request (libpq's cancel request, a MySQL ``KILL`` sent on a connection
of its own, SQLite's interrupt), asks again every ``REPEAT_SECONDS`` (a cancel that
reaches PostgreSQL between two statements is lost), and after ``HARD_STOP_SECONDS`` shuts
the socket down, which ends the driver's wait whatever the server does.

The guard bounds the request as a whole: every statement of a ``multi`` request together
gets the statement timeout (the server still bounds each one on its own). A connection
whose guard fired is never reused: a cancel may still be on its way to it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

# Past the server's own timeout: a statement the server stops itself ends with its own
# message, and the guard acts only when the server did not.
SLACK_SECONDS = 1.0
REPEAT_SECONDS = 1.0
HARD_STOP_SECONDS = 5.0
ATTEMPT_ENDED = "The query was cancelled: its attempt ended."


class QueryStopped(Exception):
    """The request was stopped by its guard; the message is safe to show the job."""


class RequestGuard:
    """One request's watchdog; ``stop`` may be called from any thread, at any time."""

    def __init__(self, timeout_seconds: float, slack_seconds: float = SLACK_SECONDS,
                 hard_stop_seconds: float = HARD_STOP_SECONDS) -> None:
        self.timeout_seconds = timeout_seconds
        self.slack_seconds = slack_seconds
        self.hard_stop_seconds = hard_stop_seconds
        # Why the guard stopped the request, once it did.
        self.fired: str | None = None
        self._requested: str | None = None
        self._ended = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._done = threading.Event()

    def stop(self, why: str = ATTEMPT_ENDED) -> None:
        """Stop the request now; one not yet started will not start."""
        with self._lock:
            if self._requested is None:
                self._requested = why
        self._wake.set()

    def check(self) -> None:
        """Raise ``QueryStopped`` once the guard has fired: statements may also end without
        an error when stopped (MySQL's ``SLEEP()`` returns 1), and must still fail."""
        if self.fired is not None:
            raise QueryStopped(self.fired)

    @contextlib.contextmanager
    def watching(self, cancel: Callable[[], None],
                 hard_stop: Callable[[], None]) -> Iterator[None]:
        """Watch the block: ``cancel`` asks the server to stop the running statement,
        ``hard_stop`` ends the driver's wait (both called from the guard's thread)."""
        with self._lock:
            if self._requested is not None:
                self.fired = self._requested
        self.check()
        deadline = time.monotonic() + self.timeout_seconds + self.slack_seconds
        thread = threading.Thread(target=self._watch, args=(cancel, hard_stop, deadline),
                                  name="query-guard", daemon=True)
        thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._ended = True
            self._wake.set()
            self._done.set()
            # A cancel in flight finishes before the connection is closed or reused.
            thread.join()

    def _watch(self, cancel: Callable[[], None], hard_stop: Callable[[], None],
               deadline: float) -> None:
        while not self._wake.wait(max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                break
        with self._lock:
            if self._ended:
                return
            self.fired = self._requested or (
                f"The query ran longer than the statement timeout of "
                f"{self.timeout_seconds:g} s and was cancelled.")
        give_up = time.monotonic() + self.hard_stop_seconds
        while True:
            try:
                cancel()
            except Exception as exc:  # tried again, and the socket goes in the end
                # The type only: a driver's message may quote the server's address.
                log.warning("cancelling a query failed: %s", type(exc).__name__)
            if self._done.wait(min(REPEAT_SECONDS, max(0.0, give_up - time.monotonic()))):
                return
            if time.monotonic() >= give_up:
                try:
                    hard_stop()
                except Exception as exc:
                    log.warning("shutting down a query's connection failed: %s",
                                type(exc).__name__)
                return
