"""Wake-ups between processes on PostgreSQL: NOTIFY when work is queued, LISTEN for it.

On SQLite one process does everything and wakes its own workers in memory. On
PostgreSQL an execution queued by an API or scheduler process was found by the other
processes' workers only at their next poll (1 s by default: a database worker's invoke ->
``main()`` was ~970 ms). Now the queuing process sends a ``NOTIFY`` and every process
that listens wakes one idle worker (which wakes the next if it claimed something).

A notice is only a hint: it carries nothing, a lost one costs one poll interval, and the
polls stay as the floor (work that becomes runnable without being queued, such as a
retry whose delay ran out, is still found by them). Both connections are this module's
own, outside the pool, and come back by themselves after the database restarts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

log = logging.getLogger("batchyard.wakeups")

CHANNEL = "batchyard_queued"
_RECONNECT_SECONDS = 1.0
_LISTEN_STEP_SECONDS = 0.5


def libpq_url(sqlalchemy_url: str) -> str:
    """The libpq form of a ``postgresql+psycopg://`` URL."""
    return make_url(sqlalchemy_url).set(drivername="postgresql") \
        .render_as_string(hide_password=False)


class QueueWakeups:
    """``notify()`` from any thread (coalesced: a burst is one NOTIFY); ``on_notice`` is
    called on the listener thread for each notice another process sent."""

    def __init__(self, database_url: str, on_notice: Callable[[], None],
                 channel: str = CHANNEL) -> None:
        self._url = libpq_url(database_url)
        self._channel = channel
        self._on_notice = on_notice
        self._stopping = threading.Event()
        self._pending = threading.Event()
        self.listening = threading.Event()  # set once LISTEN is in place
        # The sender's backend: a process's own notices come back to its listener, and
        # would wake a worker for work this process already woke one for.
        self._sender_pid: int | None = None
        self._threads = [threading.Thread(target=self._listen, name="wakeups-listen",
                                          daemon=True),
                         threading.Thread(target=self._send, name="wakeups-send",
                                          daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._pending.set()
        for thread in self._threads:
            thread.join(timeout)

    def notify(self) -> None:
        self._pending.set()

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self._url, autocommit=True, connect_timeout=5,
                               application_name="batchyard-wakeups")

    def _send(self) -> None:
        while not self._stopping.is_set():
            try:
                with self._connect() as connection:
                    self._sender_pid = connection.info.backend_pid
                    while True:
                        self._pending.wait()
                        if self._stopping.is_set():
                            return
                        # Cleared before the NOTIFY: work queued meanwhile sends another.
                        self._pending.clear()
                        try:
                            connection.execute(f"NOTIFY {self._channel}")
                        except psycopg.Error:
                            # Sent again on the next connection (the database restarted
                            # since the last one): the work it announces is still queued.
                            self._pending.set()
                            raise
            except psycopg.Error as exc:
                log.warning("could not send a wake-up to the other processes (%s); their "
                            "workers find the work at their next poll", exc)
                self._stopping.wait(_RECONNECT_SECONDS)

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                with self._connect() as connection:
                    connection.execute(f"LISTEN {self._channel}")
                    self.listening.set()
                    while not self._stopping.is_set():
                        for notice in connection.notifies(timeout=_LISTEN_STEP_SECONDS):
                            if notice.pid != self._sender_pid:
                                self._on_notice()
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("not listening for wake-ups (%s); workers poll meanwhile", exc)
                self._stopping.wait(_RECONNECT_SECONDS)
