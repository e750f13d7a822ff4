"""The migrations build exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from batchyard.services.context import Platform
from batchyard.store.models import Base


def test_migrated_schema_matches_the_models(platform: Platform) -> None:
    with platform.db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
