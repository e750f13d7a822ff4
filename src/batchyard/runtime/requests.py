"""Requests job code makes of the platform over its channel (database queries, e-mail).

The job holds no credentials: it sends a request record (``{"type": "db", ...}``)
and blocks on the reply, while the handler registered for that type runs in the
server with what only the server may know (database URLs, SMTP password). Each
request runs on its own thread so a slow query never stalls the attempt's log pump.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from batchyard.services.queue import ClaimedAttempt

log = logging.getLogger(__name__)

Reply = dict[str, Any]
RequestHandler = Callable[[ClaimedAttempt, Mapping[str, Any]], Reply]
# A reply may carry ``(message, level)`` under this key: a line for the execution's log
# (a query's row count and time), written there before the reply and never sent to the job.
LOG_NOTE = "_log"


class RequestDispatcher:
    """Runs one attempt's requests on threads and writes each reply as one JSON line."""

    def __init__(self, handlers: Mapping[str, RequestHandler], attempt: ClaimedAttempt,
                 send: Callable[[bytes], object],
                 note: Callable[[str, str], None] | None = None) -> None:
        self._handlers = handlers
        self._attempt = attempt
        self._send = send
        self._note = note
        self._send_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def handles(self, kind: object) -> bool:
        return isinstance(kind, str) and kind in self._handlers

    def submit(self, record: Mapping[str, Any]) -> None:
        handler = self._handlers[str(record["type"])]
        thread = threading.Thread(target=self._answer, args=(handler, record),
                                  name=f"request-{record['type']}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def wait(self, timeout: float) -> None:
        """Let requests still running finish (their replies go nowhere once the job is gone)."""
        for thread in self._threads:
            thread.join(timeout)

    def reply(self, answer: Reply) -> None:
        """Write one reply line; a job that already ended is not an error."""
        line = json.dumps(answer, default=str).encode("utf-8") + b"\n"
        with self._send_lock, contextlib.suppress(OSError):
            self._send(line)

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
        self.reply(answer)
