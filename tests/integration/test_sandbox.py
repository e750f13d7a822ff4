"""The sandbox against real processes: escape attempts, resource limits, both levels,
each through cold and warm starts.

Each level runs inside a real ``Server`` (app.py's composition: a real data folder
with its SQLite file, secret key and operator token), whose supervisor runs the jobs.
bubblewrap tests skip (with the reason) where bwrap cannot run; the rlimits level
needs root to switch uids and an interpreter that uid can run.

Every test runs four times: at each level, on a server without warm starts (each attempt
spawned after its claim) and on one with them, where ``run`` first makes the attempt's
key hot, waits for a warm interpreter and checks that the attempt got one. The same
probes must find the same results: a warm box is the cold path's, byte for byte.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import shutil
import socket
import sqlite3
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from batchyard.app import Server, job_python
from batchyard.config import Settings
from batchyard.domain.attempts import AttemptResult, ClaimedAttempt, LogRecord
from batchyard.domain.executions import AttemptOutcome
from batchyard.runtime.box.jobroot import SYSTEM_PYTHONS
from batchyard.runtime.box.sandbox import (
    Confinement,
    IsolationLevel,
    JobLimits,
    SandboxUnavailable,
    explain_failure,
)
from batchyard.runtime.box.sandbox_setup import detect_sandbox
from support.attempts import wait_for_warm

pytestmark = pytest.mark.timeout(120)

# Test servers take uids from their own range so that "no process of a job uid is left"
# can be checked without seeing the uids of other servers on this machine.
UID_BASE = 2_100_000_000
UID_COUNT = 10_000
MEMORY_LIMIT = 256 * 1024 ** 2
PROCESS_LIMIT = 64
FILE_LIMIT = 1024 ** 2
DISK_LIMIT = 8 * 1024 ** 2
# This module's servers while they live, whose warm interpreters job_uid_processes ignores.
LIVE_SERVERS: list[Server] = []


def zipped(main_py: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", main_py)
    return buffer.getvalue()


def attempt(main_py: str, deadline: float = 20.0, execution_id: str | None = None) -> \
        ClaimedAttempt:
    return ClaimedAttempt(
        execution_id=execution_id or f"exe_{secrets.token_hex(4)}", account_id="acc_test",
        job_id="job_test", job_name="test", number=1, worker="test/0", revision=1,
        code=zipped(main_py), main_parameters=0, requirements=None, variables={},
        secret_values=(), deadline_seconds=deadline, timeout_seconds=deadline,
        params={"body": {}}, source="api", database_access=False, log_seq=0, log_bytes=0,
        log_truncated=False)


def run(server: Server, claimed: ClaimedAttempt) -> tuple[AttemptResult, list[LogRecord]]:
    warm = server.supervisor.warm
    if warm is not None:  # this attempt must start warm
        wait_for_warm(server.supervisor, claimed)
    stored: list[LogRecord] = []

    def writer(batch: list[LogRecord], first: int, used: int, truncated: bool) -> bool:
        stored.extend(batch)
        return True

    result = server.supervisor.run(claimed, writer)
    assert result.logs is not None
    stored.extend(result.logs.records)
    started_warm = any("(warm start" in record.message for record in stored)
    assert started_warm is (warm is not None), [record.message for record in stored[:4]]
    return result, stored


def stdout(logs: list[LogRecord]) -> list[str]:
    return [record.message for record in logs if record.stream == "stdout"]


def job_uid_processes() -> list[int]:
    """Processes running under any uid of the test servers' range, but for the ready warm
    interpreters of this module's servers (spawned ahead of attempts to come, under uids of
    their own): asked a few times, as a box spawned during the scan joins its pool just
    after it."""
    for _ in range(20):
        found = set(_job_uid_processes())
        for server in LIVE_SERVERS:
            found -= server.supervisor.warm_pids()
        if not found:
            return []
        time.sleep(0.1)
    return sorted(found)


def _job_uid_processes() -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                uid = os.stat(f"/proc/{name}").st_uid
                state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if UID_BASE <= uid < UID_BASE + UID_COUNT and state != "Z":
                found.append(int(name))
    return found


def system_python() -> str | None:
    """An interpreter outside any 0700 folder that the rlimits level falls back to."""
    return next((path for path in SYSTEM_PYTHONS if os.path.isfile(path)), None)


def forget_runtime_folder(server: Server) -> None:
    """The rlimits level's runtime folder lies outside the data folder (by default under
    /var/lib/batchyard): take it away with the test's server."""
    placement = server.supervisor.sandbox.placement
    if placement is not None and placement.runtime_dir is not None:
        shutil.rmtree(placement.runtime_dir, ignore_errors=True)


def _server(base: Path, mode: str, python: str | None, warm: bool = False) -> Server:
    # A real data folder: 0700, a migrated SQLite file, the secret key and the token.
    settings = Settings(data_dir=base / "data", workers=1, sandbox=mode,  # type: ignore[arg-type]
                        python=python, job_memory_bytes=MEMORY_LIMIT,
                        job_max_processes=PROCESS_LIMIT, job_max_file_bytes=FILE_LIMIT,
                        sandbox_uid_base=UID_BASE, kill_grace_seconds=0.3,
                        job_max_disk_bytes=DISK_LIMIT,
                        # The network guard has its own tests (test_network_guard.py);
                        # here the shared network stays usable, and no table is left.
                        job_network="open", warm_pool_size=4 if warm else 0)
    server = Server(settings)
    LIVE_SERVERS.append(server)
    return server


def _bubblewrap_server(base: Path, warm: bool) -> Iterator[Server]:
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed (Debian package bubblewrap)")
    try:
        server = _server(base, "bubblewrap", None, warm)
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap cannot run here: {exc.message}")
    yield server
    server.supervisor.close()
    LIVE_SERVERS.remove(server)
    server.db.dispose()


def _rlimits_server(base: Path, warm: bool) -> Iterator[Server]:
    if os.geteuid() != 0:
        pytest.skip("the rlimits level switches to a job uid only when the server runs as root")
    # The data folder under pytest's 0700 temp root and the default interpreter (a pyenv
    # build under a 0700 /root on the project's machine): the server finds its way around
    # both (a runtime folder of its own, a system interpreter), or runs no job at all.
    server = _server(base, "none", None, warm)
    try:
        sandbox = server.supervisor.sandbox
        if not sandbox.runs_jobs and system_python() is None:
            pytest.skip(f"no interpreter the job uids can run here: {sandbox.report.problem}")
        assert sandbox.per_attempt_uid, (sandbox.description, sandbox.report)
        yield server
    finally:
        server.supervisor.close()
        LIVE_SERVERS.remove(server)
        server.db.dispose()
        forget_runtime_folder(server)


@pytest.fixture(scope="module")
def bubblewrap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _bubblewrap_server(tmp_path_factory.mktemp("bwrap"), warm=False)


@pytest.fixture(scope="module")
def bubblewrap_warm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _bubblewrap_server(tmp_path_factory.mktemp("bwrap-warm"), warm=True)


@pytest.fixture(scope="module")
def rlimits_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _rlimits_server(tmp_path_factory.mktemp("rlimits"), warm=False)


@pytest.fixture(scope="module")
def rlimits_warm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _rlimits_server(tmp_path_factory.mktemp("rlimits-warm"), warm=True)


@pytest.fixture(params=["bubblewrap", "bubblewrap_warm", "rlimits", "rlimits_warm"])
def server(request: pytest.FixtureRequest) -> Server:
    chosen: Server = request.getfixturevalue(f"{request.param}_server")
    return chosen


def test_a_trivial_job_runs_and_its_first_log_line_names_the_level(server: Server) -> None:
    result, logs = run(server, attempt(
        "import os\ndef main():\n    open(os.path.join(os.environ['OUTPUT_DIR'], 'r.txt'), 'w')"
        ".write('ok')\n    print('hello', os.getuid())\n"))
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    level = server.supervisor.sandbox.level
    assert f"isolation: {level.value} (" in logs[0].message
    assert [(f.name, f.content) for f in result.artifacts] == [("r.txt", b"ok")]
    (line,) = stdout(logs)
    if server.supervisor.sandbox.per_attempt_uid:
        assert UID_BASE <= int(line.split()[1]) < UID_BASE + UID_COUNT


def test_health_reports_the_isolation_level(server: Server) -> None:
    async def get() -> httpx.Response:
        # No lifespan: the worker pool stays stopped; the supervisor is driven by the tests.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app),
                                     base_url="http://test") as client:
            return await client.get("/api/v1/health")

    answer = asyncio.run(get())
    assert answer.status_code == 200
    isolation = answer.json()["isolation"]
    assert isolation == server.supervisor.sandbox.description
    assert isolation.startswith(server.supervisor.sandbox.level.value)


def test_the_database_and_the_data_folder_are_out_of_reach(server: Server) -> None:
    data_dir = server.data_dir
    database = data_dir / "batchyard.sqlite3"
    assert sqlite3.connect(database).execute("select count(*) from accounts").fetchone()
    targets = [database, data_dir / "secret.key", data_dir / "operator.token",
               data_dir / "node.id", data_dir, server.supervisor.work_root]
    result, logs = run(server, attempt(f"""
import os
def main():
    for path in {[str(t) for t in targets]!r}:
        try:
            found = os.listdir(path) if os.path.isdir(path) else open(path, 'rb').read(16)
            print('READ', path, found)
        except OSError as exc:
            print('DENIED', path, type(exc).__name__)
"""))
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    lines = stdout(logs)
    assert len(lines) == len(targets) and all(line.startswith("DENIED") for line in lines), lines


def test_another_running_attempt_is_invisible(server: Server) -> None:
    other_id = f"exe_other_{secrets.token_hex(3)}"
    other = threading.Thread(target=run, args=(server, attempt(
        "import time\ndef main():\n    open('secret.txt', 'w').write('s3cret')\n"
        "    time.sleep(60)\n", deadline=60, execution_id=other_id)))
    other.start()
    try:
        work_root = server.supervisor.work_root
        deadline = time.monotonic() + 10
        while not (folders := list(work_root.glob(f"{other_id}-*/code/secret.txt"))):
            assert time.monotonic() < deadline, "the other attempt did not start"
            time.sleep(0.05)
        code_dir = folders[0].parent
        result, logs = run(server, attempt(f"""
import os
def main():
    for path in [{str(code_dir)!r}, {str(code_dir / "secret.txt")!r}, {str(work_root)!r}]:
        try:
            found = os.listdir(path) if os.path.isdir(path) else open(path).read()
            print('READ', path, found)
        except OSError as exc:
            print('DENIED', path, type(exc).__name__)
    for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
        try:
            cwd = os.readlink(f'/proc/{{pid}}/cwd')
        except OSError:
            continue
        if cwd != os.getcwd() and cwd.endswith('/code'):
            print('READ cwd of', pid, cwd, os.listdir(f'/proc/{{pid}}/cwd'))
"""))
        assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
        lines = stdout(logs)
        assert len(lines) == 3 and all(line.startswith("DENIED") for line in lines), lines
    finally:
        server.supervisor.stop(other_id, AttemptOutcome.CANCELLED, "test over")
        other.join(10)
    assert not other.is_alive()


def test_the_server_process_and_its_environment_are_hidden(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHYARD_OPERATOR_TOKEN", "op-token-value")
    result, logs = run(server, attempt(f"""
import os
def main():
    print('ENV', sorted(os.environ))
    pids = [p for p in os.listdir('/proc') if p.isdigit()]
    print('SEES_SERVER', {str(os.getpid())!r} in pids and
          open('/proc/{os.getpid()}/cmdline', 'rb').read() == {Path('/proc/self/cmdline')
                                                              .read_bytes()!r})
    for pid in pids:
        try:
            environ = open(f'/proc/{{pid}}/environ', 'rb').read()
        except OSError:
            continue
        if b'BATCHYARD' in environ or b'op-token-value' in environ:
            print('READ environ of', pid)
"""))
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    lines = stdout(logs)
    assert "BATCHYARD" not in lines[0] and "OUTPUT_DIR" in lines[0]
    assert not any(line.startswith("READ") for line in lines), lines
    if server.supervisor.sandbox.level is IsolationLevel.BUBBLEWRAP:
        # Its own PID namespace: the server's pid is not there at all.
        assert lines[1] == "SEES_SERVER False"


def test_nothing_outside_its_folders_is_writable(server: Server) -> None:
    marker = f"escape-{secrets.token_hex(4)}"
    data_dir = server.data_dir
    targets = [f"/usr/{marker}", f"/etc/{marker}", str(data_dir / marker),
               str(server.supervisor.work_root / marker), str(data_dir / "batchyard.sqlite3"),
               f"/root/{marker}", f"/home/{marker}"]
    if server.supervisor.sandbox.level is IsolationLevel.BUBBLEWRAP:
        # Without a mount namespace the host's world-writable /tmp, /var/tmp and /dev/shm
        # stay writable, as for any unprivileged user (see runtime/box/sandbox.py).
        targets += [f"/var/tmp/{marker}", f"/run/{marker}"]
    result, logs = run(server, attempt(f"""
import os
def main():
    for path in {targets!r}:
        try:
            with open(path, 'ab') as handle:
                handle.write(b'x')
            print('WROTE', path)
        except OSError as exc:
            print('DENIED', path, type(exc).__name__)
    open(os.path.join(os.environ['TMPDIR'], 'scratch'), 'w').write('fine')
    open('in-code-folder', 'w').write('fine')
"""))
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    lines = stdout(logs)
    assert len(lines) == len(targets) and all(line.startswith("DENIED") for line in lines), lines
    assert not any(Path(path).exists() for path in targets if marker in path)


def test_a_fork_bomb_is_bounded_and_the_host_keeps_running(server: Server) -> None:
    started = time.monotonic()
    result, _ = run(server, attempt("""
import os, time
def main():
    leader = os.getpid()
    while True:
        try:
            os.fork()
        except BlockingIOError:
            if os.getpid() == leader:
                raise
            time.sleep(60)
"""))
    assert result.outcome is AttemptOutcome.FAILED
    assert result.error is not None and result.error.startswith(
        "too_many_processes: BlockingIOError"), result.error
    assert time.monotonic() - started < 20
    assert job_uid_processes() == []
    # The host still forks.
    assert os.waitpid(os.spawnv(os.P_NOWAIT, "/bin/true", ["true"]), 0)[1] == 0


def test_allocating_four_times_the_memory_limit_fails_with_out_of_memory(
        server: Server) -> None:
    result, _ = run(server, attempt(
        f"def main():\n    block = bytearray({4 * MEMORY_LIMIT})\n    print(len(block))\n"))
    assert result.outcome is AttemptOutcome.FAILED
    assert result.error is not None and result.error.startswith(
        "out_of_memory: MemoryError"), result.error


def test_a_file_over_the_size_limit_fails_with_file_too_large(server: Server) -> None:
    result, _ = run(server, attempt(
        "import os\ndef main():\n    with open(os.path.join(os.environ['OUTPUT_DIR'], 'big'),"
        f" 'wb') as handle:\n        handle.write(b'x' * {2 * FILE_LIMIT})\n"))
    assert result.outcome is AttemptOutcome.FAILED
    assert result.error is not None and result.error.startswith("file_too_large: OSError: "
                                                                "[Errno 27]"), result.error


def test_setsid_and_ignoring_sigterm_past_the_deadline_is_still_killed(server: Server) -> None:
    started = time.monotonic()
    result, _ = run(server, attempt("""
import os, signal, time
def main():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(300)
        os._exit(0)
    time.sleep(300)
""", deadline=1.5))
    assert result.outcome is AttemptOutcome.TIMED_OUT
    assert time.monotonic() - started < 8
    assert job_uid_processes() == []


def test_the_limits_cannot_be_raised_by_the_job(server: Server) -> None:
    result, logs = run(server, attempt("""
import resource
def main():
    print(resource.getrlimit(resource.RLIMIT_AS))
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
"""))
    assert result.outcome is AttemptOutcome.FAILED
    assert stdout(logs) == [str((MEMORY_LIMIT, MEMORY_LIMIT))]
    assert result.error is not None and "ValueError" in result.error


def test_bubblewrap_required_but_missing_refuses_to_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="bwrap is not installed"):
        detect_sandbox("bubblewrap", job_python(None), JobLimits(), tmp_path, UID_BASE)


def test_limit_reasons_and_bwrap_exit_statuses() -> None:
    assert explain_failure("MemoryError: ", 1) == "out_of_memory: MemoryError: "
    assert explain_failure("killed by signal SIGXFSZ", -25).startswith("file_too_large")
    assert explain_failure("RuntimeError: can't start new thread", 1).startswith(
        "too_many_processes")
    assert explain_failure("ValueError: nope", 1) == "ValueError: nope"
    confined = Confinement((), "", "-", bubblewrap=True)
    assert (confined.exit_status(137), confined.exit_status(3)) == (-9, 3)
    assert Confinement((), "", "-", bubblewrap=False).exit_status(137) == 137


def test_the_network_and_tls_roots_stay_usable(server: Server) -> None:
    # Jobs call third-party APIs: the network namespace is shared, the CA store is there.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.sendall(b"pong")

    serving = threading.Thread(target=answer, daemon=True)
    serving.start()
    try:
        result, logs = run(server, attempt(f"""
import socket, ssl
def main():
    with socket.create_connection(('localhost', {port}), timeout=5) as connection:
        print(connection.recv(4).decode())
    print(ssl.create_default_context().cert_store_stats()['x509_ca'] > 0)
"""))
    finally:
        listener.close()
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    assert stdout(logs) == ["pong", "True"]


def test_common_library_needs_work_as_the_job_uid(server: Server) -> None:
    result, logs = run(server, attempt("""
import getpass, multiprocessing, os, pathlib, tempfile
def main():
    with tempfile.NamedTemporaryFile() as handle:
        print(handle.name.startswith(os.environ['TMPDIR']))
    print(bool(getpass.getuser()), pathlib.Path.home().is_dir())
    lock = multiprocessing.Lock()
    with lock:
        print('locked')
"""))
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    assert stdout(logs) == ["True", "True True", "locked"]


def test_disk_hidden_in_deleted_open_files_is_measured_and_the_job_killed(
        server: Server) -> None:
    # Files under the file-size limit, each deleted at once but kept open: no folder
    # listing shows them, the disk holds them until the job ends.
    result, logs = run(server, attempt("""
import os, time
def main():
    held = []
    for n in range(40):
        path = os.path.join(os.environ["OUTPUT_DIR"], f"part{n}")
        handle = open(path, "wb")
        os.unlink(path)
        handle.write(os.urandom(512 * 1024))
        handle.flush()
        held.append(handle)
        time.sleep(0.05)
    time.sleep(30)
""", deadline=30))
    assert result.outcome is AttemptOutcome.FAILED, (result.error, logs)
    assert result.error is not None and result.error.startswith("disk_limit_exceeded:")
    assert result.runtime_seconds < 10


def test_a_detached_process_holding_deleted_files_is_still_measured(server: Server) -> None:
    # A double fork leaves the job's process tree (under rlimits there is no PID namespace
    # to keep it in); the attempt's uid still says whose it is.
    result, logs = run(server, attempt("""
import os, time
def main():
    if os.fork() == 0:
        if os.fork() == 0:
            held = []
            for n in range(40):
                path = os.path.join(os.environ["OUTPUT_DIR"], f"part{n}")
                handle = open(path, "wb")
                os.unlink(path)
                handle.write(os.urandom(512 * 1024))
                handle.flush()
                held.append(handle)
                time.sleep(0.05)
            time.sleep(30)
        os._exit(0)
    time.sleep(30)
""", deadline=30))
    assert result.outcome is AttemptOutcome.FAILED, (result.error, logs)
    assert result.error is not None and result.error.startswith("disk_limit_exceeded:")
    assert result.runtime_seconds < 10

