"""The request dispatcher over a real socket pair: one thread, replies in order, a bounded
queue, refusals that cost nothing, and an end that waits once."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from batchyard.domain.attempts import ClaimedAttempt
from batchyard.runtime.channel.dispatcher import MAX_WAITING, TOO_MANY, Reply, RequestDispatcher

ATTEMPT = ClaimedAttempt(
    execution_id="exe_unit", account_id="acc_unit", job_id="job_unit", job_name="unit",
    number=1, worker="test/0", revision=1, code=b"", main_parameters=0, requirements=None,
    variables={}, secret_values=(), deadline_seconds=10.0, timeout_seconds=10.0, params={},
    source="api", database_access=False, log_seq=0, log_bytes=0, log_truncated=False)


class Gate:
    """A handler that answers each request with its number once the gate opens."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []

    def __call__(self, attempt: ClaimedAttempt, record: Mapping[str, Any]) -> Reply:
        self.entered.set()
        self.open.wait(10)
        self.calls.append(int(record["n"]))
        if record.get("fail"):
            raise ValueError("handler bug")
        return {"ok": True, "n": record["n"]}


@pytest.fixture
def channel() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours, theirs


def read_replies(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    sock.settimeout(10)
    pending, replies = b"", []
    while len(replies) < count:
        pending += sock.recv(65536)
        *lines, pending = pending.split(b"\n")
        replies += [json.loads(line) for line in lines]
    assert len(replies) == count and not pending
    return replies


def test_requests_are_answered_in_order_by_one_thread_and_the_overflow_is_refused(
        channel: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = channel
    gate = Gate()
    dispatcher = RequestDispatcher({"db": gate}, ATTEMPT, ours.sendall)
    before = threading.active_count()
    total = MAX_WAITING + 1 + 500

    dispatcher.submit({"type": "db", "n": 0})
    assert gate.entered.wait(5)
    for n in range(1, total):
        dispatcher.submit({"type": "db", "n": n})
    assert threading.active_count() == before + 1
    gate.open.set()
    replies = read_replies(theirs, total)

    # The running request and MAX_WAITING more are answered; the rest were refused at once.
    assert replies[:MAX_WAITING + 1] == [{"ok": True, "n": n} for n in range(MAX_WAITING + 1)]
    assert replies[MAX_WAITING + 1:] == [
        {"ok": False, "code": "too_many_requests", "error": TOO_MANY}] * 500
    assert gate.calls == list(range(MAX_WAITING + 1))
    dispatcher.close(timeout=5)
    assert threading.active_count() == before


def test_a_refusal_waits_its_turn_behind_the_requests_before_it(
        channel: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = channel
    gate = Gate()
    gate.open.set()
    dispatcher = RequestDispatcher({"db": gate}, ATTEMPT, ours.sendall)

    dispatcher.submit({"type": "db", "n": 1})
    dispatcher.refuse({"ok": False, "error": "too large"})
    dispatcher.submit({"type": "db", "n": 2, "fail": True})
    dispatcher.submit({"type": "db", "n": 3})

    assert read_replies(theirs, 4) == [
        {"ok": True, "n": 1}, {"ok": False, "error": "too large"},
        {"ok": False, "error": "The platform could not handle the request: handler bug"},
        {"ok": True, "n": 3}]
    dispatcher.close(timeout=5)


def test_closing_drops_what_has_not_started_and_waits_once_for_the_running_request(
        channel: tuple[socket.socket, socket.socket]) -> None:
    ours, _theirs = channel
    gate = Gate()
    dispatcher = RequestDispatcher({"db": gate}, ATTEMPT, ours.sendall)
    for n in range(5):
        dispatcher.submit({"type": "db", "n": n})
    assert gate.entered.wait(5)
    started = time.monotonic()

    dispatcher.close(timeout=0.3)

    assert 0.25 < time.monotonic() - started < 1.5
    gate.open.set()
    time.sleep(0.2)
    assert gate.calls == [0]
    dispatcher.submit({"type": "db", "n": 9})
    time.sleep(0.1)
    assert gate.calls == [0]


def test_a_job_that_is_gone_stops_the_queue(
        channel: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = channel
    gate = Gate()
    dispatcher = RequestDispatcher({"db": gate}, ATTEMPT, ours.sendall)
    before = threading.active_count()
    for n in range(3):
        dispatcher.submit({"type": "db", "n": n})
    assert gate.entered.wait(5)
    theirs.close()

    gate.open.set()
    # Its first reply cannot be written: the thread drops the rest and ends by itself.
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.005)

    assert threading.active_count() == before
    assert gate.calls == [0]
