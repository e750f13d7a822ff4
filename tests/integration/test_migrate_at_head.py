"""A store already at the newest migration is not handed to alembic (an idle server keeps
what it imports for good); the newest migration read from the files is alembic's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from batchyard.store.db import MIGRATIONS, Database, head_revision


def test_the_head_read_from_the_files_is_alembics() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert head_revision() == ScriptDirectory.from_config(config).get_current_head()


def test_a_new_store_is_migrated_and_a_store_at_head_skips_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    probe = ("import sys; from batchyard.store.db import Database; db = Database(sys.argv[1]);"
             " before = db.revision(); db.migrate();"
             " print(before, db.revision(), 'alembic' in sys.modules); db.dispose()")

    def migrate() -> list[str]:
        done = subprocess.run([sys.executable, "-c", probe, url], capture_output=True,
                              text=True, check=True, timeout=60)
        return done.stdout.split()

    head = head_revision()
    assert migrate() == ["None", head, "True"]  # new: alembic made the schema
    assert migrate() == [head, head, "False"]  # at head: alembic never imported
    db = Database(url)
    try:
        assert db.revision() == head
    finally:
        db.dispose()
