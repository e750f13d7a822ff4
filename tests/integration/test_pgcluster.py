"""The private PostgreSQL cluster of the chaos tests: it starts, dies and comes back."""

from __future__ import annotations

from sqlalchemy import create_engine, text

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
