"""Operating it for months: attempts' resource figures, retention indexes, alert incidents

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
down_revision = "0005"
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
    # Alert notifications go through the outbox too, and are about a job, not a run.
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.alter_column("execution_id", existing_type=sa.String(length=40),
                              nullable=True)
    op.create_table(
        "alert_incidents",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recovered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "kind", "subject"),
    )
    op.create_index("ix_alert_incidents_open", "alert_incidents", ["job_id", "recovered_at"])


def downgrade() -> None:
    op.drop_index("ix_alert_incidents_open", table_name="alert_incidents")
    op.drop_table("alert_incidents")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.alter_column("execution_id", existing_type=sa.String(length=40),
                              nullable=False)
    op.drop_index("ix_deliveries_execution", table_name="deliveries")
    op.drop_index("ix_audit_at", table_name="audit")
    op.drop_index("ix_executions_account_created", table_name="executions")
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("peak_memory_bytes")
        batch_op.drop_column("cpu_seconds")
