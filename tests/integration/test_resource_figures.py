"""Each attempt's CPU time and peak memory, at both isolation levels, from real jobs.

The measure (runtime/box/resources.py): ``wait4`` of the spawned child, so the whole tree the
child reaped; peak memory is the largest resident size of one process, CPU time is user +
system of all of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchyard.app import Server, job_python
from batchyard.config import Settings
from batchyard.domain.attempts import AttemptResult
from batchyard.domain.executions import AttemptOutcome
from batchyard.runtime.box.sandbox import SandboxUnavailable
from support.attempts import claimed_attempt, run_attempt

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
UID_BASE = 2_100_500_000

# 200 MiB written (so resident, not only reserved), then CPU until the process has used
# 1 s in all (the allocation's page faults included: on a busy host they cost a lot more).
ALLOCATE_AND_BURN = """
import time
def main():
    block = b"x" * (200 * 1024 * 1024)
    while time.process_time() < 1.0:
        pass
    print(len(block))
"""
# The same CPU second spent by a child process the job waits for: the tree is counted.
BURN_IN_A_CHILD = """
import subprocess, sys
def main():
    subprocess.run([sys.executable, "-c",
        "import time\\ns = time.process_time()\\nwhile time.process_time() - s < 1.0: pass"],
        check=True)
"""


def _run(server: Server, main_py: str) -> AttemptResult:
    result, stored = run_attempt(server.supervisor,
                                 claimed_attempt(main_py, deadline_seconds=60))
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, stored)
    return result


def _server(base: Path, mode: str, python: str | None) -> Server:
    return Server(Settings(data_dir=base / "data", workers=1, sandbox=mode,  # type: ignore[arg-type]
                           python=python, job_memory_bytes=1024 * MIB,
                           sandbox_uid_base=UID_BASE, job_network="open"))


def _python_for_job_uids() -> str | None:
    for candidate in (job_python(None), "/usr/bin/python3.11", "/usr/local/bin/python3.11"):
        if os.path.exists(candidate) and all(os.stat(parent).st_mode & 0o001
                             for parent in Path(os.path.realpath(candidate)).parents):
            return candidate
    return None


@pytest.fixture(scope="module", params=["bubblewrap", "rlimits"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    base = Path(tempfile.mkdtemp(prefix="batchyard-resources-"))
    os.chmod(base, 0o755)
    try:
        if request.param == "bubblewrap":
            if shutil.which("bwrap") is None:
                pytest.skip("bwrap is not installed (Debian package bubblewrap)")
            try:
                chosen = _server(base, "bubblewrap", None)
            except SandboxUnavailable as exc:
                pytest.skip(f"bubblewrap cannot run here: {exc.message}")
        else:
            if os.geteuid() != 0:
                pytest.skip("the rlimits level switches uids only when the server is root")
            python = _python_for_job_uids()
            if python is None:
                pytest.skip("no interpreter on this machine that an unprivileged uid can run")
            chosen = _server(base, "none", python)
        yield chosen
        chosen.db.dispose()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_200_mib_and_one_cpu_second_are_reported_within_10_and_20_percent(
        server: Server) -> None:
    result = _run(server, ALLOCATE_AND_BURN)
    assert result.peak_memory_bytes is not None and result.cpu_seconds is not None
    assert abs(result.peak_memory_bytes - 200 * MIB) <= 20 * MIB, result.peak_memory_bytes
    assert abs(result.cpu_seconds - 1.0) <= 0.2, result.cpu_seconds


def test_cpu_time_of_a_child_process_counts(server: Server) -> None:
    result = _run(server, BURN_IN_A_CHILD)
    assert result.cpu_seconds is not None
    assert 0.9 <= result.cpu_seconds <= 1.4, result.cpu_seconds
    # Peak memory is one process's: two small interpreters stay small.
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes < 100 * MIB


def test_a_job_past_the_dense_sampling_is_reported_within_its_last_gap(
        server: Server) -> None:
    # 3 CPU seconds: the job's own report at its end makes it exact; the samples alone
    # (below) would be within a gap of ~0.5 s.
    result = _run(server, "import time\ndef main():\n"
                          "    while time.process_time() < 3.0:\n        pass\n")
    assert result.cpu_seconds is not None
    assert 2.9 <= result.cpu_seconds <= 3.3, result.cpu_seconds


# The job sends a usage record of its own saying it used nothing, then leaves without the
# boot's report (os._exit): what it used comes from the samples, whatever it claimed.
UNDER_REPORTING = """
import os, sys, time
def main():
    block = b"x" * (100 * 1024 * 1024)
    while time.process_time() < 1.5:
        pass
    sys.modules["_batchyard_boot"]._supervisor.send_line(
        b'{"type": "usage", "cpu_seconds": 0.0, "peak_memory_bytes": 0}\\n')
    time.sleep(0.3)
    os._exit(len(block) * 0)
"""


def test_a_job_that_under_reports_its_usage_gets_the_measured_figures(
        server: Server) -> None:
    """Only the samples (every gap up to a quarter of the run): the report is no lower
    bound the job can push down."""
    result = _run(server, UNDER_REPORTING)
    assert result.cpu_seconds is not None and result.peak_memory_bytes is not None
    assert 1.0 <= result.cpu_seconds <= 1.8, result.cpu_seconds
    assert result.peak_memory_bytes >= 90 * MIB, result.peak_memory_bytes


def test_a_job_killed_at_its_deadline_has_the_sampled_figures(server: Server) -> None:
    """No report from a killed job: its CPU is the samples', within the last gap."""
    result, _ = run_attempt(server.supervisor, claimed_attempt(
        "def main():\n    while True:\n        pass\n", deadline_seconds=2))
    assert result.outcome is AttemptOutcome.TIMED_OUT, result.error
    assert result.cpu_seconds is not None
    assert 1.4 <= result.cpu_seconds <= 2.3, result.cpu_seconds


def test_a_job_with_modules_named_like_the_standard_librarys_still_ends_as_it_returned(
        server: Server) -> None:
    """The boot's usage report imports nothing after the job ran: a job whose folder (first
    on sys.path) holds a resource.py of its own ended failed after main() returned."""
    result = _run(server, "import sys, types\n"
                          "sys.modules['resource'] = types.ModuleType('resource')\n"
                          "def main():\n    pass\n")
    assert result.exit_code == 0 and result.cpu_seconds is not None
