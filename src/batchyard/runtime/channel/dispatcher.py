"""Requests job code makes of the platform over its channel (database queries, e-mail).

The job holds no credentials: it sends a request record (``{"type": "db", ...}``)
and blocks on the reply, while the handler registered for that type runs in the
server with what only the server may know (database URLs, SMTP password).

One thread per attempt answers its requests, one at a time and in the order they came,
started with the attempt's first request. A reply carries no request id, so the SDK
sends a request only once the previous one is answered; a second thread would serve
nothing but job code writing to the channel behind the SDK's back. Such code is bounded
here: at most ``MAX_WAITING`` requests wait behind the running one, and a request beyond
that is refused ("too many requests in flight"), which costs a counter, not a thread, a
database session or an attachment read. Refusals are written by the same thread, in
order with the replies.

The pump thread only queues: it never runs a handler or writes to the channel, so a
slow query, or a job that never reads its replies, cannot stall the attempt's logs.
When the attempt is over, requests not yet started are dropped (nobody reads their
replies) and the one running gets a bounded time to end.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from batchyard.domain.attempts import ClaimedAttempt
from batchyard.logs import EXECUTION_ID

log = logging.getLogger(__name__)

Reply = dict[str, Any]
RequestHandler = Callable[[ClaimedAttempt, Mapping[str, Any]], Reply]
# A reply may carry ``(message, level)`` under this key: a line for the execution's log
# (a query's row count and time), written there before the reply and never sent to the job.
LOG_NOTE = "_log"
# Requests queued behind the running one; the SDK itself never has more than one out.
MAX_WAITING = 16
# Queue entries (requests and runs of refusals) beyond which further refusals are dropped:
# a job alternating kinds of refused lines without reading a reply must not grow the queue.
MAX_ENTRIES = 4 * MAX_WAITING
# Refusal lines written with one call, so a million refusals are not one huge buffer.
_REFUSALS_PER_WRITE = 1024
TOO_MANY = ("The platform refused the request: too many requests in flight "
            f"(at most {MAX_WAITING + 1}; the SDK sends one at a time).")


@dataclass
class _Request:
    handler: RequestHandler
    record: Mapping[str, Any]


@dataclass
class _Refusals:
    """``count`` requests in a row answered ``reply`` without running anything."""

    reply: Reply
    count: int = 1


class RequestDispatcher:
    """Answers one attempt's requests on one thread and writes each reply as one JSON line."""

    def __init__(self, handlers: Mapping[str, RequestHandler], attempt: ClaimedAttempt,
                 send: Callable[[bytes], object],
                 note: Callable[[str, str], None] | None = None) -> None:
        self._handlers = handlers
        self._attempt = attempt
        self._send = send
        self._note = note
        self._send_lock = threading.Lock()
        self._ready = threading.Condition()
        self._entries: deque[_Request | _Refusals] = deque()
        self._waiting = 0
        self._dropped = 0
        self._closed = False
        self._worker: threading.Thread | None = None

    def handles(self, kind: object) -> bool:
        return isinstance(kind, str) and kind in self._handlers

    def submit(self, record: Mapping[str, Any]) -> None:
        """Queue a request (or refuse it at once when too many wait); never blocks."""
        handler = self._handlers[str(record["type"])]
        with self._ready:
            if self._closed:
                return
            if self._waiting >= MAX_WAITING:
                self._refuse_locked({"ok": False, "code": "too_many_requests",
                                     "error": TOO_MANY})
            else:
                self._entries.append(_Request(handler, record))
                self._waiting += 1
            self._ready.notify()
        self._start_worker()

    def refuse(self, answer: Reply) -> None:
        """Answer one request that will not run (in order with the others); never blocks."""
        with self._ready:
            if self._closed:
                return
            self._refuse_locked(answer)
            self._ready.notify()
        self._start_worker()

    def close(self, timeout: float) -> None:
        """The attempt is over: drop what has not started, give the running request
        ``timeout`` seconds in all (its reply goes nowhere now)."""
        with self._ready:
            self._closed = True
            self._entries.clear()
            self._waiting = 0
            self._ready.notify_all()
            dropped = self._dropped
        if dropped:
            log.warning("%d refusals to execution %s were not written: its queue was full",
                        dropped, self._attempt.execution_id)
        # A handler that can stop its work for an attempt (the database broker cancels the
        # query still running) is told first, so the join below is short.
        for handler in {id(h): h for h in self._handlers.values()}.values():
            cancel = getattr(handler, "cancel_attempt", None)
            if callable(cancel):
                try:
                    cancel(self._attempt)
                except Exception:  # a failed cancel leaves the bounded wait below
                    log.exception("cancelling the requests of %s failed",
                                  self._attempt.execution_id)
        if self._worker is not None:
            self._worker.join(timeout)

    def _refuse_locked(self, answer: Reply) -> None:
        last = self._entries[-1] if self._entries else None
        if isinstance(last, _Refusals) and last.reply == answer:
            last.count += 1
        elif len(self._entries) < MAX_ENTRIES:
            self._entries.append(_Refusals(answer))
        else:
            self._dropped += 1

    def _start_worker(self) -> None:
        with self._ready:
            if self._worker is not None:
                return
            # The server's log lines about these requests name the execution (logs.py).
            context = contextvars.copy_context()
            context.run(EXECUTION_ID.set, self._attempt.execution_id)
            worker = threading.Thread(target=context.run, args=(self._work,), daemon=True,
                                      name=f"requests-{self._attempt.execution_id}")
            try:
                worker.start()
            except Exception as exc:  # no thread to be had: answer here rather than never
                failure = exc
            else:
                self._worker = worker
                return
        log.error("no thread for the requests of %s: %s", self._attempt.execution_id, failure)
        self._fail_queued(f"The platform could not take the request: {failure}")

    def _fail_queued(self, error: str) -> None:
        with self._ready:
            entries = list(self._entries)
            self._entries.clear()
            self._waiting = 0
        for entry in entries:
            if isinstance(entry, _Refusals):
                self._write_refusals(entry)
            else:
                self._write(_line({"ok": False, "error": error}))

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._entries and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                entry = self._entries.popleft()
                if isinstance(entry, _Request):
                    self._waiting -= 1
            try:
                if isinstance(entry, _Request):
                    self._answer(entry.handler, entry.record)
                else:
                    self._write_refusals(entry)
            except Exception:  # this thread answers every later request: it must live on
                log.exception("request of %s could not be answered",
                              self._attempt.execution_id)

    def _answer(self, handler: RequestHandler, record: Mapping[str, Any]) -> None:
        try:
            answer = handler(self._attempt, record)
        except Exception as exc:  # a handler bug must not leave the job waiting for ever
            log.exception("request %s of %s failed", record.get("type"),
                          self._attempt.execution_id)
            answer = {"ok": False, "error": f"The platform could not handle the request: {exc}"}
        note = answer.pop(LOG_NOTE, None)
        if note is not None and self._note is not None:
            self._note(str(note[0]), str(note[1]))
        self._write(_line(answer))

    def _write_refusals(self, refusals: _Refusals) -> None:
        line = _line(refusals.reply)
        left = refusals.count
        while left and not self._closed:
            batch = min(left, _REFUSALS_PER_WRITE)
            self._write(line * batch)
            left -= batch

    def _write(self, data: bytes) -> None:
        """Write reply lines; once the job has gone, drop all that is queued."""
        try:
            with self._send_lock:
                self._send(data)
        except OSError:
            with self._ready:
                self._closed = True
                self._entries.clear()
                self._waiting = 0


def _line(answer: Reply) -> bytes:
    return json.dumps(answer, default=str).encode("utf-8") + b"\n"
