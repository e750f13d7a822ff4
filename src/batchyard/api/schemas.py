"""Request and response shapes of the public API (API.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JsonValue = Any


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --- requests ------------------------------------------------------------------------
class AccountCreate(Strict):
    name: str
    timezone: str | None = None
    batch_jobs_enabled: bool | None = None
    plan: dict[str, int | float | bool] | None = None


class Databases(Strict):
    main: str | None = None
    etl: str | None = None


class AccountUpdate(Strict):
    name: str | None = None
    timezone: str | None = None
    batch_jobs_enabled: bool | None = None
    super_admin_only: bool | None = None
    budget_mode: Literal["recorded", "strict"] | None = None
    plan: dict[str, int | float | bool] | None = None
    databases: Databases | None = None


class UserCreate(Strict):
    email: str
    role: Literal["super_admin", "admin", "developer", "viewer"]
    password: str | None = None


class ApiKeyCreate(Strict):
    name: str | None = Field(default=None, max_length=100)


class JobCreate(Strict):
    name: str
    description: str | None = None


class JobUpdate(Strict):
    name: str | None = None
    description: str | None = None


class NotifyIn(Strict):
    on_failure: list[str] | None = None
    on_success: list[str] | None = None


class WebhookIn(Strict):
    url: str
    # Write-only: omitted keeps the current secret, null or "" removes it.
    secret: str | None = None


class SettingsIn(Strict):
    timeout_minutes: float | None = None
    retries: int | None = None
    concurrency: Literal["forbid", "allow"] | None = None
    misfire_grace_minutes: float | None = None
    notify: NotifyIn | None = None
    # null removes the webhook.
    webhook: WebhookIn | None = None
    # Labels every worker running the job must advertise (e.g. ["gpu", "region=eu"]).
    worker_labels: list[str] | None = None


class VariableIn(Strict):
    key: str
    value: str
    secret: bool = False


class VariablesIn(Strict):
    variables: list[VariableIn]


class ScheduleIn(Strict):
    type: Literal["none", "daily", "weekly", "monthly", "cron"]
    times: list[str] | None = None
    days_of_week: list[str] | None = None
    days_of_month: list[int | str] | None = None
    cron: str | None = None
    timezone: str | None = None


# --- responses -----------------------------------------------------------------------
class AccountOut(BaseModel):
    id: str
    name: str
    timezone: str
    batch_jobs_enabled: bool
    super_admin_only: bool
    budget_mode: str
    plan: dict[str, int | float | bool]
    databases: dict[str, str | None]


class UserOut(BaseModel):
    id: str
    email: str
    role: str


class UserCreated(UserOut):
    api_key: str


class Me(BaseModel):
    user: UserOut
    account: AccountOut


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    user_id: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str


class NotifyOut(BaseModel):
    on_failure: list[str]
    on_success: list[str]


class WebhookOut(BaseModel):
    url: str
    has_secret: bool


class SettingsOut(BaseModel):
    timeout_minutes: float
    retries: int
    concurrency: str
    misfire_grace_minutes: float
    notify: NotifyOut
    webhook: WebhookOut | None = None
    worker_labels: list[str] = []


class LastExecution(BaseModel):
    id: str
    status: str
    at: datetime


class Today(BaseModel):
    succeeded: int
    failed: int
    runtime_seconds: float


class JobOut(BaseModel):
    id: str
    name: str
    description: str
    status: str
    revision: int | None
    settings: SettingsOut
    schedule: dict[str, JsonValue] | None
    schedule_summary: str
    code_version: int | None
    created_at: datetime
    modified_at: datetime
    deleted: bool = False


class JobListItem(BaseModel):
    id: str
    name: str
    status: str
    schedule_summary: str
    last_execution: LastExecution | None
    today: Today
    modified_at: datetime


class JobList(BaseModel):
    items: list[JobListItem]
    next_cursor: str | None = None


class CodeVersionOut(BaseModel):
    version: int
    sha256: str
    size: int
    created_by: str
    created_at: datetime
    has_requirements: bool


class CodeVersionList(BaseModel):
    items: list[CodeVersionOut]
    next_cursor: str | None = None


class VariableOut(BaseModel):
    key: str
    value: str | None
    secret: bool


class VariableList(BaseModel):
    variables: list[VariableOut]


class NextRun(BaseModel):
    utc: str
    local: str


class ScheduleOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    timezone: str
    summary: str
    next_runs: list[NextRun]


class AttemptOut(BaseModel):
    number: int
    status: str
    started_at: datetime
    ended_at: datetime | None
    runtime_seconds: float | None
    deadline_seconds: float
    exit_code: int | None
    error: str | None
    worker: str | None


class ExecutionOut(BaseModel):
    id: str
    job_id: str
    job_name: str
    revision: int | None
    source: str
    scheduled_for: datetime | None
    status: str
    reason: str | None
    message: str | None
    params: dict[str, JsonValue]
    attempts: list[AttemptOut]
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    runtime_seconds: float


class ExecutionList(BaseModel):
    items: list[ExecutionOut]
    next_cursor: str | None = None


class Queued(BaseModel):
    execution_id: str
    status: str


class LogLineOut(BaseModel):
    seq: int
    at: datetime
    attempt: int
    stream: str
    level: str | None
    message: str
    data: JsonValue = None


class LogsOut(BaseModel):
    items: list[LogLineOut]
    truncated: bool
    finished: bool


class ArtifactOut(BaseModel):
    name: str
    size: int
    sha256: str
    attempt: int


class ArtifactList(BaseModel):
    items: list[ArtifactOut]


class DeliveryOut(BaseModel):
    id: str
    kind: Literal["email", "webhook"]
    event: str
    status: Literal["pending", "sent", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


class DeliveryList(BaseModel):
    items: list[DeliveryOut]


class AuditOut(BaseModel):
    at: datetime
    actor: str
    action: str
    target: str
    job_id: str | None
    before: JsonValue = None
    after: JsonValue = None


class AuditList(BaseModel):
    items: list[AuditOut]
    next_cursor: str | None = None


class SandboxHealth(BaseModel):
    """The operator's view of job isolation (runtime/box/sandbox_setup.py)."""

    level: str  # bubblewrap, rlimits, unconfined (BATCHYARD_SANDBOX=off) or unavailable
    jobs_run: bool
    problem: str | None = None  # unavailable: why no job runs here
    fix: str | None = None  # unavailable: what to change
    notes: list[str] = []  # what start-up chose instead of what was configured
    python: str | None = None
    runtime_dir: str | None = None
    work_dir: str | None = None
    job_uids: list[int] | None = None


class NodeHealth(BaseModel):
    id: str
    roles: list[str]
    capacity: int
    running: int
    labels: list[str]
    remote: bool
    version: str
    started_at: datetime
    heartbeat_at: datetime


class Health(BaseModel):
    status: str
    version: str
    database: str
    isolation: str
    workers: int
    # Only with the operator token.
    sandbox: SandboxHealth | None = None
    # Only with the operator token: this process's roles, and the live nodes (processes
    # and remote workers heard from within three heartbeats).
    roles: list[str] | None = None
    nodes: list[NodeHealth] | None = None
