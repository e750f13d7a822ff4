"""An attempt's values as the worker side sees them: what a claim hands over, what the
job's output becomes, and how the attempt ended. Pure values: the control plane (the
queue) and the worker side (supervisor, log sink, remote workers) both speak them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

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
    # A hint from the claim: how many executions this worker could take were due when
    # this one was claimed, itself included (0: not known). The pool wakes another idle
    # slot only while more were due than its slots already claiming: a claim that finds
    # nothing costs a transaction, and work queued later wakes a slot of its own.
    due_seen: int = 0


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
    # What the attempt's processes used (runtime/resources.py); None: not measured.
    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None


class WorkerPortClosed(Exception):
    """The control plane refused this worker for good (its token was revoked or is
    unknown): no later call will be taken, so the worker stops claiming."""


class WorkerPort(Protocol):
    """The worker side's one way to the control plane: claim an attempt, keep its lease,
    store its logs, record its end. Two implementations: in-process SQL
    (runtime/port_local.py, the embedded mode's path) and HTTP (runtime/port_remote.py,
    a worker host with no database credentials). Every write after the claim is fenced by
    the attempt's (execution, number, worker): a worker that lost its lease writes nothing.
    Requests of job code (database queries, e-mail) are answered by the control plane too:
    in-process by the handlers themselves, remotely through the port's ``request``.
    """

    def claim(self, worker: str, lease_seconds: float) -> ClaimedAttempt | None:
        """The next attempt this worker may run, leased to it; None: nothing is due."""
        ...

    def renew(self, attempts: list[ClaimedAttempt],
              lease_seconds: float) -> list[tuple[bool, bool] | None]:
        """Extend the leases of running attempts: for each, in order, (still ours, cancel
        requested), or None when its renewal failed (raised: all of them failed)."""
        ...

    def append_logs(self, attempt: ClaimedAttempt, batch: LogBatch) -> bool:
        """Store a batch of log records; False when the attempt is no longer ours."""
        ...

    def finish(self, attempt: ClaimedAttempt, result: AttemptResult) -> bool:
        """Record the attempt's end; False when it was no longer ours (nothing written)."""
        ...
