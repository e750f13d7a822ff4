"""Alembic environment: runs on the connection the server hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from batchyard.store.models import Base

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    # Only used when a developer runs `alembic revision --autogenerate` by hand.
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
