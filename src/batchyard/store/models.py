"""Tables. Executions double as the work queue; blobs live in the database so
that workers on other machines need nothing but the database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime()}


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    batch_jobs_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    super_admin_only: Mapped[bool] = mapped_column(Boolean, default=False)
    budget_mode: Mapped[str] = mapped_column(String(16), default="recorded")
    plan: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    db_main: Mapped[str | None] = mapped_column(Text, nullable=True)
    db_etl: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime]


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime]


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    prefix: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # Names are unique among live jobs; deleted ones keep theirs for history.
        Index("uq_jobs_account_name_live", "account_id", "name", unique=True,
              sqlite_where=text("deleted_at IS NULL"),
              postgresql_where=text("deleted_at IS NULL")),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="draft")
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    schedule: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    code_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The published schedule's next instant: the scheduler's whole work list, by index.
    next_fire_at: Mapped[datetime | None] = mapped_column(nullable=True, index=True)
    created_at: Mapped[datetime]
    modified_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Variable(Base):
    __tablename__ = "variables"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    # Plain text for ordinary variables; a Fernet token for secret ones.
    value: Mapped[str] = mapped_column(Text)
    secret: Mapped[bool] = mapped_column(Boolean, default=False)
    position: Mapped[int] = mapped_column(Integer, default=0)


class CodeVersion(Base):
    __tablename__ = "code_versions"
    __table_args__ = (UniqueConstraint("job_id", "version"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    main_parameters: Mapped[int] = mapped_column(Integer, default=1)
    requirements: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[datetime]
    content: Mapped[bytes] = deferred(mapped_column(LargeBinary))


class Revision(Base):
    __tablename__ = "revisions"
    __table_args__ = (UniqueConstraint("job_id", "number"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    number: Mapped[int] = mapped_column(Integer)
    code_version: Mapped[int] = mapped_column(Integer)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    # [{key, value, secret}]: secret values stay encrypted as stored in `variables`.
    variables: Mapped[list[Any]] = mapped_column(JSON)
    schedule: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[datetime]


class Execution(Base):
    __tablename__ = "executions"
    __table_args__ = (
        # The queue: due heads per account, and running counts per account.
        Index("ix_executions_queue", "status", "account_id", "id"),
        Index("ix_executions_account_job", "account_id", "job_id", "id"),
        Index("ix_executions_account_day", "account_id", "account_day"),
        # Admission counts a job's queued/running executions on every invocation.
        Index("ix_executions_job_status", "job_id", "status"),
        # Retention: an account's oldest executions first.
        Index("ix_executions_account_created", "account_id", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    job_name: Mapped[str] = mapped_column(String(100))
    revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source: Mapped[str] = mapped_column(String(16))
    scheduled_for: Mapped[datetime | None] = mapped_column(nullable=True)
    # Unique per (job, fire instant) for scheduled runs: the database enforces "exactly once".
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    account_day: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    runtime_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    # Strict budget mode: the deadline reserved at admission, released when it ends.
    reserved_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The job's worker_labels at admission, sorted and comma-joined ('' for any worker).
    worker_labels: Mapped[str] = mapped_column(String(300), default="", server_default="")
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    log_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    log_seq: Mapped[int] = mapped_column(Integer, default=0)
    log_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    # SDK e-mails sent, across retries: incremented by a conditional UPDATE, so the
    # limit holds whichever attempt (or thread) asks.
    emails_sent: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


def execution_row(**fields: Any) -> dict[str, Any]:
    """A full executions row for a Core insert: the given fields over the defaults of a
    new execution (no attempt yet, no lease, no logs)."""
    return {"scheduled_for": None, "idempotency_key": None, "reason": None, "message": None,
            "started_at": None, "ended_at": None, "runtime_seconds": 0.0,
            "reserved_seconds": 0.0, "attempt_count": 0, "next_attempt_at": None,
            "lease_owner": None, "lease_expires_at": None, "cancel_requested": False,
            "log_bytes": 0, "log_seq": 0, "log_truncated": False, "emails_sent": 0,
            "worker_labels": "", **fields}


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("execution_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id"))
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    account_day: Mapped[str] = mapped_column(String(10))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    runtime_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    deadline_seconds: Mapped[float] = mapped_column(Float)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # CPU time and peak resident size of the attempt's processes (runtime/resources.py).
    cpu_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class LogLine(Base):
    __tablename__ = "log_lines"
    __table_args__ = (UniqueConstraint("execution_id", "seq"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(40))
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id"))
    seq: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime]
    stream: Mapped[str] = mapped_column(String(8))
    level: Mapped[str | None] = mapped_column(String(8), nullable=True)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[Any | None] = mapped_column(JSON, nullable=True)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("execution_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    content: Mapped[bytes] = deferred(mapped_column(LargeBinary))


class UsageDay(Base):
    """One row per account and day: the lock that admission serialises on, and its counters."""

    __tablename__ = "usage_days"
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    executions: Mapped[int] = mapped_column(Integer, default=0)
    runtime_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    reserved_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class JobUsageDay(Base):
    __tablename__ = "job_usage_days"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    executions: Mapped[int] = mapped_column(Integer, default=0)
    runtime_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class AuditEntry(Base):
    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_account_id", "account_id", "id"),
                      Index("ix_audit_at", "at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(254))
    action: Mapped[str] = mapped_column(String(50))
    target: Mapped[str] = mapped_column(String(100))
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    before: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    after: Mapped[Any | None] = mapped_column(JSON, nullable=True)


class Delivery(Base):
    """The outbox: a summary e-mail or webhook call owed for an ended execution.

    Written in the transaction that ends the execution, so a notification is never
    lost with a crash and never sent for an end that was rolled back.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        # The delivery loop's work list: due pending rows, by index.
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_account_execution", "account_id", "execution_id"),
        # Retention deletes executions: their deliveries by execution alone.
        Index("ix_deliveries_execution", "execution_id"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    # None: an alert about a job (domain/alerts.py), not about one execution.
    execution_id: Mapped[str | None] = mapped_column(ForeignKey("executions.id"),
                                                     nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    event: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # pending → sent | failed (tries used up, or nothing can be sent).
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None] = mapped_column(nullable=True)


class WebSession(Base):
    """A person signed in to the console: the cookie carries a secret whose SHA-256 is
    the key here, so a leaked table grants nobody a session."""

    __tablename__ = "web_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # None with ``operator`` set: the operator's session (no account, no user).
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), nullable=True,
                                                index=True)
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), nullable=True)
    operator: Mapped[bool] = mapped_column(Boolean, default=False)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    # Indexed: sessions idle past the limit are deleted in bulk at each sign-in.
    last_seen_at: Mapped[datetime] = mapped_column(index=True)
    client: Mapped[str] = mapped_column(String(100), default="")


class Invite(Base):
    """A one-time link where a person sets a password; only its hash is stored."""

    __tablename__ = "invites"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None] = mapped_column(nullable=True)


class SignInFailure(Base):
    """One failed sign-in, counted per e-mail and per client address over the last minute
    (in the database, so every server process of a deployment counts the same)."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (Index("ix_sign_in_failures_key_at", "key", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(300))
    # Indexed: failures older than the window are deleted at each new one.
    at: Mapped[datetime] = mapped_column(index=True)


class AlertIncident(Base):
    """An alert's incident (domain/alerts.py): opened once, recovered once."""

    __tablename__ = "alert_incidents"
    __table_args__ = (UniqueConstraint("job_id", "kind", "subject"),
                      Index("ix_alert_incidents_open", "job_id", "recovered_at"))
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    kind: Mapped[str] = mapped_column(String(16))
    # The missed instant (ISO) or the overlong execution's id.
    subject: Mapped[str] = mapped_column(String(64))
    opened_at: Mapped[datetime]
    recovered_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Node(Base):
    """A live process of the platform (or a remote worker), known by its heartbeat."""

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    # Comma-separated subset of api, scheduler, worker.
    roles: Mapped[str] = mapped_column(String(64))
    capacity: Mapped[int] = mapped_column(Integer)
    running: Mapped[int] = mapped_column(Integer)
    labels: Mapped[list[Any]] = mapped_column(JSON)
    remote: Mapped[bool] = mapped_column(Boolean)
    version: Mapped[str] = mapped_column(String(40))
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime] = mapped_column(index=True)


class WorkerToken(Base):
    """A remote worker's credential (stored as SHA-256); it opens /api/v1/worker/* only."""

    __tablename__ = "worker_tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
