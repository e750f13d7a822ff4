"""The private PostgreSQL cluster of the chaos tests: it starts, dies and comes back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from batchyard.store.db import Database
from support.pgcluster import PostgresCluster


def test_a_private_cluster_keeps_committed_rows_across_a_crash_and_a_restart(
        cluster: PostgresCluster) -> None:
    engine = create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("CREATE TABLE kept (n int)"))
        connection.execute(text("INSERT INTO kept VALUES (1), (2)"))
    engine.dispose()
    cluster.restart(crash=True)
    engine = create_engine(cluster.url())
    with engine.connect() as connection:
        assert connection.execute(text("SELECT sum(n) FROM kept")).scalar_one() == 3
    engine.dispose()
    cluster.restart()
    assert cluster.pid() is not None


def _backend(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_pooled_connection_the_server_closed_is_replaced_before_use(
        cluster: PostgresCluster) -> None:
    # The pool checks a connection at checkout by its socket, not by a round trip
    # (store/db.py): one whose backend ended, or whose server restarted, is never handed out.
    database = Database(cluster.url(), pool_size=1)
    try:
        first = _backend(database)
        assert _backend(database) == first  # a live idle connection is kept
        with _autocommit(cluster) as connection:
            assert connection.execute(text("SELECT pg_terminate_backend(:pid)"),
                                      {"pid": first}).scalar_one()
        # The backend's end reaches the client's socket asynchronously.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with _autocommit(cluster) as connection:
                alive = connection.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": first}).scalar_one()
            if not alive:
                break
            time.sleep(0.05)
        second = _backend(database)
        assert second != first
        cluster.restart()
        third = _backend(database)
        assert third not in (first, second)
        with database.write() as session:
            assert session.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        database.dispose()


@contextmanager
def _autocommit(cluster: PostgresCluster) -> Iterator[Connection]:
    engine = create_engine(cluster.url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()
