"""The supervisor's install step, with real child processes and no package index needed."""

from __future__ import annotations

import fcntl
import io
import os
import threading
import time
import zipfile
from pathlib import Path

from batchyard.app import job_python
from batchyard.domain.attempts import AttemptResult, ClaimedAttempt, LogRecord
from batchyard.domain.executions import DEPENDENCY_INSTALL_FAILED, AttemptOutcome
from batchyard.runtime.box.envcache import EnvCache
from batchyard.runtime.box.supervisor import RuntimeLimits, Supervisor

LIMITS = RuntimeLimits(kill_grace_seconds=0.3, log_cap_bytes=64 * 1024, log_line_max_bytes=1024,
                       artifact_cap_bytes=1000, artifact_max_files=2)


def attempt(requirements: str, execution_id: str = "exe_deps") -> ClaimedAttempt:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", "def main():\n    print('ran')\n")
    return ClaimedAttempt(
        execution_id=execution_id, account_id="acc_test", job_id="job_test", job_name="test",
        number=1, worker="test/0", revision=1, code=buffer.getvalue(), main_parameters=0,
        requirements=requirements, variables={}, secret_values=(), deadline_seconds=10,
        timeout_seconds=10, params={"body": {}}, source="api", database_access=False,
        log_seq=0, log_bytes=0, log_truncated=False)


def supervisor(base: Path, install_timeout: float = 30) -> Supervisor:
    (base / "work").mkdir()
    cache = EnvCache(base / "envs", job_python(None), base / "uv-cache", 1024 ** 3,
                     install_timeout)
    return Supervisor(job_python(None), base / "work", LIMITS, environments=cache)


def run(chosen: Supervisor, claimed: ClaimedAttempt) -> tuple[AttemptResult, list[str]]:
    stored: list[LogRecord] = []

    def writer(batch: list[LogRecord], first: int, used: int, truncated: bool) -> bool:
        stored.extend(batch)
        return True

    result = chosen.run(claimed, writer)
    assert result.logs is not None
    stored.extend(result.logs.records)
    return result, [f"{record.stream}: {record.message}" for record in stored]


def hold_build_lock(chosen: Supervisor, requirements: str) -> int:
    """Act as another server building these requirements: hold their lock exclusively."""
    assert chosen.environments is not None
    locks = chosen.environments.root / ".locks"
    locks.mkdir(parents=True)
    key = chosen.environments.key_for(requirements)
    fd = os.open(locks / f"{key}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_cancel_during_the_install_ends_the_attempt_at_once_as_cancelled(
        tmp_path: Path) -> None:
    chosen = supervisor(tmp_path)
    fd = hold_build_lock(chosen, "six==1.16.0\n")
    try:
        threading.Timer(0.3, chosen.stop, ("exe_deps", AttemptOutcome.CANCELLED,
                                           "cancelled by a user")).start()
        started = time.monotonic()
        result, logs = run(chosen, attempt("six==1.16.0\n"))
    finally:
        os.close(fd)
    assert time.monotonic() - started < 5
    assert (result.outcome, result.error, result.runtime_seconds) == (
        AttemptOutcome.CANCELLED, "cancelled by a user", 0.0)
    assert result.final_failure is None
    assert not any(line == "stdout: ran" for line in logs)


def test_waiting_too_long_for_another_attempts_install_interrupts_the_attempt(
        tmp_path: Path) -> None:
    chosen = supervisor(tmp_path, install_timeout=0.3)
    assert chosen.environments is not None
    chosen.environments.wait_slack = 0.2
    fd = hold_build_lock(chosen, "six==1.16.0\n")
    try:
        result, logs = run(chosen, attempt("six==1.16.0\n"))
    finally:
        os.close(fd)
    # Another attempt's slow build is not this one's failure: interrupted (a retry may
    # follow), never dependency_install_failed.
    assert result.outcome is AttemptOutcome.INTERRUPTED
    assert result.final_failure is None
    assert result.error is not None and result.error.startswith(
        "waited 0.5 s for another attempt installing the same requirements"), result.error
    assert "log: batchyard: attempt 1 ended while installing its requirements: interrupted " \
           "(waited 0.5 s for another attempt" in " ".join(logs)
    assert not any(line == "stdout: ran" for line in logs)


def test_an_option_line_stored_before_upload_checks_fails_without_running_uv(
        tmp_path: Path) -> None:
    chosen = supervisor(tmp_path)
    result, logs = run(chosen, attempt("six\n--index-url https://mirror.example/simple\n"))
    assert result.outcome is AttemptOutcome.FAILED
    assert result.final_failure == DEPENDENCY_INSTALL_FAILED
    assert result.error is not None and result.error.startswith(
        "dependency_install_failed: requirements.txt line 2: option lines such as "
        "'--index-url'"), result.error
    assert not any(line.startswith("log: pip: ") for line in logs)


def test_requirements_of_comments_only_need_no_environment(tmp_path: Path) -> None:
    chosen = supervisor(tmp_path)
    result, logs = run(chosen, attempt("# nothing yet\n\n"))
    assert result.outcome is AttemptOutcome.SUCCEEDED, logs
    assert "stdout: ran" in logs
    assert chosen.environments is not None and not chosen.environments.root.exists()
