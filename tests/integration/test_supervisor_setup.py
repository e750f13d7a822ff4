"""Preparing an attempt's folder: timed, bounded, and failing without host detail."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from batchyard.app import job_python
from batchyard.domain.attempts import AttemptResult, ClaimedAttempt, LogRecord
from batchyard.domain.executions import SETUP_FAILED, AttemptOutcome
from batchyard.runtime.box.supervisor import RuntimeLimits, Supervisor


def many_files(count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", "def main():\n    print('ran')\n")
        for number in range(count):
            archive.writestr(f"pkg/f{number}.py", f"X = {number}\n")
    return buffer.getvalue()


def claimed(code: bytes) -> ClaimedAttempt:
    return ClaimedAttempt(
        execution_id="exe_setup", account_id="acc_test", job_id="job_test", job_name="test",
        number=1, worker="test/0", revision=1, code=code, main_parameters=0,
        requirements=None, variables={}, secret_values=(), deadline_seconds=10.0,
        timeout_seconds=10.0, params={"body": {}}, source="api", database_access=False,
        log_seq=0, log_bytes=0, log_truncated=False)


def run(work_root: Path, code: bytes, setup_timeout: float = 120.0
        ) -> tuple[AttemptResult, list[str]]:
    supervisor = Supervisor(job_python(None), work_root, RuntimeLimits(
        kill_grace_seconds=0.3, log_cap_bytes=64 * 1024, log_line_max_bytes=1024,
        artifact_cap_bytes=1000, artifact_max_files=2, setup_timeout_seconds=setup_timeout))
    stored: list[LogRecord] = []

    def writer(batch: list[LogRecord], first: int, used: int, truncated: bool) -> bool:
        stored.extend(batch)
        return True

    result = supervisor.run(claimed(code), writer)
    assert result.logs is not None
    stored.extend(result.logs.records)
    return result, [record.message for record in stored]


def test_setup_time_is_shown_in_the_attempts_log(tmp_path: Path) -> None:
    result, logs = run(tmp_path, many_files(500))
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result, logs)
    assert any(line.startswith("batchyard: code ready in ") for line in logs), logs
    assert list(tmp_path.iterdir()) == []


def test_a_setup_past_its_timeout_fails_the_attempt_as_setup_failed(tmp_path: Path) -> None:
    result, logs = run(tmp_path, many_files(500), setup_timeout=1e-6)
    assert result.outcome is AttemptOutcome.FAILED
    assert result.final_failure == SETUP_FAILED
    assert result.error is not None and result.error.startswith("setup_failed: ")
    assert "not ready within" in result.error
    assert "ran" not in logs
    assert list(tmp_path.iterdir()) == []  # the half-extracted folder is gone


def test_an_os_error_in_setup_reaches_the_tenant_as_a_reference_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The work folder is a file: creating the attempt's folder fails with an OSError that
    # names the host path.
    work_root = tmp_path / "work"
    work_root.write_text("not a folder")
    result, logs = run(work_root, many_files(1))
    assert result.final_failure == SETUP_FAILED
    assert result.error is not None and "reference err_" in result.error
    for text in [result.error, *logs]:
        assert str(tmp_path) not in text, text
    reference = result.error.split("reference ")[1].split(")")[0]
    # The operator's log keeps the detail, under the same reference.
    assert reference in caplog.text and str(work_root) in caplog.text
