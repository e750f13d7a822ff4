"""The supervisor against real child processes: caps, deadlines, process trees, outputs."""

from __future__ import annotations

import io
import os
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from batchyard.app import job_python
from batchyard.domain.attempts import AttemptResult, ClaimedAttempt, LogRecord
from batchyard.domain.executions import AttemptOutcome
from batchyard.runtime.box.supervisor import RuntimeLimits, Supervisor
from support.processes import process_alive


def zipped(main_py: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", main_py)
    return buffer.getvalue()


def attempt(main_py: str, deadline: float = 10.0, secrets: dict[str, str] | None = None) -> \
        ClaimedAttempt:
    variables = dict(secrets or {})
    return ClaimedAttempt(
        execution_id="exe_test", account_id="acc_test", job_id="job_test", job_name="test",
        number=1, worker="test/0", revision=1, code=zipped(main_py), main_parameters=1,
        requirements=None, variables=variables, secret_values=tuple(variables.values()),
        deadline_seconds=deadline, timeout_seconds=deadline, params={"body": {}},
        source="api", database_access=False, log_seq=0, log_bytes=0, log_truncated=False)


@pytest.fixture
def supervisor(tmp_path: Path) -> Supervisor:
    return Supervisor(job_python(None), tmp_path, RuntimeLimits(
        kill_grace_seconds=0.3, log_cap_bytes=64 * 1024, log_line_max_bytes=1024,
        artifact_cap_bytes=1000, artifact_max_files=2))


def run(supervisor: Supervisor, claimed: ClaimedAttempt) -> tuple[AttemptResult,
                                                                  list[LogRecord]]:
    stored: list[LogRecord] = []

    def writer(batch: list[LogRecord], first: int, used: int, truncated: bool) -> bool:
        stored.extend(batch)
        return True

    result = supervisor.run(claimed, writer)
    assert result.logs is not None
    stored.extend(result.logs.records)
    return result, stored


def test_endless_output_is_capped_and_the_job_still_finishes(supervisor: Supervisor) -> None:
    result, logs = run(supervisor, attempt(
        "import sys\ndef main():\n    for i in range(200000):\n"
        "        sys.stdout.write('x' * 100 + '\\n')\n"))
    assert result.outcome is AttemptOutcome.SUCCEEDED
    assert result.logs.truncated
    assert sum(len(r.message) for r in logs) < 70 * 1024
    assert any(r.message.startswith("Log truncated") for r in logs)


def test_a_deadline_kills_a_tree_that_left_the_group_and_ignores_sigterm(
        supervisor: Supervisor, tmp_path: Path) -> None:
    marker = tmp_path / "grandchild.pid"
    result, _ = run(supervisor, attempt(f"""
import os, signal, subprocess, time
def main():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "347"], start_new_session=True)
    open({str(marker)!r}, "w").write(str(child.pid))
    time.sleep(60)
""", deadline=1.5))
    assert result.outcome is AttemptOutcome.TIMED_OUT
    assert 1.5 <= result.runtime_seconds < 3.5
    assert not process_alive(int(marker.read_text()))


def test_background_helpers_in_the_group_die_when_main_returns(
        supervisor: Supervisor, tmp_path: Path) -> None:
    marker = tmp_path / "helper.pid"
    result, _ = run(supervisor, attempt(f"""
import subprocess
def main():
    helper = subprocess.Popen(["sleep", "349"])
    open({str(marker)!r}, "w").write(str(helper.pid))
"""))
    assert result.outcome is AttemptOutcome.SUCCEEDED
    pid = int(marker.read_text())
    for _ in range(50):
        if not process_alive(pid):
            break
        os.sched_yield()
    assert not process_alive(pid)


def test_outputs_keep_regular_files_within_the_caps(supervisor: Supervisor) -> None:
    result, logs = run(supervisor, attempt("""
import os
def main():
    out = os.environ["OUTPUT_DIR"]
    open(os.path.join(out, "a.txt"), "w").write("a" * 10)
    open(os.path.join(out, "b.bin"), "w").write("b" * 2000)
    os.symlink("/etc/passwd", os.path.join(out, "link"))
    open(os.path.join(out, "c.txt"), "w").write("c")
"""))
    names = sorted(f.name for f in result.artifacts)
    assert names == ["a.txt", "c.txt"]
    skipped = " ".join(r.message for r in logs if r.message.startswith("Output not kept"))
    assert "b.bin" in skipped and "link" in skipped


def test_the_job_environment_holds_no_server_configuration(
        supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHYARD_OPERATOR_TOKEN", "op-token-value")
    _, logs = run(supervisor, attempt(
        "import os\ndef main():\n    print(sorted(os.environ))\n"))
    printed = next(r.message for r in logs if r.stream == "stdout")
    assert "BATCHYARD" not in printed and "op-token-value" not in printed
    assert "OUTPUT_DIR" in printed


def test_workspace_is_removed_after_the_attempt(supervisor: Supervisor,
                                                tmp_path: Path) -> None:
    run(supervisor, attempt("def main():\n    open('scratch.txt', 'w').write('x')\n"))
    assert list(tmp_path.iterdir()) == []


def test_a_job_filling_its_folders_past_the_limit_is_killed_with_the_reason(
        tmp_path: Path) -> None:
    supervisor = Supervisor(job_python(None), tmp_path, RuntimeLimits(
        kill_grace_seconds=0.3, log_cap_bytes=64 * 1024, log_line_max_bytes=1024,
        artifact_cap_bytes=1024 * 1024, artifact_max_files=2, disk_bytes=8 * 1024 * 1024))
    result, _ = run(supervisor, attempt("""
import os, time
def main():
    n = 0
    while True:  # one MiB a file, a file every 50 ms, for ever
        with open(os.path.join(os.environ["OUTPUT_DIR"], f"part{n}"), "wb") as handle:
            handle.write(os.urandom(1024 * 1024))
        n += 1
        time.sleep(0.05)
""", deadline=30))
    assert result.outcome is AttemptOutcome.FAILED
    assert result.error is not None and result.error.startswith("disk_limit_exceeded:")
    # Checked every second: killed long before its 30 s deadline, a few MiB past the limit.
    assert result.runtime_seconds < 10


def test_a_job_hiding_disk_in_a_deleted_open_file_is_killed_with_the_reason(
        tmp_path: Path) -> None:
    supervisor = Supervisor(job_python(None), tmp_path, RuntimeLimits(
        kill_grace_seconds=0.3, log_cap_bytes=64 * 1024, log_line_max_bytes=1024,
        artifact_cap_bytes=1024 * 1024, artifact_max_files=2, disk_bytes=8 * 1024 * 1024))
    result, _ = run(supervisor, attempt("""
import os, time
def main():
    path = os.path.join(os.environ["OUTPUT_DIR"], "hidden")
    handle = open(path, "wb")
    os.unlink(path)  # gone from every folder listing, still on disk while open
    for _ in range(40):
        handle.write(os.urandom(1024 * 1024))
        handle.flush()
        time.sleep(0.05)
    time.sleep(30)
""", deadline=30))
    assert result.outcome is AttemptOutcome.FAILED
    assert result.error is not None and result.error.startswith("disk_limit_exceeded:")
    assert result.runtime_seconds < 10


def test_a_stop_between_two_steps_is_kept_for_the_next_step() -> None:
    from batchyard.runtime.box.supervisor import _Stops

    stops = _Stops()
    seen: list[tuple[AttemptOutcome, str]] = []
    stops.stop(AttemptOutcome.INTERRUPTED, "the server is stopping")  # no step attached yet
    stops.attach(lambda reason, detail: seen.append((reason, detail)))
    assert seen == [(AttemptOutcome.INTERRUPTED, "the server is stopping")]
    stops.detach()
    stops.stop(AttemptOutcome.CANCELLED, "cancelled")  # between steps again: kept
    assert len(seen) == 1


def test_a_stop_as_soon_as_the_attempt_is_known_ends_it_before_main_runs(
        supervisor: Supervisor, tmp_path: Path) -> None:
    import threading

    marker = tmp_path / "main-ran"
    outcome: list[AttemptResult] = []
    claimed = attempt(f"def main():\n    open({str(marker)!r}, 'w').close()\n", deadline=20)
    running = threading.Thread(target=lambda: outcome.append(run(supervisor, claimed)[0]))
    running.start()
    # The supervisor knows the attempt from the first instant of run(): no window in which
    # a shutdown's stop finds nothing to stop and is lost.
    while not supervisor.stop(claimed.execution_id, AttemptOutcome.INTERRUPTED, "stopping"):
        assert running.is_alive() or outcome, "the attempt ended without being stoppable"
    running.join(20)
    assert outcome[0].outcome is AttemptOutcome.INTERRUPTED
    assert not marker.exists()


def test_an_old_attempts_stop_and_end_never_reach_a_newer_attempt_of_the_same_execution(
        supervisor: Supervisor) -> None:
    import dataclasses
    import threading
    import time

    sleeper = "import time\ndef main():\n    time.sleep(30)\n"
    old = attempt(sleeper, deadline=30)
    new = dataclasses.replace(attempt(sleeper, deadline=30), number=2)
    results: dict[int, AttemptResult] = {}

    def running(claimed: ClaimedAttempt) -> threading.Thread:
        thread = threading.Thread(target=lambda: results.update(
            {claimed.number: run(supervisor, claimed)[0]}))
        thread.start()
        return thread

    first, second = running(old), running(new)
    time.sleep(1.0)
    # The sweeper gave the execution to attempt 2; attempt 1's worker learns it lost its lease.
    assert supervisor.stop(old.execution_id, AttemptOutcome.INTERRUPTED, "lost lease", 1)
    first.join(20)
    assert results[1].outcome is AttemptOutcome.INTERRUPTED
    assert second.is_alive()  # untouched by attempt 1's stop and by its end
    assert supervisor.stop(new.execution_id, AttemptOutcome.CANCELLED, "cancelled")
    second.join(20)
    assert results[2].outcome is AttemptOutcome.CANCELLED


def test_the_attempts_end_and_log_records_read_the_injected_clock(tmp_path: Path) -> None:
    fixed = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    supervisor = Supervisor(job_python(None), tmp_path, RuntimeLimits(
        kill_grace_seconds=0.3, log_cap_bytes=64 * 1024, log_line_max_bytes=1024,
        artifact_cap_bytes=1000, artifact_max_files=2), clock=lambda: fixed)
    result, logs = run(supervisor, attempt("def main():\n    print('hi')\n"))
    assert result.outcome is AttemptOutcome.SUCCEEDED
    assert result.ended_at == fixed
    assert any(record.message == "hi" for record in logs)
    assert all(record.at == fixed for record in logs if record.stream != "log")
