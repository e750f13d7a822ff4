"""Engine, transactions and migrations.

SQLite runs every writing transaction as ``BEGIN IMMEDIATE``: the write lock is
taken up front, so two transactions never both read a counter and then race to
write it (the deadlock-free way to serialise admission on SQLite). Reading
transactions stay ``DEFERRED`` so that they do not queue behind writers.
"""

from __future__ import annotations

import re
import select
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session

MIGRATIONS = Path(__file__).parent / "migrations"
_REVISION = re.compile(r"""^(down_)?revision\s*(?::[^=]*)?=\s*['"]?([^'"\s]+)['"]?""", re.M)


def head_revision() -> str | None:
    """The newest migration's id, read from the migration files as alembic reads them
    (the one no other names as its ``down_revision``); None if there is not exactly one."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for down, value in _REVISION.findall(path.read_text()):
            (parents if down else revisions).add(value)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, busy_timeout: float = 30.0) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout}
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = 20
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = 20
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine, int(busy_timeout * 1000))
        else:
            _check_at_checkout(self.engine)
        self._read_engine = self.engine.execution_options(sqlite_begin="DEFERRED")
        self._write_lock: AbstractContextManager[object] = (
            threading.Lock() if self.is_sqlite else nullcontext())

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One use case = one transaction: committed on success, rolled back on error.

        On SQLite, writers of this process queue on a lock first: SQLite's own busy
        handler waits by sleeping in growing steps (up to 100 ms), which under load
        costs far more than the transactions themselves.
        """
        with self._write_lock, Session(self.engine, expire_on_commit=False) as session, \
                session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self._read_engine, expire_on_commit=False) as session, session.begin():
            yield session

    def clock_offset(self, local_now: Callable[[], datetime]) -> float | None:
        """Seconds the database's clock is ahead of ``local_now`` (None on SQLite: one host,
        one clock). The local reading is the middle of the round trip."""
        if self.is_sqlite:
            return None
        with self.engine.connect() as connection:
            before = local_now()
            database_now: datetime = connection.exec_driver_sql(
                "SELECT clock_timestamp()").scalar_one()
            after = local_now()
        return (database_now - (before + (after - before) / 2)).total_seconds()

    def migrate(self) -> None:
        """Bring the schema to the newest migration. A store already there is not given
        to alembic at all: importing it (and mako) costs an idle server ~11 MiB for good."""
        head = head_revision()
        if head is None or self.revision() != head:  # None: not one head read, ask alembic
            from alembic import command
            from alembic.config import Config

            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        if self.is_sqlite:
            self._use_incremental_vacuum()

    def revision(self) -> str | None:
        """The store's migration (alembic's version table), None before the first."""
        with self.engine.connect() as connection:
            try:
                rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
            except Exception:  # no table yet: a new store
                return None
        return str(rows[0][0]) if len(rows) == 1 else None

    def _use_incremental_vacuum(self) -> None:
        """Retention: freed pages go back to the file system (SPEC §3, issue 13).

        A new file gets ``auto_vacuum=INCREMENTAL`` at its first connection; a file made
        before that needs one ``VACUUM`` to switch, which cannot run in a transaction
        (so not in the migration itself): done here once, the first start after 0006.
        """
        # The raw connection: SQLAlchemy's "begin" hook would open a transaction first.
        raw = self.engine.raw_connection()
        try:
            if raw.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
                raw.execute("VACUUM")
        finally:
            raw.close()

    def give_back_space(self, pages: int = 2000) -> int:
        """Return up to ``pages`` free pages to the file system; how many were free before.

        SQLite only (PostgreSQL's autovacuum reuses the space of deleted rows). A small
        step holds the write lock briefly, like retention's own batches.
        """
        if not self.is_sqlite:
            return 0
        with self._write_lock:
            raw = self.engine.raw_connection()
            try:
                free = int(raw.execute("PRAGMA freelist_count").fetchone()[0])
                if free:
                    # executescript steps the pragma to its end; execute() frees one page.
                    raw.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
                    # The file shrinks when the WAL is written back: try now, blocking no one.
                    raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                return free
            finally:
                raw.close()

    def dispose(self) -> None:
        self.engine.dispose()


def _check_at_checkout(engine: Engine) -> None:
    """A pooled connection the server closed (a restart, an idle timeout, a killed backend)
    is replaced before use, as SQLAlchemy's pre-ping does, without its round trip on every
    checkout (~2.7 per execution measured, each a transaction for PostgreSQL and a wait
    for us).

    An idle connection has nothing to read: the server's goodbye (an error message, then
    end of file) makes its socket readable. Only then is it pinged; one that fails is
    discarded and the pool connects anew. A peer gone without closing (a cut cable) is
    found by neither check but by the statement's error, as with pre-ping (which would
    wait on it as long).
    """
    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection.closed or dbapi_connection.broken:
            raise DisconnectionError("the connection was closed")
        # poll, not select: a busy worker's descriptors pass select's limit of 1024.
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN)
        if not poller.poll(0):
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"the server closed the connection ({exc})") from exc


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # Takes effect on a new, empty file only (an existing one: see _use_incremental_vacuum).
        cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")
