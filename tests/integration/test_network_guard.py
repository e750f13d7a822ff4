"""The job network guard against real jobs, real sockets and the real nftables.

Four in-process ``Server`` objects (app.py's composition): bubblewrap and rlimits, each
with ``BATCHYARD_JOB_NETWORK=public`` and ``open``. A job tries this host's services (a
listener the test opens on every address, the PostgreSQL on 127.0.0.1:5432 when there
is one) and the cloud metadata address; under ``public`` each is refused at once, under
``open`` the same job reaches them. The guard needs root (a uid per attempt to match)
and nft: the module skips, saying which, without them. The ranges here are this
module's own, and their tables are deleted at the end.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchyard.app import Server
from batchyard.config import Settings
from batchyard.domain.attempts import AttemptResult, ClaimedAttempt, LogRecord
from batchyard.domain.executions import AttemptOutcome
from batchyard.runtime.box.netguard import (
    find_nft,
    install_network_guard,
    remove_network_guard,
    table_name,
)
from batchyard.runtime.box.sandbox import SandboxUnavailable

pytestmark = pytest.mark.timeout(120)

UID_COUNT = 10_000
# One range per network mode: an ``open`` server deletes the table of its own range.
RANGES = {"public": 2_300_000_000, "open": 2_300_000_000 + UID_COUNT}
# Only for the nft failure below: never installed.
SPARE_BASE = 2_300_000_000 + 2 * UID_COUNT
REFUSAL_SECONDS = 1.0

TRIES = """\
import json, os, socket, time

def tcp(host, port, greeting):
    with socket.create_connection((host, port), timeout=3) as connection:
        if not greeting:
            return "CONNECTED"
        connection.settimeout(3)
        return "CONNECTED " + connection.recv(16).decode()

def udp(host, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"ping", (host, port))
    return "SENT"

def main(event):
    body = event["body"]
    results = {"uid": os.getuid(),
               "uid_map": open("/proc/self/uid_map").read().split()}
    tries = {name: (tcp, target) for name, target in body["tcp"].items()}
    tries["udp"] = (udp, body["udp"])
    tries["dns"] = (lambda host: socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)[0][4][0],
                    [body["public_host"]])
    if body["public_reachable"]:
        tries["public"] = (tcp, [body["public_host"], 443, False])
    for name, (action, args) in tries.items():
        started = time.monotonic()
        try:
            outcome = action(*args)
        except OSError as exc:
            outcome = "REFUSED " + type(exc).__name__
        results[name] = [outcome, round(time.monotonic() - started, 3)]
    print(json.dumps(results))
"""


# --- the host side ---------------------------------------------------------------------
def _root_and_nft() -> str | None:
    if os.geteuid() != 0:
        return "the guard matches a uid per attempt: the server must run as root"
    if find_nft() is None:
        return "nft is not installed (Debian package nftables)"
    return None


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def _own_address() -> str | None:
    """This host's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


class Listener:
    """A TCP server on every address of this host (IPv4 and IPv6) that greets with
    "pong", and a UDP socket on 127.0.0.1 that keeps what it receives."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("::", 0), family=socket.AF_INET6,
                                        dualstack_ipv6=True)
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.2)
        self.udp_port = self.udp.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.tcp.accept()
            except OSError:
                return
            with connection:
                connection.sendall(b"pong")

    def datagrams(self) -> list[bytes]:
        received = []
        while True:
            try:
                received.append(self.udp.recv(64))
            except OSError:
                return received

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    opened = Listener()
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[tuple[str, str], Server]]:
    """(level, network) → its server, made when a test first asks for it."""
    made: dict[tuple[str, str], Server] = {}
    yield made
    for server in made.values():
        server.db.dispose()
        shutil.rmtree(server.data_dir.parent, ignore_errors=True)
        placement = server.supervisor.sandbox.placement
        if placement is not None and placement.runtime_dir is not None:
            shutil.rmtree(placement.runtime_dir, ignore_errors=True)
    for first in RANGES.values():
        failure = remove_network_guard((first, first + UID_COUNT - 1))
        assert failure in (None, "nft is not installed"), failure


def _server(servers: dict[tuple[str, str], Server], level: str, network: str) -> Server:
    key = (level, network)
    if key in servers:
        return servers[key]
    reason = _root_and_nft()
    if reason is not None:
        pytest.skip(reason)
    if level == "bubblewrap" and shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed (Debian package bubblewrap)")
    root = Path(tempfile.mkdtemp(prefix=f"batchyard-netguard-{level}-{network}-"))
    # The default interpreter: the rlimits level finds one its job uids can run.
    settings = Settings(data_dir=root / "data", workers=1,
                        sandbox="bubblewrap" if level == "bubblewrap" else "none",
                        sandbox_uid_base=RANGES[network],
                        job_network=network,  # type: ignore[arg-type]
                        kill_grace_seconds=0.3)
    try:
        server = Server(settings)
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap cannot run here: {exc.message}")
    servers[key] = server
    if not server.supervisor.sandbox.runs_jobs:
        pytest.skip(f"no job runs here: {server.supervisor.sandbox.report.problem}")
    description = server.supervisor.sandbox.description
    if network == "public" and "network: public only" not in description:
        pytest.skip(f"the guard could not be installed here: {description}")
    return server


@pytest.fixture(params=["bubblewrap", "rlimits"])
def level(request: pytest.FixtureRequest) -> str:
    chosen: str = request.param
    return chosen


# --- running a job ---------------------------------------------------------------------
def _attempt(main_py: str, body: dict[str, Any]) -> ClaimedAttempt:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", main_py)
    return ClaimedAttempt(
        execution_id=f"exe_{secrets.token_hex(4)}", account_id="acc_test",
        job_id="job_test", job_name="test", number=1, worker="test/0", revision=1,
        code=buffer.getvalue(), main_parameters=1, requirements=None, variables={},
        secret_values=(), deadline_seconds=30, timeout_seconds=30,
        params={"body": body}, source="api", database_access=False, log_seq=0, log_bytes=0,
        log_truncated=False)


def run(server: Server, main_py: str, body: dict[str, Any]) -> \
        tuple[AttemptResult, list[LogRecord]]:
    stored: list[LogRecord] = []

    def writer(batch: list[LogRecord], first: int, used: int, truncated: bool) -> bool:
        stored.extend(batch)
        return True

    result = server.supervisor.run(_attempt(main_py, body), writer)
    assert result.logs is not None
    stored.extend(result.logs.records)
    return result, stored


def tries(server: Server, listener: Listener) -> tuple[dict[str, Any], list[LogRecord]]:
    """Run TRIES: this host's listener by every address, PostgreSQL, the metadata address."""
    targets: dict[str, list[Any]] = {
        "loopback": ["127.0.0.1", listener.port, True],
        "loopback6": ["::1", listener.port, True],
        "localhost": ["localhost", listener.port, True]}
    own = _own_address()
    if own is not None:
        targets["own address"] = [own, listener.port, True]
    if _listening("127.0.0.1", 5432):
        targets["postgresql"] = ["127.0.0.1", 5432, False]
    if server.settings.job_network == "public":
        # Under ``open`` where it leads depends on the machine (it may hang): not tried.
        targets["metadata"] = ["169.254.169.254", 80, False]
    public = _listening("pypi.org", 443)
    result, logs = run(server, TRIES, {
        "tcp": targets, "udp": ["127.0.0.1", listener.udp_port], "public_host": "pypi.org",
        "public_reachable": public})
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    (line,) = [record.message for record in logs if record.stream == "stdout"]
    recorded: dict[str, Any] = json.loads(line)
    return recorded, logs


# --- the tests -------------------------------------------------------------------------
def test_a_job_is_refused_this_hosts_services_at_once(
        servers: dict[tuple[str, str], Server], level: str, listener: Listener) -> None:
    server = _server(servers, level, "public")
    first, last = server.supervisor.sandbox.uid_range or (0, -1)

    recorded, logs = tries(server, listener)

    # The socket's owner is the attempt's own uid, in the init user namespace (bwrap runs
    # as root without one): exactly what the rule matches.
    assert first <= recorded.pop("uid") <= last
    assert recorded.pop("uid_map") == ["0", "0", "4294967295"]
    dns = recorded.pop("dns")
    public = recorded.pop("public", None)
    udp = recorded.pop("udp")
    assert "loopback" in recorded and "metadata" in recorded
    for name, (outcome, seconds) in recorded.items():
        assert outcome == "REFUSED ConnectionRefusedError", (name, outcome)
        assert seconds < REFUSAL_SECONDS, (name, seconds)
    assert udp[0].startswith("REFUSED") and udp[1] < REFUSAL_SECONDS, udp
    assert listener.datagrams() == []
    # DNS (a resolver on a private address here: /etc/resolv.conf) and the internet work.
    assert not dns[0].startswith("REFUSED"), dns
    if public is not None:
        assert public[0] == "CONNECTED", public
    assert "; network: public only (nftables table inet " in logs[0].message


def test_the_same_job_reaches_them_with_the_network_open(
        servers: dict[tuple[str, str], Server], level: str, listener: Listener) -> None:
    server = _server(servers, level, "open")

    recorded, logs = tries(server, listener)

    for name in ("loopback", "loopback6", "localhost", "own address"):
        if name in recorded:
            assert recorded[name][0] == "CONNECTED pong", (name, recorded[name])
    if "postgresql" in recorded:
        assert recorded["postgresql"][0] == "CONNECTED", recorded
    assert recorded["udp"][0] == "SENT" and listener.datagrams() == [b"ping"]
    assert not recorded["dns"][0].startswith("REFUSED"), recorded["dns"]
    assert ("; network: loopback and private networks reachable "
            "(BATCHYARD_JOB_NETWORK=open)") in logs[0].message


def test_the_guard_matches_job_uids_only(
        servers: dict[tuple[str, str], Server], listener: Listener) -> None:
    server = _server(servers, "rlimits", "public")
    first, _ = server.supervisor.sandbox.uid_range or (0, 0)
    python = server.supervisor.python
    # The server's own process (root) reaches its database and the host's services.
    assert _listening("127.0.0.1", listener.port)
    # So does any uid outside the range, one below it included.
    for uid in (first - 1, 65534):
        done = subprocess.run(
            [python, "-I", "-S", "-c", "import socket, sys\n"
             "socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3).close()",
             str(listener.port)], user=uid, group=uid, capture_output=True, timeout=20)
        assert done.returncode == 0, (uid, done.stderr.decode()[-500:])


def test_health_states_the_network_level(
        servers: dict[tuple[str, str], Server]) -> None:
    public = _server(servers, "bubblewrap", "public").supervisor.sandbox.description
    assert public.startswith("bubblewrap (")
    assert "; network: public only (nftables table inet " in public
    first = RANGES["public"]
    table = table_name(first, first + UID_COUNT - 1)
    assert f"{table}: job uids {first}-{first + UID_COUNT - 1} refused" in public
    listed = subprocess.run([find_nft() or "nft", "list", "table", "inet", table],
                            capture_output=True, text=True, check=True).stdout
    assert f"meta skuid {first}-{first + UID_COUNT - 1} jump job" in listed


def test_the_table_is_replaced_not_duplicated_and_open_deletes_it() -> None:
    reason = _root_and_nft()
    if reason is not None:
        pytest.skip(reason)
    uid_range = (SPARE_BASE, SPARE_BASE + UID_COUNT - 1)
    table = table_name(*uid_range)
    nft = find_nft() or "nft"
    try:
        for _ in range(2):
            guard = install_network_guard("public", uid_range)
            assert guard.table == table, guard.description
        listed = subprocess.run([nft, "list", "table", "inet", table], capture_output=True,
                                text=True, check=True).stdout
        assert listed.count("meta skuid") == 1 and listed.count("chain job {") == 1
        opened = install_network_guard("open", uid_range)
        assert opened.table is None
        assert subprocess.run([nft, "list", "table", "inet", table],
                              capture_output=True).returncode != 0
    finally:
        remove_network_guard(uid_range)


def test_when_nft_fails_the_server_is_told_and_falls_back(
        caplog: pytest.LogCaptureFixture) -> None:
    reason = _root_and_nft()
    if reason is not None:
        pytest.skip(reason)
    # A range nft refuses (last before first): the real failure path, nothing installed.
    guard = install_network_guard("public", (SPARE_BASE + 10, SPARE_BASE))
    assert guard.table is None
    assert guard.description.startswith(
        "network: loopback and private networks reachable (no network guard: nft failed: ")
    assert "network guard (BATCHYARD_JOB_NETWORK=public) is not installed" in caplog.text
    # Jobs that run as the server's own uid leave nothing to match.
    assert install_network_guard("public", None).description == (
        "network: loopback and private networks reachable (no network guard: jobs run as "
        "the server's own uid)")


def test_under_bubblewrap_the_hosts_socket_files_are_out_of_reach(
        servers: dict[tuple[str, str], Server]) -> None:
    # Unix sockets are not IP: no firewall sees them. bubblewrap's mount tree has no /run.
    sockets = [path for path in ("/run/postgresql/.s.PGSQL.5432", "/run/mysqld/mysqld.sock",
                                 "/var/run/postgresql/.s.PGSQL.5432") if os.path.exists(path)]
    if not sockets:
        pytest.skip("no PostgreSQL or MariaDB socket file on this host")
    server = _server(servers, "bubblewrap", "public")
    result, logs = run(server, """\
import socket
def main(event):
    for path in event["body"]["paths"]:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(path)
            print(path, "CONNECTED")
        except OSError as exc:
            print(path, "REFUSED", type(exc).__name__)
""", {"paths": sockets})
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    printed = [record.message for record in logs if record.stream == "stdout"]
    assert printed == [f"{path} REFUSED FileNotFoundError" for path in sockets]
