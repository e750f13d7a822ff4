"""An attempt as a claim would give it, and a supervisor's run of it with its log records:
for tests of the attempt box alone (no store, no server process)."""

from __future__ import annotations

import io
import secrets
import time
import zipfile
from typing import Protocol

from batchyard.domain.attempts import AttemptResult, ClaimedAttempt, LogRecord
from batchyard.runtime.box.logsink import LogWriter
from batchyard.runtime.box.supervisor import Supervisor


def claimed_attempt(main_py: str, *, requirements: str | None = None,
                    deadline_seconds: float = 20) -> ClaimedAttempt:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", main_py)
        if requirements is not None:
            archive.writestr("requirements.txt", requirements)
    return ClaimedAttempt(
        execution_id=f"exe_{secrets.token_hex(4)}", account_id="acc_test", job_id="job_test",
        job_name="test", number=1, worker="test/0", revision=1, code=buffer.getvalue(),
        main_parameters=0, requirements=requirements, variables={}, secret_values=(),
        deadline_seconds=deadline_seconds, timeout_seconds=deadline_seconds,
        params={"body": {}}, source="api", database_access=False, log_seq=0, log_bytes=0,
        log_truncated=False)


class Runs(Protocol):
    def run(self, attempt: ClaimedAttempt, write_logs: LogWriter) -> AttemptResult: ...


def run_attempt(supervisor: Runs, claimed: ClaimedAttempt
                ) -> tuple[AttemptResult, list[LogRecord]]:
    """Run it; the result and every log record, the last batch included."""
    stored: list[LogRecord] = []

    def writer(batch: list[LogRecord], first: int, used: int, truncated: bool) -> bool:
        stored.extend(batch)
        return True

    result = supervisor.run(claimed, writer)
    assert result.logs is not None
    stored.extend(result.logs.records)
    return result, stored


def wait_for_warm(supervisor: Supervisor, claimed: ClaimedAttempt,
                  timeout: float = 10) -> None:
    """Make ``claimed``'s key hot and wait until a warm interpreter of it is ready: the
    attempt run next starts warm."""
    warm = supervisor.warm
    assert warm is not None, "warm starts are off"
    key = supervisor.warm_key(claimed)
    warm.note_start(key)
    deadline = time.monotonic() + timeout
    while warm.ready_count(key) == 0:
        assert time.monotonic() < deadline, f"no warm interpreter: {warm.stats()}"
        time.sleep(0.01)
