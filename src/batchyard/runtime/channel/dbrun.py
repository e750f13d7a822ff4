"""Running one query request on an account's database: engines, timeouts, statements.

The SQL is the job's and goes to the driver's own cursor as it is (through an
SQLAlchemy pool, without SQLAlchemy's parameter handling, so a ``%`` stays a ``%``).

- One request is one transaction: committed when every statement succeeded; on any
  error the connection is dropped, so the database rolls the transaction back
  (MySQL/MariaDB commit DDL statements implicitly: those cannot be undone).
- ``multi=False`` runs exactly one statement and answers its rows; SQL holding
  several statements is refused (PostgreSQL and SQLite refuse before running any;
  MySQL/MariaDB only find out after the first, which is then rolled back: the vendor's
  MySQL connector behaves the same). ``multi=True`` runs every statement and answers a
  list with one list of rows per statement (empty for statements without rows).
- A single PostgreSQL statement is streamed, MySQL/MariaDB rows always are, so the row
  cap stops a huge result at the cap. ``multi=True`` on PostgreSQL receives each
  statement's result whole before the cap applies: large reads belong in ``multi=False``.
- Each statement is bounded by the statement timeout: PostgreSQL ``statement_timeout``,
  MariaDB ``max_statement_time`` (MySQL ``max_execution_time``, SELECT only), SQLite a
  progress handler. The job's SQL can change the server's settings, so the request as a
  whole is also bounded in the client (runtime/channel/dbguard.py): past the timeout, or when
  its attempt ends, it is cancelled and fails with a message saying so.
- A connection goes back to its pool as a new session would be: PostgreSQL ``DISCARD
  ALL`` (a job's ``SET``, ``SET ROLE``, temporary tables, advisory locks end with its
  request) then the timeout set again; MySQL/MariaDB the timeout and autocommit set
  again. One whose request failed or was cancelled is dropped instead.
- The drivers (psycopg, PyMySQL) are imported at their first use: a server whose
  tenants have no such database does not carry them (~10 MiB resident).
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import URL, Engine, NullPool, create_engine, event
from sqlalchemy.pool import PoolProxiedConnection

from batchyard.runtime.channel.dbguard import RequestGuard
from batchyard.runtime.channel.dbvalues import Row, RowBudget, unique_columns

log = logging.getLogger(__name__)

# Small pools: a job asks one query at a time; overflow connections close on return.
POOL_SIZE = 2
POOL_MAX_OVERFLOW = 8
POOL_RECYCLE_SECONDS = 300
FETCH_BATCH = 500
SEVERAL_STATEMENTS = ("The SQL holds several statements; pass multi=True to run them "
                      "(the rows of each statement then come back in a list).")


@dataclass(frozen=True)
class QueryLimits:
    statement_timeout_seconds: float
    connect_timeout_seconds: float
    max_rows: int
    max_reply_bytes: int


@dataclass(frozen=True)
class StatementResult:
    rows: list[Row]
    # False for statements that return no rows at all (INSERT, DDL), as opposed to none.
    has_rows: bool


class QueryRefused(Exception):
    """A request the broker itself refuses; its message is safe to show the job."""


def create_query_engine(url: URL, limits: QueryLimits) -> Engine:
    """An engine for one account database, with the limits set on every new connection."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        # A file open is cheap, and no handle or lock outlives the request.
        engine = create_engine(url, poolclass=NullPool, connect_args={
            "check_same_thread": False, "timeout": limits.connect_timeout_seconds})
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    connect_timeout = max(1, math.ceil(limits.connect_timeout_seconds))
    on_connect: Callable[[Any, Any], None]
    if backend == "postgresql":
        connect_args: dict[str, Any] = {"connect_timeout": connect_timeout}
        on_connect = partial(_postgres_on_connect, limits.statement_timeout_seconds)
    else:
        # Each read's own bound: a silent server cannot hold a read for longer.
        backstop = math.ceil(limits.statement_timeout_seconds) + connect_timeout
        connect_args = {"connect_timeout": connect_timeout, "read_timeout": backstop,
                        "write_timeout": backstop,
                        # FOUND_ROWS is SQLAlchemy's own default for this dialect.
                        "client_flag": _mysql_client_flags()}
        on_connect = partial(_mysql_on_connect, limits.statement_timeout_seconds)
    engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=POOL_MAX_OVERFLOW,
                           pool_timeout=connect_timeout * 3, pool_recycle=POOL_RECYCLE_SECONDS,
                           pool_pre_ping=True, connect_args=connect_args)
    event.listen(engine, "connect", on_connect)
    return engine


def _postgres_on_connect(timeout: float, dbapi_connection: Any, _record: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute(_postgres_timeout(timeout))
    # Committed: a SET inside a transaction that is rolled back is undone with it.
    dbapi_connection.commit()


def _postgres_timeout(timeout: float) -> str:
    return f"SET statement_timeout = {max(1, round(timeout * 1000))}"


def _mysql_on_connect(timeout: float, dbapi_connection: Any, _record: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        if "mariadb" in dbapi_connection.get_server_info().lower():
            cursor.execute(f"SET SESSION max_statement_time = {timeout:.3f}")
        else:
            cursor.execute(f"SET SESSION max_execution_time = {max(1, round(timeout * 1000))}")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are begun explicitly, so DDL is inside them too (see _run_sqlite).
    dbapi_connection.isolation_level = None
    dbapi_connection.set_authorizer(_sqlite_authorizer)


def _sqlite_authorizer(action: int, *_details: object) -> int:
    """No ATTACH (nor VACUUM INTO, which attaches): the file is on the server's own disk,
    and a job must not open any other file there, such as the platform's own store."""
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def run_query(engine: Engine, sql: str, multi: bool, limits: QueryLimits,
              guard: RequestGuard | None = None) -> list[StatementResult]:
    """Run the request's SQL in one transaction; the results of its statements in order.

    ``guard`` (one per request) lets another thread stop it; without one it is made
    here, bounding the request by the statement timeout all the same.
    """
    backend = engine.dialect.name
    budget = RowBudget(limits.max_rows, limits.max_reply_bytes)
    guard = guard or RequestGuard(limits.statement_timeout_seconds)
    connection = engine.raw_connection()
    reusable = False
    try:
        with guard.watching(*_stoppers(engine, connection, limits)):
            try:
                if backend == "sqlite":
                    results = _run_sqlite(connection, sql, multi, budget,
                                          limits.statement_timeout_seconds)
                elif backend == "postgresql":
                    results = _run_postgres(connection, sql, multi, budget)
                else:
                    results = _run_mysql(connection, sql, multi, budget)
                guard.check()
                connection.commit()
            except Exception:
                guard.check()  # the driver's error is the guard's doing: say so instead
                raise
            reusable = _reset_session(backend, connection, limits)
        return results
    finally:
        if not reusable or guard.fired is not None:
            # Dropped, not rolled back: closing rolls back on every backend, and is the
            # one step that cannot hang on a half-read result or a broken connection.
            connection.invalidate()
        connection.close()


def _stoppers(engine: Engine, connection: PoolProxiedConnection,
              limits: QueryLimits) -> tuple[Callable[[], None], Callable[[], None]]:
    """How the request's guard cancels the running statement, and ends the driver's wait."""
    raw: Any = connection.dbapi_connection
    backend = engine.dialect.name
    if backend == "sqlite":
        return raw.interrupt, _nothing
    if backend == "postgresql":
        # libpq's cancel request, on a connection of its own; the timeout bounds its connect.
        return (partial(raw.cancel_safe, timeout=limits.connect_timeout_seconds),
                partial(_shut_down, raw.fileno))
    return (partial(_kill_mysql, engine, raw.thread_id(), limits.connect_timeout_seconds),
            # PyMySQL's own attribute: its socket (None once closed).
            partial(_shut_down, lambda: raw._sock.fileno()))


def _mysql_client_flags() -> int:
    from pymysql.constants import CLIENT

    return int(CLIENT.MULTI_STATEMENTS | CLIENT.FOUND_ROWS)


def _nothing() -> None:
    return None


def _kill_mysql(engine: Engine, thread_id: int, timeout: float) -> None:
    """End the request's connection from another: the whole connection, not its query, as
    a killed ``SLEEP()`` returns 1 and the next statement of a multi request would run."""
    args, params = engine.dialect.create_connect_args(engine.url)
    wait = max(1, math.ceil(timeout))
    import pymysql  # the drivers load with their first use (see the module docstring)

    killer = pymysql.connect(*args, **{**params, "connect_timeout": wait,
                                       "read_timeout": wait, "write_timeout": wait})
    try:
        with killer.cursor() as cursor:
            cursor.execute(f"KILL CONNECTION {int(thread_id)}")
    except pymysql.MySQLError as exc:
        if exc.args and exc.args[0] == 1094:  # unknown thread: it has ended meanwhile
            return
        raise
    finally:
        killer.close()


def _shut_down(fileno: Callable[[], int]) -> None:
    """Shut the driver's socket down (not closed: the driver still owns the descriptor),
    so a read it is blocked in ends at once."""
    with socket.socket(fileno=os.dup(fileno())) as duplicate:
        duplicate.shutdown(socket.SHUT_RDWR)


def _reset_session(backend: str, connection: PoolProxiedConnection,
                   limits: QueryLimits) -> bool:
    """Undo what the job's SQL set in the session before the connection is reused; False
    (the connection is then dropped) when that fails."""
    raw: Any = connection.dbapi_connection
    try:
        if backend == "postgresql":
            # Outside a transaction: DISCARD ALL may not run inside one.
            raw.autocommit = True
            try:
                raw.execute("DISCARD ALL")
                raw.execute(_postgres_timeout(limits.statement_timeout_seconds))
            finally:
                raw.autocommit = False
        elif backend != "sqlite":  # SQLite: no pool, every request a new connection
            _mysql_on_connect(limits.statement_timeout_seconds, raw, None)
            raw.autocommit(False)
    except Exception as exc:
        log.warning("resetting a %s session failed, connection dropped: %s", backend,
                    type(exc).__name__)
        return False
    return True


def _read(cursor: Any, budget: RowBudget) -> StatementResult:
    if cursor.description is None:
        return StatementResult([], has_rows=False)
    columns = unique_columns(str(column[0]) for column in cursor.description)
    rows: list[Row] = []
    while batch := cursor.fetchmany(FETCH_BATCH):
        rows.extend(budget.row(columns, values) for values in batch)
    return StatementResult(rows, has_rows=True)


def _run_postgres(connection: PoolProxiedConnection, sql: str, multi: bool,
                  budget: RowBudget) -> list[StatementResult]:
    cursor: Any = connection.cursor()
    try:
        if not multi:
            return [_stream_postgres(cursor, sql, budget)]
        # Without parameters psycopg sends the simple protocol: several statements run.
        cursor.execute(sql)
        results = [_read(cursor, budget)]
        while cursor.nextset():
            results.append(_read(cursor, budget))
        return results
    finally:
        cursor.close()


def _stream_postgres(cursor: Any, sql: str, budget: RowBudget) -> StatementResult:
    """One statement, its rows fetched in chunks (single-row mode before libpq 17)."""
    import psycopg

    size = FETCH_BATCH if psycopg.capabilities.has_stream_chunked() else 1
    rows: list[Row] = []
    columns: list[str] | None = None
    try:
        for values in cursor.stream(sql, size=size):
            if columns is None:
                columns = unique_columns(column.name for column in cursor.description)
            rows.append(budget.row(columns, values))
    except psycopg.errors.SyntaxError as exc:
        if "multiple commands" in str(exc):
            raise QueryRefused(SEVERAL_STATEMENTS) from None
        raise
    except psycopg.ProgrammingError as exc:
        # psycopg's own complaint (no SQLSTATE) about a statement that ran and returned
        # no rows (INSERT, DDL); the transaction is intact. The server's errors carry one.
        if exc.sqlstate is None and not rows and cursor.connection.info.transaction_status \
                == psycopg.pq.TransactionStatus.INTRANS:
            return StatementResult([], has_rows=False)
        raise
    return StatementResult(rows, has_rows=True)


def _run_mysql(connection: PoolProxiedConnection, sql: str, multi: bool,
               budget: RowBudget) -> list[StatementResult]:
    # Unbuffered: rows are read from the socket as the budget takes them. On an error
    # the cursor is left unclosed on purpose: closing would read the rest of the result,
    # and the caller drops the whole connection instead.
    from pymysql.cursors import SSCursor

    cursor: Any = connection.cursor(SSCursor)
    try:
        cursor.execute(trim_mysql(sql))
        results = [_read(cursor, budget)]
        while cursor.nextset():
            if not multi:
                raise QueryRefused(SEVERAL_STATEMENTS)
            results.append(_read(cursor, budget))
    except BaseException:
        # Marked as read so that nothing (not even the garbage collector) reads the rest
        # from a connection that is about to be closed. PyMySQL's own attribute.
        result = getattr(cursor, "_result", None)
        if result is not None:
            result.unbuffered_active = False
        raise
    cursor.close()
    return results


# Blanks, ";", comments ("-- " and "#" to the line's end, /* */ but not MySQL's
# executable /*! */), quoted text (backslash escapes), a run of plain characters, or
# any other single character.
_MYSQL_TOKENS = re.compile(
    r"""\s+|;|(?:--(?=\s|$)|\#)[^\n]*|/\*(?!!).*?\*/"""
    r"""|'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*"|`[^`]*`|[^\s;'"`#/-]+|.""", re.DOTALL)


def trim_mysql(sql: str) -> str:
    """``sql`` without the comments, blanks and semicolons after its last statement.

    MySQL/MariaDB count a trailing ``-- comment`` after the last ``;`` as one more
    (empty) statement, which would turn ``select 1; -- done`` into two. Quoted text is
    skipped whole, so a ``--`` inside a string is never taken for a comment.
    """
    end = 0
    for token in _MYSQL_TOKENS.finditer(sql):
        text = token.group()
        if not (text.isspace() or text == ";" or text.startswith(("--", "#"))
                or (text.startswith("/*") and len(text) > 1)):
            end = token.end()
    return sql[:end]


def _run_sqlite(connection: PoolProxiedConnection, sql: str, multi: bool, budget: RowBudget,
                timeout: float) -> list[StatementResult]:
    statements = split_sqlite(sql)
    if not multi and len(statements) > 1:
        raise QueryRefused(SEVERAL_STATEMENTS)
    raw: Any = connection.dbapi_connection
    deadline = time.monotonic() + timeout
    raw.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
    cursor: Any = connection.cursor()
    try:
        cursor.execute("BEGIN")
        return [_read(_execute_sqlite(cursor, statement, deadline, timeout), budget)
                for statement in statements]
    finally:
        cursor.close()
        raw.set_progress_handler(None, 0)


def _execute_sqlite(cursor: Any, statement: str, deadline: float, timeout: float) -> Any:
    try:
        return cursor.execute(statement)
    except sqlite3.OperationalError as exc:
        if str(exc) == "interrupted" and time.monotonic() > deadline:
            raise QueryRefused(
                f"The statement ran longer than the statement timeout of {timeout:g} s.") \
                from None
        raise


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


def split_sqlite(sql: str) -> list[str]:
    """The statements of ``sql``, split where SQLite itself sees one end (not at every ``;``).

    Pieces holding nothing but comments and semicolons are left out, so a trailing
    comment is not a second statement.
    """
    statements, start = [], 0
    for position, char in enumerate(sql):
        if char == ";" and sqlite3.complete_statement(sql[start:position + 1]):
            statements.append(sql[start:position + 1])
            start = position + 1
    statements.append(sql[start:])
    return [piece for piece in statements if _COMMENTS.sub("", piece).strip(" \t\r\n;")]
