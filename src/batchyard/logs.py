"""The server's own log: human-readable by default, one JSON object per line on request.

``BATCHYARD_LOG_FORMAT=json`` writes ``{"time", "level", "logger", "message",
"request_id"?, "execution_id"?, "exception"?}`` per line. The ids come from context
variables: the API sets the request id of each request (``X-Request-Id``, echoed in the
answer), the supervisor the execution id of the attempt its thread runs (and the
attempt's request threads); so any line logged on their behalf carries them, whatever
module logs it. In JSON mode each request also gets one access line (``batchyard.http``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                       default=None)
EXECUTION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("execution_id",
                                                                         default=None)
# A client's own request id is kept when it is short and plain (it is written to logs).
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def request_id_from(header: str | None) -> str:
    if header is not None and _CLIENT_REQUEST_ID.fullmatch(header):
        return header
    return "req_" + secrets.token_hex(8)


@contextmanager
def execution_context(execution_id: str) -> Iterator[None]:
    token = EXECUTION_ID.set(execution_id)
    try:
        yield
    finally:
        EXECUTION_ID.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage()}
        for name, variable in (("request_id", REQUEST_ID), ("execution_id", EXECUTION_ID)):
            # A line logged once the request is answered names its request explicitly.
            value = getattr(record, name, None) or variable.get()
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(log_format: str) -> None:
    """The root handler on stderr, in the chosen format (replacing any earlier one)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)
