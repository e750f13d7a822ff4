"""The query guard on its own: a socket pair stands in for the driver's connection."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from batchyard.runtime.channel.dbguard import QueryStopped, RequestGuard


def test_a_guard_that_is_not_needed_does_nothing() -> None:
    cancels: list[float] = []
    guard = RequestGuard(5.0)
    with guard.watching(lambda: cancels.append(time.monotonic()), lambda: None):
        pass
    guard.check()
    assert guard.fired is None and cancels == []


def test_a_lost_cancel_is_repeated_and_then_the_socket_is_shut_down() -> None:
    driver, server = socket.socketpair()
    cancels: list[float] = []
    guard = RequestGuard(0.1, slack_seconds=0.1, hard_stop_seconds=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(QueryStopped, match=r"statement timeout of 0\.1 s"), \
                guard.watching(lambda: cancels.append(time.monotonic() - started),
                               lambda: driver.shutdown(socket.SHUT_RDWR)):
            # The server ignores the cancels: only the shutdown ends this read.
            assert driver.recv(1) == b""
            guard.check()
    finally:
        driver.close()
        server.close()
    assert 0.2 <= cancels[0] < 0.5
    assert 0.6 < time.monotonic() - started < 2


def test_a_stop_before_the_request_starts_keeps_it_from_starting() -> None:
    guard = RequestGuard(5.0)
    guard.stop("The query was cancelled: its attempt ended.")
    ran = []
    with pytest.raises(QueryStopped, match="its attempt ended"), \
            guard.watching(lambda: None, lambda: None):
        ran.append(True)
    assert ran == []


def test_a_stop_during_the_request_cancels_it_at_once_and_waits_for_the_cancel() -> None:
    cancelled = threading.Event()
    guard = RequestGuard(60.0)
    threading.Timer(0.1, guard.stop).start()
    started = time.monotonic()

    def slow_cancel() -> None:
        time.sleep(0.2)  # the cancel's own round trip
        cancelled.set()

    with guard.watching(slow_cancel, lambda: None):
        while guard.fired is None and time.monotonic() - started < 5:
            time.sleep(0.01)
    # The block ended while the cancel was still on its way: leaving it waited for it.
    assert cancelled.is_set()
    assert guard.fired == "The query was cancelled: its attempt ended."
    assert time.monotonic() - started < 2
