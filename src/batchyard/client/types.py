"""Shapes of the API's answers (API.md), as TypedDicts: plain JSON, typed for callers."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class Account(TypedDict):
    id: str
    name: str
    timezone: str
    batch_jobs_enabled: bool
    plan: dict[str, Any]


class User(TypedDict):
    id: str
    email: str
    role: str


class Me(TypedDict):
    user: User
    account: Account


class LastExecution(TypedDict):
    id: str
    status: str
    at: str


class Today(TypedDict):
    succeeded: int
    failed: int
    runtime_seconds: float


class JobItem(TypedDict):
    id: str
    name: str
    status: str
    schedule_summary: str
    last_execution: LastExecution | None
    today: Today
    modified_at: str


class Job(TypedDict):
    id: str
    name: str
    description: str
    status: str
    revision: int | None
    settings: dict[str, Any]
    schedule: dict[str, Any] | None
    schedule_summary: str
    code_version: int | None
    created_at: str
    modified_at: str


class CodeVersion(TypedDict):
    version: int
    sha256: str
    size: int
    created_by: str
    created_at: str


class Variable(TypedDict):
    key: str
    value: str | None
    secret: bool
    # Keyed digest of the value (server-side key): equal digests, equal values.
    digest: str


class Attempt(TypedDict):
    number: int
    status: str
    started_at: str | None
    ended_at: str | None
    runtime_seconds: float | None
    exit_code: int | None
    error: NotRequired[str | None]


class Execution(TypedDict):
    id: str
    job_id: str
    job_name: NotRequired[str]
    revision: int | None
    source: str
    status: str
    reason: NotRequired[str | None]
    message: NotRequired[str | None]
    attempts: list[Attempt]
    created_at: str
    started_at: str | None
    ended_at: str | None
    runtime_seconds: float | None


class LogLine(TypedDict):
    seq: int
    at: str
    stream: str
    level: str | None
    message: str
    data: Any


class Artifact(TypedDict):
    name: str
    size: int
    sha256: str
