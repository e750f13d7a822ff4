"""The SDK job code uses inside the sandbox: logs, settings, outputs, e-mail, databases.

The bootstrap calls ``_configure`` with the attempt's context and the supervisor
channel *before* importing ``main.py``, so module-level code in the job already
sees its settings. Imported anywhere else (a developer's laptop) the SDK still
works: no settings, logs on stderr, outputs under ``$OUTPUT_DIR`` or ``./output``.
Only the standard library may be imported here; pandas is used when the job's
own environment happens to provide it.
"""

from __future__ import annotations

import _thread  # not threading: it imports functools and collections (~3 ms a start)
import os
import sys
import time

from batchyard._channel import Channel, RecordTooLarge

# Not `from typing import TYPE_CHECKING`: importing typing costs every job ~4 ms.
TYPE_CHECKING = False

if TYPE_CHECKING:
    # Annotations only: importing typing, pathlib or dataclasses at run time would
    # add ~10 ms to every job's start.
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path
    from typing import Any

__all__ = [
    "MXException",
    "MXInvalidDataException",
    "MXTooManyParametersError",
    "MXTooManyRequestsError",
    "MXUnauthorizedDBAccess",
    "db",
    "email",
    "log",
    "output_dir",
    "settings",
]

SUBJECT_LIMIT = 255
DEFAULT_EMAIL_LIMIT = 3


class MXException(Exception):
    """Base of every error the SDK raises (the vendor's name, kept for old code)."""


class MXInvalidDataException(MXException):
    """An SDK call got a value of the wrong kind."""


class MXTooManyParametersError(MXException):
    """An SDK call got more parameters than it accepts."""


class MXUnauthorizedDBAccess(MXException):
    """The account's plan does not allow database access."""


class MXTooManyRequestsError(MXException):
    """A per-execution limit (such as e-mails sent) is used up."""


class _Context:
    """What the platform tells the SDK about the running attempt."""

    __slots__ = ("attempt", "database_access", "email_limit", "execution_id", "job_name",
                 "output_dir", "variables")

    def __init__(self, variables: Mapping[str, str] | None = None,
                 output_dir: str | None = None, job_name: str = "", execution_id: str = "",
                 attempt: int = 0, database_access: bool = False,
                 email_limit: int = DEFAULT_EMAIL_LIMIT) -> None:
        self.variables: Mapping[str, str] = dict(variables or {})
        self.output_dir = output_dir
        self.job_name = job_name
        self.execution_id = execution_id
        self.attempt = attempt
        self.database_access = database_access
        self.email_limit = email_limit

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> _Context:
        raw_output = payload.get("output_dir")
        return cls(
            variables={str(k): str(v) for k, v in (payload.get("variables") or {}).items()},
            output_dir=str(raw_output) if raw_output else None,
            job_name=str(payload.get("job_name") or ""),
            execution_id=str(payload.get("execution_id") or ""),
            attempt=int(payload.get("attempt") or 0),
            database_access=bool(payload.get("database_access", False)),
            email_limit=int(payload.get("email_limit", DEFAULT_EMAIL_LIMIT)),
        )


class _State:
    """Module-level state, replaced as a whole by ``_configure``."""

    def __init__(self) -> None:
        self.context = _Context()
        self.channel: Channel | None = None
        self.emails_sent = 0
        self.lock = _thread.allocate_lock()


_state = _State()


def _configure(payload: Mapping[str, Any], channel: Channel | None) -> None:
    """Bind the SDK to one attempt; called by the bootstrap, not by job code."""
    limit = payload.get("channel_line_limit")
    if channel is not None and isinstance(limit, int) and limit > 0:
        channel.line_limit = limit
    with _state.lock:
        _state.context = _Context.from_payload(payload)
        _state.channel = channel
        _state.emails_sent = 0


def _emit(record: Mapping[str, Any], fallback: str) -> None:
    channel = _state.channel
    if channel is not None and channel.send(record):
        return
    if sys.stderr is not None:
        print(fallback, file=sys.stderr, flush=True)


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data; odd objects become strings, never an error."""
    import json  # lazily: json pulls in re and enum (~8 ms per job start)

    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError, RecursionError):
        # Non-string dict keys and cycles defeat ``default=str``.
        return repr(value)


class Log:
    """Structured log records, streamed live to the execution's log."""

    def _write(self, level: str, message: object, data: object) -> None:
        import json  # lazily: json pulls in re and enum (~8 ms per job start)

        text = message if isinstance(message, str) else str(message)
        payload = _jsonable(data)
        record = {
            "type": "log",
            "level": level,
            "message": text,
            "data": payload,
            "at": time.time(),
        }
        suffix = f" {json.dumps(payload)}" if payload not in (None, {}, []) else ""
        _emit(record, f"{level.upper()} {text}{suffix}")

    def debug(self, message: object, data: object = None) -> None:
        self._write("debug", message, data)

    def info(self, message: object, data: object = None) -> None:
        self._write("info", message, data)

    def warn(self, message: object, data: object = None) -> None:
        self._write("warn", message, data)

    def warning(self, message: object, data: object = None) -> None:
        self._write("warn", message, data)

    def error(self, message: object, data: object = None) -> None:
        self._write("error", message, data)

    def fatal(self, message: object, data: object = None) -> None:
        self._write("fatal", message, data)


class Settings:
    """The job's variables, by attribute (``settings.TOKEN``) or key."""

    def _variables(self) -> Mapping[str, str]:
        return _state.context.variables

    def __getattr__(self, key: str) -> str:
        if key.startswith("__"):
            # Let copy, pickle and friends probe dunders without a misleading message.
            raise AttributeError(key)
        try:
            return self._variables()[key]
        except KeyError:
            raise AttributeError(self._missing(key)) from None

    def __getitem__(self, key: str) -> str:
        try:
            return self._variables()[key]
        except KeyError:
            raise KeyError(self._missing(key)) from None

    def get(self, key: str, default: Any = None) -> Any:
        return self._variables().get(key, default)

    def keys(self) -> list[str]:
        return sorted(self._variables())

    def __contains__(self, key: object) -> bool:
        return key in self._variables()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._variables())

    def __repr__(self) -> str:
        # Keys only: values may be secrets and reprs end up in logs.
        return f"Settings(keys={self.keys()!r})"

    def _missing(self, key: str) -> str:
        available = ", ".join(self.keys()) or "none"
        return f"No setting named {key!r}; available settings: {available}"


def output_dir() -> Path:
    """The folder whose files become the execution's artifacts (created if needed)."""
    from pathlib import Path

    configured = _state.context.output_dir
    path = Path(configured or os.environ.get("OUTPUT_DIR") or "output")
    path = path.absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path


class Email:
    """Notification e-mails, sent by the platform on the job's behalf.

    Parameter names (``type``, ``isHtml``) are the vendor's: old code passes them
    by keyword. ``type`` picks the recipients among the job's ``notify`` settings
    ("failure"/"error"/"warning" → on_failure, "success"/"info" → on_success, any
    other → both); ``attachments`` are file names in the output folder. The call
    returns once the mail server took the message; the server counts e-mails per
    execution (retries included), and this module also counts per attempt so that
    a job past the limit is told without a round trip.
    """

    def send_email_notification(
        self,
        type: str,
        subject: str,
        body: str,
        isHtml: bool = False,
        attachments: Sequence[object] | None = None,
    ) -> bool:
        if not isinstance(subject, str) or not isinstance(body, str):
            raise MXInvalidDataException("subject and body must be strings")
        if isinstance(attachments, (str, bytes)):
            raise MXInvalidDataException("attachments must be a list of file names")
        names = [os.fspath(item) if isinstance(item, os.PathLike) else str(item)
                 for item in attachments or ()]
        limit = _state.context.email_limit
        if _state.emails_sent >= limit:
            raise MXTooManyRequestsError(
                f"At most {limit} notification e-mails may be sent per execution"
            )
        record = {
            "type": "email",
            "email_type": str(type),
            "subject": subject[:SUBJECT_LIMIT],
            "body": body,
            "is_html": bool(isHtml),
            "attachments": names,
        }
        channel = _state.channel
        if channel is None:
            # A developer's laptop: no platform to send it, so show what would be sent.
            _emit(record, f"EMAIL [{type}] {record['subject']} ({len(names)} attachments)")
            return True
        try:
            reply = channel.request(record)
        except RecordTooLarge as exc:
            raise MXInvalidDataException(f"The e-mail is too large to send: {exc}") from None
        except (OSError, ValueError) as exc:
            raise MXException(f"The platform did not answer the e-mail request: {exc}") from exc
        if not isinstance(reply, dict) or not reply.get("ok"):
            _email_refused(reply)
        with _state.lock:
            _state.emails_sent += 1
        log.info(f"E-mail notification sent: {record['subject']}",
                 {"type": str(type), "recipients": reply.get("recipients"),
                  "attachments": names})
        return True


def _email_refused(reply: Any) -> None:
    error = reply.get("error") if isinstance(reply, dict) else None
    code = reply.get("code") if isinstance(reply, dict) else None
    message = str(error or "The e-mail was not sent")
    if code == "too_many_requests":
        with _state.lock:
            _state.emails_sent = _state.context.email_limit
        raise MXTooManyRequestsError(message)
    if code == "invalid":
        raise MXInvalidDataException(message)
    raise MXException(message)


class Db:
    """Queries against the account's ``main`` and ``etl`` databases, run by the platform.

    The job never holds connection credentials: the supervisor runs the query and
    answers on the channel. One statement answers its rows (a pandas DataFrame when
    pandas is importable, else a list of dicts); ``multi=True`` runs several
    statements and answers a list with one such result per statement.
    """

    def execute_DB_query(self, sql: str, multi: bool = False) -> Any:
        return _query("main", sql, multi)

    def execute_ETL_query(self, sql: str, multi: bool = False) -> Any:
        return _query("etl", sql, multi)


def _query(target: str, sql: str, multi: bool) -> Any:
    if not _state.context.database_access:
        raise MXUnauthorizedDBAccess("Database access is not enabled for this account's plan")
    if not isinstance(sql, str) or not sql.strip():
        raise MXInvalidDataException("sql must be a non-empty string")
    channel = _state.channel
    if channel is None:
        raise MXException("Database queries need the platform; no channel is open")
    try:
        reply = channel.request({"type": "db", "target": target, "sql": sql, "multi": bool(multi)})
    except RecordTooLarge as exc:
        raise MXInvalidDataException(f"The query is too large to send: {exc}") from None
    except (OSError, ValueError) as exc:
        raise MXException(f"The platform did not answer the query: {exc}") from exc
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else None
        if isinstance(reply, dict) and reply.get("unauthorized"):
            # The server's decision, whatever this process's context said.
            raise MXUnauthorizedDBAccess(str(error or "Database access is not enabled"))
        raise MXException(str(error or "The database query failed"))
    if multi:
        return [_as_frame(rows or []) for rows in reply.get("results") or []]
    return _as_frame(reply.get("rows") or [])


def _as_frame(rows: list[Any]) -> Any:
    try:
        import importlib

        pandas = importlib.import_module("pandas")
    except ImportError:
        return rows
    return pandas.DataFrame(rows)


log = Log()
settings = Settings()
email = Email()
db = Db()
