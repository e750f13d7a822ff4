"""Escape attempts, each a real job run by a real ``batchyard serve``, at both isolation levels.

Every job *tries* the forbidden thing and writes what happened to ``result.json`` in its
output folder ("DENIED <error>" or "DONE <what it got>"); the tests read that artifact
and check the host side too, so an attempt that failed for an unrelated reason (a typo,
a missing path) cannot pass for a refusal. After each test the server still answers its
health check and no process of a job uid is left; the last test runs a trivial job.

One module-scoped server per isolation level: bubblewrap (the default where it runs) and
the rlimits launcher (``BATCHYARD_SANDBOX=auto`` on a PATH without bwrap, root: a uid per
attempt), whose data folder lies under a 0700 folder and whose configured interpreter is
the default one (a pyenv build under a 0700 /root on the project's machine): it finds its
own way (a runtime folder, a system interpreter) or runs no job at all. Both run with low
limits (256 MiB of memory, 64 processes, a 1 MiB log cap) so that each attempt ends in
seconds.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import (
    OPERATOR_TOKEN,
    Account,
    AccountFactory,
    ServerProcess,
    deploy_job,
    invoke,
    is_ready_warm_interpreter,
    lines_of,
    path_without,
    processes_of,
    read_logs,
    wait_for,
    wait_until,
)

from batchyard.runtime.box.jobroot import SYSTEM_PYTHONS
from batchyard.runtime.box.netguard import remove_network_guard

pytestmark = pytest.mark.timeout(60)

MEMORY_LIMIT = 256 * 1024 ** 2
PROCESS_LIMIT = 64
LOG_CAP = 1024 ** 2
# Jobs of these servers take uids from a range of their own: "no process of a job uid is
# left" then sees neither the integration tests' servers nor a developer's.
UID_BASE = 2_200_000_000
UID_COUNT = 10_000
# The server's own variables: none of them, nor the operator token, may reach a job.
CANARY = f"canary-{secrets.token_hex(8)}"
FILE_TOKEN = f"byo_file-token-{secrets.token_hex(8)}"
TIMEOUT_MINUTES = 0.05  # 3 s
MAX_SERVER_RSS = 300 * 1024 ** 2

# Shared by every job below (each is one main.py): try an action, record the outcome.
RECORDER = textwrap.dedent("""\
    import json
    import os

    RESULTS = {}

    def attempt(name, action):
        try:
            value = action()
        except Exception as exc:
            RESULTS[name] = f"DENIED {type(exc).__name__}: {exc}"[:300]
        else:
            RESULTS[name] = f"DONE {value!r}"[:300]

    def report():
        with open(os.path.join(os.environ["OUTPUT_DIR"], "result.json"), "w") as handle:
            json.dump(RESULTS, handle)
        print("RESULTS", json.dumps(RESULTS))

    def read(path):
        if os.path.isdir(path):
            return os.listdir(path)
        with open(path, "rb") as handle:
            return handle.read(4096)
    """)

READS_PATHS = RECORDER + textwrap.dedent("""\
    import sqlite3

    def main(event):
        for path in event["body"]["paths"]:
            attempt(path, lambda: read(path))
        database = event["body"]["database"]
        attempt("sqlite", lambda: sqlite3.connect(f"file:{database}?mode=ro", uri=True)
                .execute("select name from accounts").fetchall())
        report()
    """)

HOLDS_A_SECRET = textwrap.dedent("""\
    import os
    import time

    def main(event):
        with open("secret.txt", "w") as handle:
            handle.write(event["body"]["secret"])
        print("cwd", os.getcwd(), flush=True)
        time.sleep(30)
    """)

LOOKS_FOR_THE_OTHER_JOB = RECORDER + textwrap.dedent("""\
    def main(event):
        body = event["body"]
        for path in (body["code"], body["secret_file"], body["attempt_root"], body["work"]):
            attempt(path, lambda: read(path))
        # Through /proc: another job's process and its cwd and root links, which lead into
        # its folder whatever the mount tree.
        for pid in [name for name in os.listdir("/proc") if name.isdigit()]:
            try:
                is_job = b"_batchyard_boot" in read(f"/proc/{pid}/cmdline")
            except OSError:
                continue
            if is_job and pid != str(os.getpid()):
                for link in ("cwd", "root"):
                    attempt(f"/proc/{pid}/{link}", lambda: read(f"/proc/{pid}/{link}"))
        report()
    """)

LOOKS_AT_THE_SERVER_PROCESS = RECORDER + textwrap.dedent("""\
    def main(event):
        body = event["body"]
        pid = body["pid"]
        attempt("list", lambda: str(pid) in os.listdir("/proc") or
                (_ for _ in ()).throw(FileNotFoundError("not in /proc")))
        for name in ("cmdline", "environ", "cwd", "root", "fd", "maps"):
            attempt(name, lambda: read(f"/proc/{pid}/{name}"))
        # Any process whose environment shows the server's variables or its token.
        for other in [name for name in os.listdir("/proc") if name.isdigit()]:
            try:
                environ = open(f"/proc/{other}/environ", "rb").read()
            except OSError:
                continue
            if any(word.encode() in environ for word in body["words"]):
                RESULTS[f"environ of {other}"] = "DONE found the server's variables"
        report()
    """)

LOOKS_FOR_SECRETS = RECORDER + textwrap.dedent("""\
    def main(event):
        body = event["body"]
        RESULTS["environ"] = dict(os.environ)
        for path in body["paths"]:
            attempt(path, lambda: read(path))
        report()
    """)

WRITES_EVERYWHERE = RECORDER + textwrap.dedent("""\
    def create(path):
        with open(path, "x") as handle:
            handle.write("escaped")
        return "created"

    def open_for_writing(path):
        # Opened, never written: a real write would damage the server's database.
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        return "opened for writing"

    def main(event):
        for path in event["body"]["create"]:
            attempt(path, lambda: create(path))
        for path in event["body"]["open"]:
            attempt(path, lambda: open_for_writing(path))
        attempt("own folders", lambda: [create(os.path.join(folder, "fine.txt"))
                                        for folder in (os.getcwd(), os.environ["TMPDIR"])])
        report()
    """)

LINKS_FILES_INTO_ITS_OUTPUT = RECORDER + textwrap.dedent("""\
    def main(event):
        output = os.environ["OUTPUT_DIR"]
        for number, path in enumerate(event["body"]["paths"]):
            attempt(path, lambda: os.link(path, os.path.join(output, f"server-{number}")))
        with open(os.path.join(output, "own.txt"), "w") as handle:
            handle.write("mine")
        attempt("own link", lambda: os.link(os.path.join(output, "own.txt"),
                                            os.path.join(output, "own-link.txt")))
        report()
    """)

CALLS_THE_SERVERS_API = RECORDER + textwrap.dedent("""\
    import socket
    import urllib.error
    import urllib.request

    def status(url):
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def main(event):
        for path in event["body"]["paths"]:
            attempt(path, lambda: status(event["body"]["base_url"] + path))
        for host, port in event["body"]["services"]:
            attempt(f"{host}:{port}", lambda: socket.create_connection((host, port),
                                                                        timeout=5).close())
        report()
    """)

FORK_BOMB = textwrap.dedent("""\
    import os
    import time

    def main(event):
        leader = os.getpid()
        forked = 0
        while True:
            try:
                pid = os.fork()
            except BlockingIOError:
                if os.getpid() != leader:
                    time.sleep(60)
                    os._exit(0)
                break
            if pid == 0:
                continue
            forked += 1
        print("limit reached after", forked, "forks", flush=True)
        # Keep every process alive while the other job runs, then fail with the reason.
        time.sleep(event["body"]["hold_seconds"])
        os.fork()
    """)

SPAWNS_A_PROCESS = textwrap.dedent("""\
    import subprocess

    def main():
        done = subprocess.run(["/bin/sh", "-c", "echo spawned"], capture_output=True,
                              check=True, text=True)
        print(done.stdout.strip())
    """)

ALLOCATES_MEMORY = textwrap.dedent("""\
    def main(event):
        chunks = []
        wanted = event["body"]["bytes"]
        try:
            while len(chunks) * (16 << 20) < wanted:
                chunk = bytearray(16 << 20)
                chunk[::4096] = b"x" * len(range(0, len(chunk), 4096))
                chunks.append(chunk)
        except MemoryError:
            count = len(chunks)
            chunks.clear()
            print("allocated", count * 16, "MiB before MemoryError", flush=True)
            raise
        print("allocated all", len(chunks) * 16, "MiB")
    """)

PRINTS_A_GIGABYTE = textwrap.dedent("""\
    import os
    import sys

    def main(event):
        block = ("y" * 4095 + "\\n") * 256
        written = 0
        for _ in range(event["body"]["mebibytes"]):
            written += sys.stdout.write(block)
        sys.stdout.flush()
        print("all printed")
        with open(os.path.join(os.environ["OUTPUT_DIR"], "printed.txt"), "w") as handle:
            handle.write(str(written))
    """)

LEAVES_A_STUBBORN_SESSION = textwrap.dedent("""\
    import signal
    import subprocess
    import sys
    import time

    STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "time.sleep(300)")

    def main(event):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        marker = event["body"]["marker"]
        helper = subprocess.Popen([sys.executable, "-c", STUBBORN, marker],
                                  start_new_session=True)
        print("helper started", helper.pid, flush=True)
        time.sleep(300)
    """)


CLEANS_UP_ON_SIGTERM = textwrap.dedent("""\
    import os
    import signal
    import time

    def main():
        def on_term(signum, frame):
            with open(os.path.join(os.environ["OUTPUT_DIR"], "cleanup.txt"), "w") as handle:
                handle.write("interrupted at item 1")
            raise SystemExit(3)

        signal.signal(signal.SIGTERM, on_term)
        time.sleep(60)
    """)


# --- servers ---------------------------------------------------------------------------
def _level_env(level: str, base: Path) -> dict[str, str]:
    env = {"BATCHYARD_JOB_MEMORY_BYTES": str(MEMORY_LIMIT),
           "BATCHYARD_JOB_MAX_PROCESSES": str(PROCESS_LIMIT),
           "BATCHYARD_LOG_CAP_BYTES": str(LOG_CAP),
           "BATCHYARD_SANDBOX_UID_BASE": str(UID_BASE),
           "BATCHYARD_E2E_CANARY": CANARY}
    if level == "bubblewrap":
        env["BATCHYARD_SANDBOX"] = "bubblewrap"
    else:
        env.update(BATCHYARD_SANDBOX="auto", PATH=path_without(base / "bin", "bwrap"))
    return env


@pytest.fixture(scope="module", params=["bubblewrap", "rlimits"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """Overrides the e2e tier's module server: one per isolation level, low limits."""
    level: str = request.param
    if level == "bubblewrap" and shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed (Debian package bubblewrap)")
    if os.geteuid() != 0:
        pytest.skip("checked against a server running as root, which gives each attempt "
                    "a uid of its own")
    base = Path(tempfile.mkdtemp(prefix=f"batchyard-escapes-{level}-"))  # 0700
    data_dir = base / "data"
    data_dir.mkdir(mode=0o700)
    # A token file left by an earlier start without BATCHYARD_OPERATOR_TOKEN.
    (data_dir / "operator.token").write_text(FILE_TOKEN)
    os.chmod(data_dir / "operator.token", 0o600)
    process = ServerProcess(base, data_dir=data_dir, workers=3, env=_level_env(level, base))
    runtime_dir = None
    try:
        process.start()
        view = process.sandbox()
        runtime_dir = view["runtime_dir"]
        if not view["jobs_run"] and not any(map(os.path.isfile, SYSTEM_PYTHONS)):
            pytest.skip(f"no job runs here: {view['problem']}")
        health = httpx.get(f"{process.base_url}/api/v1/health", timeout=10).json()
        assert health["isolation"].startswith(f"{level} ("), health
        assert f"uid {UID_BASE}+n per attempt" in health["isolation"], health
        yield process
    finally:
        process.stop()
        shutil.rmtree(base, ignore_errors=True)
        if runtime_dir:
            shutil.rmtree(runtime_dir, ignore_errors=True)
        # The network guard's table outlives its server by design (runtime/box/netguard.py).
        remove_network_guard((UID_BASE, UID_BASE + UID_COUNT - 1))


@pytest.fixture
def level(server: ServerProcess) -> str:
    return server.env["BATCHYARD_SANDBOX"].replace("auto", "rlimits")


def job_uid_processes() -> list[int]:
    """Processes of the job uids, but for the ready warm interpreters (no job code)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                uid = os.stat(f"/proc/{name}").st_uid
                state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if UID_BASE <= uid < UID_BASE + UID_COUNT and state != "Z" \
                    and not is_ready_warm_interpreter(int(name)):
                found.append(int(name))
    return found


@pytest.fixture(autouse=True)
def _platform_survives(server: ServerProcess) -> Iterator[None]:
    """After every attempt: the server runs, answers, and no job process is left."""
    yield
    assert server.running, server.output()[-3000:]
    assert httpx.get(f"{server.base_url}/api/v1/health", timeout=10).status_code == 200
    wait_until(lambda: not job_uid_processes(), 5,
               lambda: f"job processes left running: {job_uid_processes()}")


# --- helpers ---------------------------------------------------------------------------
def run(account: Account, main_py: str, body: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None, timeout: float = 20) -> dict[str, Any]:
    job_id = deploy_job(account, main_py, settings=settings)
    return wait_for(account.owner, invoke(account.owner, job_id, body or {}), timeout=timeout)


def results(account: Account, execution: dict[str, Any]) -> dict[str, Any]:
    """What the job recorded; its run must have succeeded (it caught every refusal)."""
    assert execution["status"] == "succeeded", (
        execution, lines_of(read_logs(account.owner, execution["id"]), "stderr"))
    download = account.owner.get(f"/api/v1/executions/{execution['id']}/artifacts/result.json")
    assert download.status_code == 200, download.text
    recorded: dict[str, Any] = download.json()
    return recorded


def escaped(recorded: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in recorded.items()
            if not (isinstance(value, str) and value.startswith("DENIED"))}


def all_text(account: Account, execution_id: str) -> str:
    """Everything the job left readable: its log lines (with their data) and artifacts."""
    logs = read_logs(account.owner, execution_id, limit=10000)
    text = json.dumps(logs)
    listed = account.owner.get(f"/api/v1/executions/{execution_id}/artifacts").json()["items"]
    for item in listed:
        text += account.owner.get(
            f"/api/v1/executions/{execution_id}/artifacts/{item['name']}").text
    return text


def server_pid(server: ServerProcess) -> int:
    assert server.process is not None
    return server.process.pid


# --- 1. the database and the data folder -----------------------------------------------
def test_the_servers_database_and_data_folder_cannot_be_read_by_absolute_path(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()
    data_dir = server.data_dir.resolve()
    database = data_dir / "batchyard.sqlite3"
    paths = [database, database.with_name("batchyard.sqlite3-wal"), data_dir / "secret.key",
             data_dir / "node.id", data_dir / "operator.token", data_dir,
             Path(server.sandbox()["work_dir"])]
    # They exist on the host: a refusal below is not a wrong path.
    assert all(path.exists() for path in paths), [p for p in paths if not p.exists()]

    execution = run(account, READS_PATHS, {"paths": [str(p) for p in paths],
                                           "database": str(database)})

    recorded = results(account, execution)
    assert set(recorded) == {*map(str, paths), "sqlite"}
    assert escaped(recorded) == {}
    text = all_text(account, execution["id"])
    assert FILE_TOKEN not in text
    assert (data_dir / "secret.key").read_text().strip() not in text


# --- 2. another job's working folder while it runs -------------------------------------
def test_a_running_jobs_folder_is_out_of_reach_of_another_accounts_job(
        server: ServerProcess, make_account: AccountFactory) -> None:
    holder, intruder = make_account(), make_account()
    secret = f"folder-secret-{secrets.token_hex(6)}"
    held = invoke(holder.owner, deploy_job(holder, HOLDS_A_SECRET), {"secret": secret})
    try:
        line = wait_until(lambda: [text for text in lines_of(
            read_logs(holder.owner, held), "stdout") if text.startswith("cwd ")], 10,
            "the holding job did not report its folder")[0]
        code = Path(line.removeprefix("cwd "))
        # The host sees it: the folder and its secret are there while the intruder looks.
        assert (code / "secret.txt").read_text() == secret

        execution = run(intruder, LOOKS_FOR_THE_OTHER_JOB, {
            "code": str(code), "secret_file": str(code / "secret.txt"),
            "attempt_root": str(code.parent), "work": str(code.parent.parent)})

        recorded = results(intruder, execution)
        assert escaped(recorded) == {}, recorded
        assert {str(code), str(code / "secret.txt"), str(code.parent)} <= set(recorded)
        assert secret not in all_text(intruder, execution["id"])
        assert get_status(holder, held) == "running"
    finally:
        holder.owner.post(f"/api/v1/executions/{held}/cancel")
    assert wait_for(holder.owner, held, timeout=10)["status"] == "cancelled"


def get_status(account: Account, execution_id: str) -> str:
    response = account.owner.get(f"/api/v1/executions/{execution_id}")
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


# --- 3. the server's process -----------------------------------------------------------
def test_the_server_process_its_command_line_and_environment_are_hidden(
        server: ServerProcess, make_account: AccountFactory, level: str) -> None:
    account = make_account()
    pid = server_pid(server)
    host_cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"serve" in host_cmdline and b"BATCHYARD_E2E_CANARY" in Path(
        f"/proc/{pid}/environ").read_bytes()

    execution = run(account, LOOKS_AT_THE_SERVER_PROCESS, {
        "pid": pid, "words": ["BATCHYARD_", CANARY, OPERATOR_TOKEN]})

    recorded = results(account, execution)
    leaked = escaped(recorded)
    if level == "bubblewrap":
        # Its own PID namespace: the server is not there at all.
        assert leaked == {}, recorded
        assert recorded["list"].startswith("DENIED FileNotFoundError"), recorded
    else:
        # One PID namespace: the server is listed and its command line (no secret in it)
        # is world-readable, as for any process on the host; all else is refused.
        assert set(leaked) == {"list", "cmdline"}, recorded
    text = all_text(account, execution["id"])
    assert OPERATOR_TOKEN not in text and CANARY not in text


# --- 4. BATCHYARD_* variables and the operator token -----------------------------------
def test_no_server_variable_nor_operator_token_reaches_the_job(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()
    data_dir = server.data_dir.resolve()
    token_file, key_file = data_dir / "operator.token", data_dir / "secret.key"
    assert token_file.read_text() == FILE_TOKEN and key_file.exists()

    execution = run(account, LOOKS_FOR_SECRETS, {"paths": [str(token_file), str(key_file)]})

    recorded = results(account, execution)
    environ: dict[str, str] = recorded.pop("environ")
    assert "OUTPUT_DIR" in environ  # it did read its environment
    assert [key for key in environ if key.startswith("BATCHYARD")] == []
    everything = json.dumps(environ) + all_text(account, execution["id"])
    for value in (OPERATOR_TOKEN, FILE_TOKEN, CANARY):
        assert value not in everything
    assert escaped(recorded) == {}, recorded


# --- 5. writing outside its own folders ------------------------------------------------
def test_nothing_outside_the_jobs_own_folders_is_writable(
        server: ServerProcess, make_account: AccountFactory, level: str) -> None:
    account = make_account()
    marker = f"escape-{secrets.token_hex(5)}"
    data_dir = server.data_dir.resolve()
    create = [f"/usr/{marker}", f"/usr/lib/{marker}", f"/etc/{marker}", f"/{marker}",
              str(data_dir / marker), str(Path(server.sandbox()["work_dir"]) / marker),
              f"{Path.home()}/{marker}", str(server.tmp_dir / marker),
              str(server.root / marker)]
    if level == "bubblewrap":
        # A private tmpfs: the job may write there, the host's /tmp sees nothing of it.
        # (At the rlimits level the host's world-writable /tmp stays writable, as for any
        # unprivileged user: runtime/box/sandbox.py.)
        create += [f"/tmp/{marker}", f"/dev/shm/{marker}", f"/var/tmp/{marker}"]
    existing = [str(data_dir / "batchyard.sqlite3"), str(data_dir / "secret.key"),
                "/usr/bin/env", "/etc/passwd"]

    execution = run(account, WRITES_EVERYWHERE, {"create": create, "open": existing})

    recorded = results(account, execution)
    assert recorded.pop("own folders") == "DONE ['created', 'created']"
    private = {f"/tmp/{marker}", f"/dev/shm/{marker}"}
    assert set(escaped(recorded)) <= private, recorded
    assert set(recorded) == {*create, *existing}
    # Whatever the job believed, nothing of it appeared on the host.
    assert [path for path in create if os.path.lexists(path)] == []


def test_a_hard_link_in_the_output_folder_is_never_read_into_an_artifact(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()
    data_dir = server.data_dir.resolve()
    paths = [str(data_dir / "batchyard.sqlite3"), str(data_dir / "secret.key")]

    execution = run(account, LINKS_FILES_INTO_ITS_OUTPUT, {"paths": paths})

    recorded = results(account, execution)
    # The server's files: out of reach (bubblewrap), or refused by fs.protected_hardlinks.
    assert escaped(recorded) == {"own link": "DONE None"}, recorded
    # Where that sysctl is 0 such a link would succeed: no hard link is ever read as an
    # output, the job's own included.
    listed = account.owner.get(f"/api/v1/executions/{execution['id']}/artifacts")
    assert [item["name"] for item in listed.json()["items"]] == ["result.json"]
    warnings = [item["message"] for item in read_logs(account.owner, execution["id"])
                if item["message"].startswith("Output not kept")]
    assert warnings == ["Output not kept: own-link.txt (a hard link)",
                        "Output not kept: own.txt (a hard link)"]


def test_the_servers_own_api_and_this_hosts_services_are_refused_to_jobs(
        server: ServerProcess, make_account: AccountFactory) -> None:
    # Jobs share the host's network (they call third-party APIs); the network guard
    # (runtime/box/netguard.py) refuses their uids this host: the server's own port and the
    # PostgreSQL beside it, at once. Where it cannot be installed (no nft), at least the
    # API answers nothing without a key.
    account = make_account()
    isolation = httpx.get(f"{server.base_url}/api/v1/health", timeout=10).json()["isolation"]
    closed = [f"/api/v1/admin/accounts/{account.id}", "/api/v1/jobs", "/api/v1/executions",
              "/api/v1/me", "/api/v1/audit"]
    services = [["127.0.0.1", 5432]] if _listening("127.0.0.1", 5432) else []

    execution = run(account, CALLS_THE_SERVERS_API, {
        "base_url": server.base_url, "paths": ["/api/v1/health", *closed],
        "services": services})

    recorded = results(account, execution)
    if "; network: public only (" in isolation:
        assert escaped(recorded) == {}, recorded
        assert all("Connection refused" in value for value in recorded.values()), recorded
        assert len(recorded) == 6 + len(services)
        assert execution["attempts"][0]["runtime_seconds"] < 3, execution
    else:
        assert "; network: loopback and private networks reachable (" in isolation
        assert recorded["/api/v1/health"] == "DONE 200"
        assert {path: recorded[path] for path in closed} == dict.fromkeys(closed, "DONE 401")


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


# --- 6. a fork bomb --------------------------------------------------------------------
def test_a_fork_bomb_ends_too_many_processes_while_another_job_still_spawns(
        server: ServerProcess, make_account: AccountFactory) -> None:
    bomber, neighbour = make_account(), make_account()
    bomb = invoke(bomber.owner, deploy_job(bomber, FORK_BOMB), {"hold_seconds": 4})
    neighbour_job = deploy_job(neighbour, SPAWNS_A_PROCESS)
    wait_until(lambda: any(text.startswith("limit reached") for text in lines_of(
        read_logs(bomber.owner, bomb), "stdout")), 15, "the fork bomb did not reach its limit")
    # The neighbour has not started: every job-uid process is the bomb's.
    assert PROCESS_LIMIT - 4 <= len(job_uid_processes()) <= PROCESS_LIMIT

    # While the bomb holds every process it could make, the neighbour still forks.
    normal = wait_for(neighbour.owner, invoke(neighbour.owner, neighbour_job), timeout=10)
    assert normal["status"] == "succeeded", normal
    assert lines_of(read_logs(neighbour.owner, normal["id"]), "stdout") == ["spawned"]
    assert get_status(bomber, bomb) == "running"

    execution = wait_for(bomber.owner, bomb, timeout=15)
    assert execution["status"] == "failed", execution
    error = execution["attempts"][0]["error"]
    assert error.startswith("too_many_processes: BlockingIOError"), error
    wait_until(lambda: not processes_of(bomb), 5, lambda: f"{processes_of(bomb)} left")
    # The host still spawns processes.
    assert subprocess.run(["/bin/true"], check=False).returncode == 0


# --- 7. four times the memory limit ----------------------------------------------------
def test_allocating_four_times_the_memory_limit_ends_out_of_memory(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()

    execution = run(account, ALLOCATES_MEMORY, {"bytes": 4 * MEMORY_LIMIT})

    assert execution["status"] == "failed", execution
    error = execution["attempts"][0]["error"]
    assert error.startswith("out_of_memory: MemoryError"), error
    stdout = lines_of(read_logs(account.owner, execution["id"]), "stdout")
    got = [int(m.group(1)) for text in stdout if (m := re.fullmatch(
        r"allocated (\d+) MiB before MemoryError", text))]
    assert len(got) == 1 and 0 < got[0] * 1024 ** 2 < MEMORY_LIMIT, stdout


# --- 8. a gigabyte of output -----------------------------------------------------------
def _rss_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_a_gigabyte_on_stdout_keeps_the_log_cap_and_the_servers_memory_bounded(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()
    pid = server_pid(server)
    peak = [_rss_bytes(pid, "VmRSS")]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak.append(_rss_bytes(pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        execution = run(account, PRINTS_A_GIGABYTE, {"mebibytes": 1024},
                        settings={"timeout_minutes": 1}, timeout=50)
    finally:
        done.set()
        sampler.join()

    assert execution["status"] == "succeeded", execution
    # The whole gigabyte went through the server's pipe (a blocked pipe would hang the job).
    printed = account.owner.get(f"/api/v1/executions/{execution['id']}/artifacts/printed.txt")
    assert printed.text == str(1024 ** 3)
    logs = read_logs(account.owner, execution["id"], limit=10000)
    stored = sum(len(item["message"].encode()) + (len(str(item["data"])) if item["data"]
                                                  else 0) for item in logs)
    assert stored <= LOG_CAP + 4096, stored
    assert [item for item in logs if item["message"].startswith("Log truncated")], logs[-3:]
    assert "all printed" not in lines_of(logs, "stdout")
    assert max(peak) < MAX_SERVER_RSS, f"server RSS peaked at {max(peak) >> 20} MiB"
    assert _rss_bytes(pid, "VmHWM") < MAX_SERVER_RSS


# --- 9. its own session, SIGTERM ignored, past the deadline ----------------------------
def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_job_in_its_own_session_ignoring_sigterm_is_killed_at_the_deadline(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()
    marker = f"stubborn-{secrets.token_hex(6)}"
    job_id = deploy_job(account, LEAVES_A_STUBBORN_SESSION,
                        settings={"timeout_minutes": TIMEOUT_MINUTES})
    execution_id = invoke(account.owner, job_id, {"marker": marker})
    wait_until(lambda: _processes_with(marker), 10, "the helper did not start")

    execution = wait_for(account.owner, execution_id, timeout=15)

    assert execution["status"] == "timed_out", execution
    (attempt,) = execution["attempts"]
    assert TIMEOUT_MINUTES * 60 <= attempt["runtime_seconds"] <= TIMEOUT_MINUTES * 60 + 2
    assert any(text.startswith("helper started") for text in lines_of(
        read_logs(account.owner, execution_id), "stdout"))
    wait_until(lambda: not _processes_with(marker), 3,
               lambda: f"{_processes_with(marker)} outlived the deadline")


def test_a_job_handling_sigterm_gets_its_grace_at_the_deadline(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()

    execution = run(account, CLEANS_UP_ON_SIGTERM, settings={"timeout_minutes": TIMEOUT_MINUTES})

    assert execution["status"] == "timed_out", execution
    (attempt,) = execution["attempts"]
    # Its handler ran (and exited 3) before the SIGKILL that follows the grace.
    assert attempt["exit_code"] == 3, attempt
    cleanup = account.owner.get(f"/api/v1/executions/{execution['id']}/artifacts/cleanup.txt")
    assert cleanup.status_code == 200 and cleanup.text == "interrupted at item 1"


# --- and the platform carries on -------------------------------------------------------
def test_after_every_escape_attempt_a_trivial_job_still_succeeds(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()

    execution = run(account, "def main():\n    print('still fine')\n")

    assert execution["status"] == "succeeded", execution
    assert lines_of(read_logs(account.owner, execution["id"]), "stdout") == ["still fine"]
