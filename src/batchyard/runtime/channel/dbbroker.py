"""The "db" request handler: a job's query, run in the server on its account's database.

Credentials never enter the sandbox. The job's SDK sends ``{"type": "db", "target":
"main"|"etl", "sql": ..., "multi": bool}`` over its channel; this handler, in the
server, checks that the account may query (the attempt's claim *and* the account's
plan now: the job's own context could be faked), decrypts the account's URL, runs
the SQL (runtime/channel/dbrun.py) and answers ``{"ok": true, "rows": [...]}`` (or
``"results": [[...], ...]`` for ``multi``) or ``{"ok": false, "error": ...}``, with
``"unauthorized": true`` when the plan refuses (the SDK raises MXUnauthorizedDBAccess).

Any message that leaves this module (to the job, the execution log, the server log)
is scrubbed of the URL and its password first: drivers and URL parsers may quote them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, unquote_plus

from sqlalchemy import Engine, make_url
from sqlalchemy.exc import DBAPIError

from batchyard.domain.attempts import ClaimedAttempt
from batchyard.errors import BatchyardError
from batchyard.runtime.channel.dbguard import ATTEMPT_ENDED, QueryStopped, RequestGuard
from batchyard.runtime.channel.dbrun import (
    QueryLimits,
    QueryRefused,
    create_query_engine,
    run_query,
)
from batchyard.runtime.channel.dbvalues import ReplyTooLarge
from batchyard.runtime.channel.dispatcher import LOG_NOTE, Reply
from batchyard.services import databases
from batchyard.services.context import Platform

log = logging.getLogger(__name__)

MASK = "***"
MAX_ERROR_CHARS = 2000
# Engines kept at once, and how long an unused one (with its open connections) stays.
MAX_ENGINES = 64
IDLE_SECONDS = 300.0
_PASSWORD_KEYS = {"password", "passwd", "pwd", "sslpassword"}
_BACKGROUND = re.compile(r"\s*\(Background on this error at: [^)]*\)")


def credentials_in(url: str) -> tuple[str, ...]:
    """Every form in which ``url``'s secrets could show in a message, longest first.

    The password as written (percent-encoded or not), decoded, re-encoded and as a
    repr, wherever the URL holds one: after ``user:``, or as a ``password=`` query
    parameter; and the URL itself. Parsed by hand as well as by SQLAlchemy, because
    a URL SQLAlchemy cannot parse is exactly the one whose error may quote it.
    """
    rest = url.partition("://")[2]
    userinfo = rest.split("?", 1)[0].rpartition("@")[0]
    raw = [userinfo.partition(":")[2]] if ":" in userinfo else []
    raw += [value for key, value in parse_qsl(url.partition("?")[2], keep_blank_values=False)
            if key.lower() in _PASSWORD_KEYS]
    # Any parse failure: the hand-parsed forms remain.
    with contextlib.suppress(Exception):
        raw.append(make_url(url).password or "")
    forms = {url}
    for value in filter(None, raw):
        for plain in {value, unquote(value), unquote_plus(value)}:
            forms.update({plain, quote(plain, safe=""), quote_plus(plain), repr(plain)[1:-1]})
    return tuple(sorted(filter(None, forms), key=len, reverse=True))


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


# The drivers' base error classes by module. A server on SQLite alone never imports
# psycopg or PyMySQL (~10 MiB resident): a driver not loaded cannot have raised.
_DRIVER_ERRORS = {"sqlite3": "Error", "psycopg": "Error", "pymysql": "MySQLError"}


def _is_driver_error(exc: BaseException, *modules: str) -> bool:
    for module_name in modules or tuple(_DRIVER_ERRORS):
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, _DRIVER_ERRORS[module_name])):
            return True
    return False


def describe_error(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's wrapping (not yet scrubbed)."""
    if isinstance(exc, QueryRefused | QueryStopped | ReplyTooLarge):
        return str(exc)
    if isinstance(exc, BatchyardError):
        return exc.message
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if _is_driver_error(exc, "pymysql") and len(exc.args) == 2:
        return f"{exc.args[1]} (MySQL error {exc.args[0]})"
    if _is_driver_error(exc):
        text = str(exc).strip()
        return text or type(exc).__name__
    return _BACKGROUND.sub("", f"{type(exc).__name__}: {exc}")


@dataclass
class _Pool:
    fingerprint: str
    engine: Engine
    used: float


class EnginePools:
    """One small engine per (account, target), replaced when the account's URL changes.

    Unused engines are disposed after ``idle_seconds`` (looked at on each request) and
    beyond ``max_engines``, least recently used first. An engine disposed while a
    query still holds one of its connections lets that query finish; the connection
    closes when it is returned.
    """

    def __init__(self, limits: QueryLimits, clock: Callable[[], float] = time.monotonic,
                 max_engines: int = MAX_ENGINES, idle_seconds: float = IDLE_SECONDS) -> None:
        self._limits = limits
        self._clock = clock
        self._max = max_engines
        self._idle = idle_seconds
        self._pools: dict[tuple[str, str], _Pool] = {}
        self._lock = threading.Lock()

    def engine(self, account_id: str, target: str, url: str) -> Engine:
        fingerprint = hashlib.sha256(url.encode()).hexdigest()
        now = self._clock()
        retired: list[Engine] = []
        try:
            with self._lock:
                pool = self._pools.pop((account_id, target), None)
                if pool is not None and pool.fingerprint != fingerprint:
                    retired.append(pool.engine)
                    pool = None
                if pool is None:
                    pool = _Pool(fingerprint, create_query_engine(
                        databases.driver_url(url, field=f"databases.{target}"),
                        self._limits), now)
                pool.used = now
                # Re-inserted last: the dict's order is least recently used first.
                self._pools[(account_id, target)] = pool
                for key, other in list(self._pools.items()):
                    if len(self._pools) > self._max or now - other.used > self._idle:
                        retired.append(self._pools.pop(key).engine)
        finally:
            # Outside the lock: disposing closes connections, which may wait on the network.
            for engine in retired:
                engine.dispose()
        return pool.engine

    def __len__(self) -> int:
        return len(self._pools)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.engine.dispose()


# How long an ended attempt is remembered: longer than any lookup before its query starts.
ENDED_MEMORY_SECONDS = 600.0


class DatabaseBroker:
    """Registered as the supervisor's "db" request handler (one call per query)."""

    def __init__(self, platform: Platform, limits: QueryLimits) -> None:
        self.platform = platform
        self.limits = limits
        self.pools = EnginePools(limits)
        # The guards of the requests running now, by attempt: its end stops them.
        self._running: dict[tuple[str, int], set[RequestGuard]] = {}
        # Attempts that ended (monotonic time): a query of theirs that was still being
        # looked up when they ended must not start afterwards.
        self._ended: dict[tuple[str, int], float] = {}
        self._running_lock = threading.Lock()

    def close(self) -> None:
        self.pools.close()

    def cancel_attempt(self, attempt: ClaimedAttempt, why: str = ATTEMPT_ENDED) -> int:
        """Stop the queries an attempt still runs (it ended); return how many."""
        now = time.monotonic()
        with self._running_lock:
            key = (attempt.execution_id, attempt.number)
            guards = list(self._running.get(key, ()))
            self._ended[key] = now
            for old in [k for k, at in self._ended.items() if now - at > ENDED_MEMORY_SECONDS]:
                del self._ended[old]
        for guard in guards:
            guard.stop(why)
        return len(guards)

    def __call__(self, attempt: ClaimedAttempt, record: Mapping[str, Any]) -> Reply:
        target, sql, multi = record.get("target"), record.get("sql"), record.get("multi")
        if target not in databases.TARGETS or not isinstance(sql, str) or not sql.strip() \
                or not isinstance(multi, bool):
            return {"ok": False, "error": "A query needs a target of 'main' or 'etl', "
                                          "non-empty SQL text and multi true or false."}
        # The claim's decision first: with it false nothing is even looked up.
        if not attempt.database_access:
            return _unauthorized(target)
        try:
            url = databases.database_url(self.platform, attempt.account_id, target)
        except databases.DatabaseAccessDenied:
            return _unauthorized(target)
        except BatchyardError as exc:
            return {"ok": False, "error": exc.message}
        if url is None:
            return {"ok": False, "error": f"This account has no {target} database: the "
                                          f"operator sets one (databases.{target})."}
        return self._query(attempt, target, url, sql, multi)

    def _query(self, attempt: ClaimedAttempt, target: str, url: str, sql: str,
               multi: bool) -> Reply:
        started = time.monotonic()
        guard = RequestGuard(self.limits.statement_timeout_seconds)
        running = (attempt.execution_id, attempt.number)
        with self._running_lock:
            if running in self._ended:
                return {"ok": False, "error": ATTEMPT_ENDED}
            self._running.setdefault(running, set()).add(guard)
        try:
            results = run_query(self.pools.engine(attempt.account_id, target, url), sql,
                                multi, self.limits, guard)
        except Exception as exc:  # every failure is answered, scrubbed
            error = scrub(describe_error(exc), credentials_in(url))[:MAX_ERROR_CHARS]
            if not (_is_driver_error(exc) or isinstance(
                    exc, DBAPIError | QueryRefused | QueryStopped | ReplyTooLarge)):
                log.warning("query of %s on %s failed: %s", attempt.execution_id, target, error)
            return {"ok": False, "error": error, LOG_NOTE: (
                f"query on {target} failed after {_ms(started)} ms: {error}", "warn")}
        finally:
            with self._running_lock:
                guards = self._running.get(running, set())
                guards.discard(guard)
                if not guards:
                    self._running.pop(running, None)
        rows = sum(len(result.rows) for result in results)
        summary = f"{len(results)} statements, {rows} rows" if multi else f"{rows} rows"
        note = (f"query on {target}: {summary} in {_ms(started)} ms", "info")
        if multi:
            return {"ok": True, "results": [result.rows for result in results], LOG_NOTE: note}
        return {"ok": True, "rows": results[0].rows if results else [], LOG_NOTE: note}


def _unauthorized(target: str) -> Reply:
    return {"ok": False, "unauthorized": True,
            "error": "Database access is not enabled for this account's plan",
            LOG_NOTE: (f"query on {target} refused: database access is not enabled for "
                       "this account's plan", "warn")}


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
