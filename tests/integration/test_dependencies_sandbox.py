"""A job's environment inside each sandbox level: importable, read-only, nothing else listed.

Each level runs inside a real ``Server`` (app.py's composition), whose supervisor installs
the requirements with the real uv from the real index and runs the job confined.
"""

from __future__ import annotations

import functools
import os
import shutil
import urllib.request
from collections.abc import Iterator

import pytest

from batchyard.app import Server
from batchyard.config import Settings
from batchyard.domain.attempts import ClaimedAttempt
from batchyard.domain.executions import AttemptOutcome
from batchyard.runtime.box.sandbox import SandboxUnavailable
from support.attempts import claimed_attempt, run_attempt, wait_for_warm

pytestmark = pytest.mark.timeout(180)

UID_BASE = 2_100_100_000
JOB = """
import os, six
def main():
    print('six', six.__version__)
    here = os.path.dirname(six.__file__)
    for path in [os.path.join(here, 'planted.py'), six.__file__]:
        try:
            open(path, 'a').close()
            print('WROTE', path)
        except OSError as exc:
            print('DENIED write', type(exc).__name__)
    try:
        print('LISTED', os.listdir(os.path.dirname(here)))
    except OSError as exc:
        print('DENIED list', type(exc).__name__)
"""


@functools.cache
def pypi_unreachable() -> str | None:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/six/", timeout=10) as answer:
            answer.read(1)
    except OSError as exc:
        return f"PyPI is not reachable from this machine: {exc}"
    return None


def attempt(requirements: str) -> ClaimedAttempt:
    return claimed_attempt(JOB, requirements=requirements, deadline_seconds=30)


@pytest.fixture(scope="module", params=["bubblewrap", "rlimits"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    reason = pypi_unreachable()
    if reason:
        pytest.skip(reason)
    if request.param == "bubblewrap" and shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed (Debian package bubblewrap)")
    if request.param == "rlimits" and os.geteuid() != 0:
        pytest.skip("the rlimits level switches to a job uid only when run as root")
    # The default interpreter, the data folder under pytest's 0700 temp root: at the
    # rlimits level the environments live in the server's runtime folder, outside it.
    base = tmp_path_factory.mktemp(f"deps-{request.param}")
    settings = Settings(data_dir=base / "data", workers=1,
                        sandbox="bubblewrap" if request.param == "bubblewrap" else "none",
                        sandbox_uid_base=UID_BASE,
                        # No nftables table for this range is left on the host.
                        job_network="open")
    try:
        built = Server(settings)
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap cannot run here: {exc.message}")
    try:
        if not built.supervisor.sandbox.runs_jobs:
            pytest.skip(f"no job runs here: {built.supervisor.sandbox.report.problem}")
        assert built.supervisor.sandbox.level.value == request.param
        yield built
    finally:
        built.supervisor.close()
        built.db.dispose()
        placement = built.supervisor.sandbox.placement
        if placement is not None and placement.runtime_dir is not None:
            shutil.rmtree(placement.runtime_dir, ignore_errors=True)


def test_the_job_imports_its_environment_which_it_cannot_change_nor_list(
        server: Server) -> None:
    result, logs = run_attempt(server.supervisor, attempt("six==1.16.0\n"))
    stdout = [r.message for r in logs if r.stream == "stdout"]
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    # A new file and the package's own module: EROFS or EACCES, by level and by file.
    assert stdout[0] == "six 1.16.0" and len(stdout) == 4, stdout
    assert all(line.startswith("DENIED write") for line in stdout[1:3]), stdout
    assert stdout[3] == "DENIED list PermissionError"  # other environments stay unnamed
    assert server.supervisor.environments is not None
    envs = server.supervisor.environments.root
    (environment,) = [p for p in envs.iterdir() if not p.name.startswith(".")]
    assert not (environment / "planted.py").exists()


def test_a_second_attempt_uses_the_cached_environment(server: Server) -> None:
    run_attempt(server.supervisor, attempt("six==1.16.0\n"))
    result, logs = run_attempt(server.supervisor, attempt("# again\nsix == 1.16.0\n"))
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    messages = [r.message for r in logs if r.stream == "log"]
    assert not any(m.startswith("pip: ") for m in messages), messages
    assert any("requirements: cached environment" in m for m in messages), messages


def _outcome(server: Server, claimed: ClaimedAttempt) -> tuple[bool, str]:
    result, logs = run_attempt(server.supervisor, claimed)
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    warm = any("(warm start" in r.message for r in logs)
    return warm, next(r.message for r in logs if r.stream == "stdout")


def test_warm_starts_once_hot_and_a_change_of_requirements_never_reaches_an_old_box(
        server: Server) -> None:
    old, new = "six==1.16.0\n", "six==1.17.0\n"
    run_attempt(server.supervisor, attempt(old))  # installed, or found cached
    wait_for_warm(server.supervisor, attempt(old))
    assert _outcome(server, attempt(old)) == (True, "six 1.16.0")
    warm = server.supervisor.warm
    assert warm is not None
    wait_for_warm(server.supervisor, attempt(old))
    # The job's requirements change: the old key's boxes are ready, and not used.
    old_key = server.supervisor.warm_key(attempt(old))
    assert warm.ready_count(old_key) >= 1
    assert _outcome(server, attempt(new)) == (False, "six 1.17.0")
    wait_for_warm(server.supervisor, attempt(new))
    assert _outcome(server, attempt(new)) == (True, "six 1.17.0")
    assert _outcome(server, attempt(old)) == (True, "six 1.16.0")
