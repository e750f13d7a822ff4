"""NOTIFY/LISTEN wake-ups between processes on PostgreSQL (store/wakeups.py).

Each test uses a channel of its own: a batchyard elsewhere on the same database (another
checkout's CI) must not make these pass or fail.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

import pytest

from batchyard.config import normalise_database_url
from batchyard.store.wakeups import QueueWakeups


@pytest.fixture
def url() -> str:
    base = os.environ.get("BATCHYARD_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("set BATCHYARD_TEST_POSTGRES_URL to run against PostgreSQL")
    return normalise_database_url(base)


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.changed = threading.Event()

    def __call__(self) -> None:
        self.count += 1
        self.changed.set()


@pytest.mark.postgres
def test_a_notice_wakes_the_other_process_and_not_the_sender(url: str) -> None:
    channel = "t_" + secrets.token_hex(6)
    heard_by_sender, heard_by_other = Counter(), Counter()
    sender = QueueWakeups(url, heard_by_sender, channel)
    other = QueueWakeups(url, heard_by_other, channel)
    sender.start()
    other.start()
    try:
        assert sender.listening.wait(10) and other.listening.wait(10)
        # The sender's own connection must be up before its notice can be told apart.
        deadline = time.monotonic() + 10
        while sender._sender_pid is None and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        sender.notify()
        assert heard_by_other.changed.wait(5), "the other process was not woken"
        woken_after = time.monotonic() - started
        # A burst of notify() calls before the sender thread runs is coalesced, never lost.
        for _ in range(50):
            sender.notify()
        time.sleep(1.0)
        assert 2 <= heard_by_other.count <= 51, heard_by_other.count
        assert heard_by_sender.count == 0, "a process was woken by its own notice"
        assert woken_after < 1.0, woken_after  # not a poll interval
    finally:
        sender.stop()
        other.stop()


def test_a_listener_on_an_unreachable_database_keeps_trying_and_stops_when_asked() -> None:
    heard = Counter()
    # Nothing listens on port 1: connecting fails at once, and it must neither raise out
    # of its threads nor keep stop() waiting.
    wakeups = QueueWakeups("postgresql+psycopg://postgres@127.0.0.1:1/none", heard)
    wakeups.start()
    wakeups.notify()
    time.sleep(0.3)
    assert not wakeups.listening.is_set()
    started = time.monotonic()
    wakeups.stop()
    assert time.monotonic() - started < 3
    assert all(not thread.is_alive() for thread in wakeups._threads)
    assert heard.count == 0
