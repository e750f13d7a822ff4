"""The sandbox fails closed: a uid per attempt at every level but ``off``, or no job at all.

Real detection on this host (bwrap hidden by an empty PATH where a test says so), real
probes run as a job uid, real ``Server`` objects. The interpreter "under a 0700 folder" is
a symbolic link inside a fresh 0700 folder (root reaches it; a job uid does not), the
situation of a pyenv build under ``/root``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from batchyard.app import Server, job_python
from batchyard.config import Settings
from batchyard.domain.executions import SANDBOX_UNAVAILABLE, AttemptOutcome
from batchyard.runtime.box import jobroot
from batchyard.runtime.box.sandbox import IsolationLevel, JobLimits, Sandbox
from batchyard.runtime.box.sandbox_setup import detect_sandbox
from support.attempts import claimed_attempt, run_attempt

pytestmark = pytest.mark.timeout(120)

UID_BASE = 2_100_200_000
OPERATOR_TOKEN = "fails-closed-operator-token"


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("a uid per attempt needs a server running as root")


def system_python() -> str | None:
    return next((path for path in jobroot.SYSTEM_PYTHONS if os.path.isfile(path)), None)


@pytest.fixture
def closed_python(tmp_path: Path) -> str:
    """The job interpreter, reached through a 0700 folder."""
    closed = tmp_path / "closed-interpreter"
    closed.mkdir(mode=0o700)
    link = closed / "python3"
    link.symlink_to(os.path.realpath(job_python(None)))
    return str(link)


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder every user may pass (pytest's own temp root is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="batchyard-fails-closed-"))
    os.chmod(base, 0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def no_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def forget(sandbox: Sandbox) -> None:
    placement = sandbox.placement
    if placement is not None and placement.runtime_dir is not None:
        shutil.rmtree(placement.runtime_dir, ignore_errors=True)


def health(server: Server, token: str | None) -> dict[str, object]:
    async def get() -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app),
                                     base_url="http://test") as client:
            return await client.get("/api/v1/health", headers=headers)

    answer = asyncio.run(get())
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


@pytest.mark.usefixtures("no_bwrap")
@pytest.mark.parametrize("mode", ["auto", "none", "rlimits"])
def test_without_bwrap_every_mode_but_off_gives_each_attempt_its_own_uid_or_runs_nothing(
        tmp_path: Path, closed_python: str, mode: str) -> None:
    needs_root()
    data_dir = tmp_path / "data"  # under pytest's 0700 temp root
    data_dir.mkdir(mode=0o700)
    sandbox = detect_sandbox(mode, closed_python, JobLimits(), data_dir, UID_BASE)
    try:
        if system_python() is None:
            assert sandbox.level is IsolationLevel.UNAVAILABLE, sandbox.description
            return
        assert sandbox.level is IsolationLevel.RLIMITS, (sandbox.description, sandbox.report)
        assert sandbox.uid_range == (UID_BASE, UID_BASE + 9_999)
        placement = sandbox.placement
        assert placement is not None and placement.runtime_dir is not None
        # The configured interpreter is out of the job uids' reach: the system's runs jobs,
        # and the operator is told which and why.
        assert placement.python in jobroot.SYSTEM_PYTHONS
        assert any(note.startswith(f"the job uids cannot run {closed_python}: ")
                   and note.endswith(f"jobs run {placement.python}")
                   for note in sandbox.report.notes), sandbox.report
        assert (mode == "auto") == any("bwrap is not installed" in note
                                       for note in sandbox.report.notes)
        # Outside the 0700 data folder, which stays closed; the SDK is a copy, not the
        # checkout.
        assert data_dir not in placement.runtime_dir.parents
        assert os.stat(data_dir).st_mode & 0o777 == 0o700
        assert placement.jobpath.parent == placement.runtime_dir
        assert (placement.jobpath / "_batchyard_boot.py").is_file()
    finally:
        forget(sandbox)


def test_off_alone_runs_jobs_as_the_servers_uid(tmp_path: Path) -> None:
    sandbox = detect_sandbox("off", job_python(None), JobLimits(), tmp_path, UID_BASE)
    assert sandbox.level is IsolationLevel.UNCONFINED and sandbox.uid_range is None
    assert sandbox.description.startswith(
        "unconfined (BATCHYARD_SANDBOX=off, the operator's explicit choice: jobs run as the "
        "server's own uid")


@pytest.mark.usefixtures("no_bwrap")
def test_a_runtime_folder_behind_a_closed_parent_runs_no_job_and_says_why(
        tmp_path: Path) -> None:
    needs_root()
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    sandbox = detect_sandbox("auto", job_python(None), JobLimits(), data_dir, UID_BASE,
                             closed / "runtime")
    assert sandbox.level is IsolationLevel.UNAVAILABLE and not sandbox.runs_jobs
    problem, fix = sandbox.report.problem or "", sandbox.report.fix or ""
    assert problem.startswith("bwrap is not installed (Debian package bubblewrap); the "
                              "rlimits launcher needs a runtime folder the job uids can "
                              f"reach: {closed} (mode 0700) does not let other users "
                              f"pass"), problem
    assert fix.startswith("set BATCHYARD_RUNTIME_DIR to a folder whose every parent other "
                          "users may pass"), fix
    assert not (closed / "runtime").exists()  # nothing made behind the closed folder
    assert str(tmp_path) not in sandbox.description  # the tenant's log gets no host path


@pytest.mark.usefixtures("no_bwrap")
def test_no_interpreter_the_job_uids_can_run_names_what_to_set(
        tmp_path: Path, closed_python: str, open_folder: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    needs_root()
    # A host without a system python3.11+: only the configured one, behind a 0700 folder.
    monkeypatch.setattr(jobroot, "SYSTEM_PYTHONS", ())
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    sandbox = detect_sandbox("none", closed_python, JobLimits(), data_dir, UID_BASE,
                             open_folder / "runtime")
    assert sandbox.level is IsolationLevel.UNAVAILABLE
    assert sandbox.report.problem == (
        f"BATCHYARD_SANDBOX=none; no interpreter the job uids can run ({closed_python}: the "
        f"job uid cannot execute {closed_python})")
    fix = sandbox.report.fix or ""
    assert "/usr/bin/python3.11" in fix and "set BATCHYARD_PYTHON to such an interpreter" in fix


@pytest.fixture
def unavailable_server(tmp_path: Path, no_bwrap: None) -> Iterator[Server]:
    needs_root()
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    server = Server(Settings(data_dir=tmp_path / "data", workers=1, sandbox="auto",
                             runtime_dir=closed / "runtime", sandbox_uid_base=UID_BASE,
                             operator_token=OPERATOR_TOKEN, job_network="open"))
    yield server
    server.db.dispose()


def test_where_jobs_cannot_be_isolated_each_attempt_fails_sandbox_unavailable_unstarted(
        unavailable_server: Server) -> None:
    server = unavailable_server
    marker = f"ran-{secrets.token_hex(4)}"
    result, logs = run_attempt(server.supervisor, claimed_attempt(
        f"import os\ndef main():\n    open('/tmp/{marker}', 'w').write('ran')\n"))
    assert result.outcome is AttemptOutcome.FAILED
    assert result.final_failure == SANDBOX_UNAVAILABLE  # no retry either
    assert result.exit_code is None and result.runtime_seconds == 0.0
    assert result.error == (
        "sandbox_unavailable: this server cannot run jobs in isolation at the moment, so "
        "the job was not started; the server's operator has been told why")
    assert not Path(f"/tmp/{marker}").exists()
    assert list(server.supervisor.work_root.iterdir()) == []  # not even extracted
    # The tenant's log names no host path: not the data folder, not the runtime folder.
    text = " ".join(record.message for record in logs)
    assert str(server.data_dir) not in text and "/closed" not in text
    assert logs[-1].message == f"batchyard: {result.error}"


def test_the_operators_health_view_says_why_and_what_to_change(
        unavailable_server: Server) -> None:
    public = health(unavailable_server, None)
    assert public["sandbox"] is None
    assert str(public["isolation"]).startswith("unavailable (jobs do not run")
    assert str(unavailable_server.data_dir) not in str(public)
    operator = health(unavailable_server, OPERATOR_TOKEN)
    sandbox = operator["sandbox"]
    assert isinstance(sandbox, dict)
    assert sandbox["level"] == "unavailable" and sandbox["jobs_run"] is False
    assert "does not let other users pass" in sandbox["problem"]
    assert sandbox["fix"].startswith("set BATCHYARD_RUNTIME_DIR")
    assert health(unavailable_server, "not-the-token")["sandbox"] is None


def test_at_the_rlimits_level_the_data_folder_and_its_files_stay_the_servers_alone(
        tmp_path: Path, no_bwrap: None) -> None:
    needs_root()
    if system_python() is None:
        pytest.skip("no system interpreter the job uids could run")
    server = Server(Settings(data_dir=tmp_path / "data", workers=1, sandbox="auto",
                             sandbox_uid_base=UID_BASE, operator_token=OPERATOR_TOKEN,
                             job_network="open"))
    try:
        assert server.supervisor.sandbox.level is IsolationLevel.RLIMITS
        assert os.stat(server.data_dir).st_mode & 0o777 == 0o700
        files = [entry for entry in server.data_dir.iterdir() if entry.is_file()]
        assert {entry.name for entry in files} >= {"batchyard.sqlite3", "secret.key",
                                                   "node.id"}
        assert all(entry.stat().st_mode & 0o077 == 0 for entry in files), files
        view = health(server, OPERATOR_TOKEN)["sandbox"]
        assert isinstance(view, dict) and view["jobs_run"] is True
        assert view["python"] == server.supervisor.python
        assert view["work_dir"] == str(server.supervisor.work_root)
        result, logs = run_attempt(server.supervisor, claimed_attempt(
            "import os\ndef main():\n    print(os.getuid())\n"))
        assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
        (printed,) = [r.message for r in logs if r.stream == "stdout"]
        assert UID_BASE <= int(printed) < UID_BASE + 10_000
    finally:
        server.db.dispose()
        forget(server.supervisor.sandbox)


@pytest.mark.usefixtures("no_bwrap")
def test_a_runtime_folder_under_a_parent_others_may_change_is_refused(
        tmp_path: Path, open_folder: Path) -> None:
    needs_root()
    shared = open_folder / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # writable by all, no sticky bit: our folder could be swapped
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    sandbox = detect_sandbox("none", job_python(None), JobLimits(), data_dir, UID_BASE,
                             shared / "runtime")
    assert sandbox.level is IsolationLevel.UNAVAILABLE
    assert f"{shared} (mode 0777, uid 0) may be changed by other users" in (
        sandbox.report.problem or "")


def test_when_bwrap_fails_its_words_reach_the_operator_not_the_tenants_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_root()
    if system_python() is None:
        pytest.skip("no system interpreter the job uids could run")
    # A bwrap that cannot create its namespaces (as in a container without them), saying
    # so with a host path in its message.
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "bwrap").write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: "
                                  "/srv/host-secret/path' >&2\nexit 1\n")
    os.chmod(broken / "bwrap", 0o755)
    monkeypatch.setenv("PATH", f"{broken}:/usr/bin:/bin")
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    sandbox = detect_sandbox("auto", job_python(None), JobLimits(), data_dir, UID_BASE)
    try:
        assert sandbox.level is IsolationLevel.RLIMITS
        assert sandbox.description.startswith("rlimits (no namespaces: bwrap cannot run here; ")
        assert "/srv/host-secret" not in sandbox.description
        assert any("bwrap cannot run here: bwrap: Creating new namespace failed: "
                   "/srv/host-secret/path" in note for note in sandbox.report.notes)
    finally:
        forget(sandbox)
