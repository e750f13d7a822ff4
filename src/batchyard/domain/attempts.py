"""An attempt's values as the worker side sees them: what a claim hands over, what the
job's output becomes, and how the attempt ended. Pure values: the control plane (the
queue) and the worker side (supervisor, log sink, remote workers) both speak them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from batchyard.domain.executions import AttemptOutcome


@dataclass(frozen=True)
class ClaimedAttempt:
    """Everything a supervisor needs to run one attempt, read in the claim's transaction."""

    execution_id: str
    account_id: str
    job_id: str
    job_name: str
    number: int
    worker: str
    revision: int
    code: bytes
    main_parameters: int
    requirements: str | None
    variables: dict[str, str]
    secret_values: tuple[str, ...]
    deadline_seconds: float
    timeout_seconds: float
    params: dict[str, Any]
    source: str
    database_access: bool
    log_seq: int
    log_bytes: int
    log_truncated: bool


@dataclass(frozen=True)
class LogRecord:
    at: datetime
    stream: str
    message: str
    level: str | None = None
    data: Any = None


@dataclass(frozen=True)
class OutputFile:
    name: str
    content: bytes
    sha256: str


@dataclass(frozen=True)
class LogBatch:
    """Log records not yet stored, with the execution's log counters after them."""

    records: tuple[LogRecord, ...]
    first_seq: int
    used_bytes: int
    truncated: bool


@dataclass(frozen=True)
class AttemptResult:
    outcome: AttemptOutcome
    runtime_seconds: float
    exit_code: int | None
    error: str | None
    ended_at: datetime
    artifacts: tuple[OutputFile, ...] = field(default=())
    # The attempt's last log records, stored in the same transaction as its end.
    logs: LogBatch | None = None
    # A failure no retry would mend (domain.executions.DEPENDENCY_INSTALL_FAILED): it ends
    # the execution and becomes its reason.
    final_failure: str | None = None
