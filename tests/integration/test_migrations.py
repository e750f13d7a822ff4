"""The migrations build exactly the schema the models describe."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from batchyard.services.context import Platform
from batchyard.store.db import Database
from batchyard.store.models import Base


def test_migrated_schema_matches_the_models(platform: Platform) -> None:
    with platform.db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_a_sqlite_file_made_before_incremental_vacuum_is_switched_once_and_gives_space_back(
        tmp_path: Path) -> None:
    """A file made without ``auto_vacuum`` (every file before migration 0006) is switched
    by one VACUUM at the next migrate; what it held is kept, and freed pages then go back
    to the file system."""
    path = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.execute("PRAGMA auto_vacuum=NONE")
        old.execute("CREATE TABLE kept (id INTEGER PRIMARY KEY, body BLOB)")
        old.executemany("INSERT INTO kept (body) VALUES (?)",
                        [(bytes(4096),) for _ in range(2000)])
        old.commit()
        assert old.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    database = Database(f"sqlite:///{path}")
    try:
        database.migrate()
        with contextlib.closing(database.engine.raw_connection()) as raw:
            assert raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
            assert raw.execute("SELECT count(*) FROM kept").fetchone()[0] == 2000
            raw.execute("DELETE FROM kept")
            raw.commit()
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        before = path.stat().st_size
        assert database.give_back_space(pages=100_000) > 1000
        with contextlib.closing(database.engine.raw_connection()) as raw:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        assert path.stat().st_size < before - 4 * 1024 * 1024, (before, path.stat().st_size)
    finally:
        database.dispose()
