"""Operating it for months: attempts' resource figures, indexes for retention

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-03

SQLite's ``auto_vacuum=INCREMENTAL`` needs a ``VACUUM``, which cannot run inside the
migration's transaction: ``Database.migrate`` switches it right after the upgrade, once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cpu_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("peak_memory_bytes", sa.BigInteger(), nullable=True))
    # Retention deletes the oldest ended executions of an account, and audit entries by age.
    op.create_index("ix_executions_account_created", "executions",
                    ["account_id", "created_at"])
    op.create_index("ix_audit_at", "audit", ["at"])
    # Deleting an execution looks up its deliveries (the foreign key's check included).
    op.create_index("ix_deliveries_execution", "deliveries", ["execution_id"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_execution", table_name="deliveries")
    op.drop_index("ix_audit_at", table_name="audit")
    op.drop_index("ix_executions_account_created", table_name="executions")
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("peak_memory_bytes")
        batch_op.drop_column("cpu_seconds")
