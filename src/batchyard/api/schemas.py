"""Request and response shapes of the public API (API.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from batchyard.domain.jobs import MAX_DESCRIPTION

EXECUTION_REASONS = (
    "Why the execution is in its state (null while it is queued or running, and when it "
    "succeeded). Blocked at admission: feature_disabled, not_published, "
    "executions_per_day_exceeded, job_invocations_exceeded, runtime_budget_insufficient, "
    "already_running, revision_exceeds_plan. Never ran: misfire (missed), job_unpublished "
    "and job_deleted (cancelled while queued), setup_failed (the attempt could not be "
    "prepared), sandbox_unavailable (this host cannot isolate jobs), "
    "runtime_budget_exhausted (no run time left when an attempt was to start). Ended: "
    "timeout, cancelled, interrupted (a node restarted), worker_lost, "
    "dependency_install_failed, error (the message then starts with the resource limit "
    "hit, if one was: out_of_memory, too_many_processes, too_many_open_files, "
    "file_too_large, cpu_time_exceeded, disk_limit_exceeded).")

JsonValue = Any
# Optional in a PATCH, but null is refused (it would mean nothing): the schema says so.
NotNull = SkipJsonSchema[None]
# The name rule of domain/jobs.py, stated in the schema only: the domain's message is the
# clearer refusal.
def _job_name_schema(schema: dict[str, Any]) -> None:
    schema.update(minLength=3, maxLength=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _-]*$")


# --- errors --------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    message: str
    field: str | None = None


class ErrorOut(BaseModel):
    """Every non-2xx answer of the API (API.md, conventions)."""

    error: ErrorDetail


_STATUS_MEANING = {
    400: "Malformed request", 401: "No or bad credentials",
    403: "The role or the account's features do not allow this",
    404: "Unknown, or another account's", 405: "Method not allowed (see Allow)",
    409: "The resource is not in a state that allows this",
    413: "The code is larger than the plan allows",
    422: "Invalid input (with the field); JSON deeper than 64 levels, NaN/Infinity, "
         "duplicate keys or a body over the route's size",
    429: "A plan limit; the code is the reason (retry_after seconds when known)",
    503: "The control plane is overloaded: try again after Retry-After seconds",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer."""
    return {status: {"model": ErrorOut, "description": _STATUS_MEANING[status]}
            for status in statuses}


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
    name: Annotated[str, Field(min_length=1, max_length=200)] | NotNull = None
    timezone: str | NotNull = None
    batch_jobs_enabled: bool | NotNull = None
    super_admin_only: bool | NotNull = None
    budget_mode: Literal["recorded", "strict"] | NotNull = None
    plan: dict[str, int | float | bool] | NotNull = None
    databases: Databases | NotNull = None


class UserCreate(Strict):
    email: str
    role: Literal["super_admin", "admin", "developer", "viewer"]
    password: str | None = None


class ApiKeyCreate(Strict):
    name: str | None = Field(default=None, max_length=100)


class JobCreate(Strict):
    name: str = Field(json_schema_extra=_job_name_schema)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION)


class JobUpdate(Strict):
    name: Annotated[str, Field(json_schema_extra=_job_name_schema)] | NotNull = None
    description: Annotated[str, Field(max_length=MAX_DESCRIPTION)] | NotNull = None


class NotifyIn(Strict):
    on_failure: list[str] | None = None
    on_success: list[str] | None = None


class AlertsIn(Strict):
    late_after_minutes: float | None = None
    max_duration_minutes: float | None = None


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
    # null removes the alerts.
    alerts: AlertsIn | None = None
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
    # One-time link (72 h) where the person sets a password for the console.
    invite_url: str


class PasswordChange(BaseModel):
    current_password: str = Field(default="", max_length=1000)
    new_password: str = Field(max_length=1000)


class ForecastFireOut(BaseModel):
    job_id: str
    job_name: str
    at: datetime
    admitted: bool
    reason: str | None


class ForecastDayOut(BaseModel):
    date: str
    planned: int
    expected_runtime_seconds: float
    max_runtime_seconds: float
    fires: list[ForecastFireOut]
    blocked: list[ForecastFireOut]


class ForecastOut(BaseModel):
    start: datetime
    timezone: str
    budget_mode: str
    summary: str
    days: list[ForecastDayOut]


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


class AlertsOut(BaseModel):
    late_after_minutes: float | None
    max_duration_minutes: float | None


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
    alerts: AlertsOut | None = None
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
    # Hex HMAC-SHA256 of the value under a key only the server holds (per account; over
    # job, key and value): equal digests mean equal values, and a secret is never returned.
    digest: str


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
    # User + system CPU time of the attempt's process tree, and the largest resident size
    # of any one of its processes (no cgroup is used: wait4's ru_maxrss of the child at the
    # rlimits level, /proc samples of the tree under bubblewrap; runtime/box/resources.py);
    # null when not measured.
    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None


class ExecutionOut(BaseModel):
    id: str
    job_id: str
    job_name: str
    revision: int | None
    source: str
    scheduled_for: datetime | None
    status: str
    reason: Annotated[str | None, Field(description=EXECUTION_REASONS)]
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


class WarmStartsHealth(BaseModel):
    """This process's warm interpreters (runtime/box/warm.py), counted since it started."""

    size: int  # at most this many ready at once (BATCHYARD_WARM_POOL_SIZE)
    ready: int
    keys: int  # requirements sets with a ready interpreter
    warm_starts: int
    cold_starts: int
    spawned: int
    spawn_failures: int
    retired: int
    bytes_per_process: int  # measured resident memory of one ready interpreter (0: not yet)


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
    # Only with the operator token, on a process with the worker role and warm starts on.
    warm_starts: WarmStartsHealth | None = None
