"""Helpers of the end-to-end tier: a real ``batchyard serve`` process driven over HTTP.

Nothing here fakes the platform: the server is a subprocess on a free port, with
its own data folder and its own ``TMPDIR``; clients are plain ``httpx`` clients.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from support.processes import process_alive

OPERATOR_TOKEN = "e2e-operator-token-5f0c2b"
READY_TIMEOUT = 20.0
STOP_GRACE = 10.0
FINISHED = frozenset({"succeeded", "failed", "timed_out", "cancelled", "blocked", "missed"})
# Files the server may keep in its data folder besides the (empty, between runs) work/.
DATA_DIR_FILES = frozenset({"batchyard.sqlite3", "batchyard.sqlite3-wal", "batchyard.sqlite3-shm",
                            "batchyard.sqlite3-journal", "secret.key", "node.id",
                            "operator.token", "node.0.lock"})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One ``batchyard serve`` subprocess over a data folder."""

    def __init__(self, root: Path, data_dir: Path | None = None, workers: int | None = 2,
                 extra_args: tuple[str, ...] = (), env: Mapping[str, str] | None = None
                 ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.data_dir = data_dir or root / "data"
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(exist_ok=True)
        self.log_path = root / f"server-{uuid.uuid4().hex[:6]}.log"
        self.workers = workers
        self.extra_args = extra_args
        # BATCHYARD_* settings of this server (limits, isolation level); the operator
        # token is always OPERATOR_TOKEN.
        self.env = dict(env or {})
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output captured)"

    def start(self) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHYARD_")}
        env.update(self.env)
        env.update(BATCHYARD_OPERATOR_TOKEN=OPERATOR_TOKEN, TMPDIR=str(self.tmp_dir),
                   PYTHONUNBUFFERED="1")
        for _try in range(3):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "batchyard.cli.main", "serve",
                     "--port", str(self.port), "--data-dir", str(self.data_dir),
                     *(["--workers", str(self.workers)] if self.workers is not None else []),
                     *self.extra_args],
                    env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if self._wait_ready():
                return self
            lost_port_race = "address already in use" in self.output().lower()
            self._reap()
            if not lost_port_race:
                break
        raise AssertionError(f"batchyard serve did not answer /api/v1/health within "
                             f"{READY_TIMEOUT:g} s; its output:\n{self.output()}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.base_url}/api/v1/health", timeout=2).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    def _reap(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after the grace; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL at once: the server gets no chance to clean up."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def client(self, token: str = OPERATOR_TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30,
                            headers={"Authorization": f"Bearer {token}"})

    def sandbox(self) -> dict[str, Any]:
        """The operator's view of job isolation (health with the operator token)."""
        with self.client() as client:
            answer = client.get("/api/v1/health")
        assert answer.status_code == 200, answer.text
        view: dict[str, Any] = answer.json()["sandbox"]
        return view


def path_without(folder: Path, *names: str) -> str:
    """A PATH with every program of this one but ``names`` (a host without bubblewrap):
    a folder of links, since the programs beside them (/usr/bin) are still needed."""
    folder.mkdir(parents=True, exist_ok=True)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = folder / entry.name
            if entry.name not in names and not link.exists() and not link.is_symlink():
                link.symlink_to(entry.path)
    return str(folder)


# --- accounts --------------------------------------------------------------------------
ROLES = ("owner", "developer", "viewer")
_API_ROLE = {"owner": "admin", "developer": "developer", "viewer": "viewer"}


@dataclass
class Account:
    """An account made through the operator API, with one user (and key) per role."""

    id: str
    keys: dict[str, str]
    base_url: str
    _clients: dict[str, httpx.Client] = field(default_factory=dict)

    def client(self, role: str = "owner") -> httpx.Client:
        if role not in self._clients:
            self._clients[role] = httpx.Client(
                base_url=self.base_url, timeout=30,
                headers={"Authorization": f"Bearer {self.keys[role]}"})
        return self._clients[role]

    @property
    def owner(self) -> httpx.Client:
        return self.client("owner")

    @property
    def developer(self) -> httpx.Client:
        return self.client("developer")

    @property
    def viewer(self) -> httpx.Client:
        return self.client("viewer")

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def create_account(operator: httpx.Client, *, plan: dict[str, Any] | None = None,
                   enabled: bool = True) -> Account:
    tag = uuid.uuid4().hex[:10]
    body: dict[str, Any] = {"name": f"e2e-{tag}", "batch_jobs_enabled": enabled}
    if plan:
        body["plan"] = plan
    response = operator.post("/api/v1/admin/accounts", json=body)
    assert response.status_code == 201, response.text
    account_id = response.json()["id"]
    keys = {}
    for role in ROLES:
        made = operator.post(f"/api/v1/admin/accounts/{account_id}/users",
                             json={"email": f"{role}-{tag}@example.com",
                                   "role": _API_ROLE[role]})
        assert made.status_code == 201, made.text
        keys[role] = made.json()["api_key"]
    return Account(account_id, keys, str(operator.base_url).rstrip("/"))


# What the conftest fixtures ``launch_server`` and ``make_account`` return.
ServerFactory = Callable[..., ServerProcess]
AccountFactory = Callable[..., Account]


# --- code packages ---------------------------------------------------------------------
def make_zip(files: dict[str, str | bytes], *,
             compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def zip_with_entries(entries: Iterable[zipfile.ZipInfo | tuple[zipfile.ZipInfo, bytes]]
                     ) -> bytes:
    """A zip holding hand-made entries (links, odd paths): each a ZipInfo or (info, data)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for entry in entries:
            info, data = entry if isinstance(entry, tuple) else (entry, b"")
            archive.writestr(info, data)
    return buffer.getvalue()


def zip_bomb(expanded_bytes: int = 1024 ** 3) -> bytes:
    """A valid package (main.py) plus one entry of zeros that expands to ``expanded_bytes``.

    zipfile at compresslevel=1 makes 1 GiB of zeros into 4.7 MB (over the default plan's
    4 MiB, so the server would answer 413 before looking inside) and at level 9 needs
    6 s. Instead one MiB of zeros is deflated once, ending in a full flush (byte-aligned,
    no back-references), and that segment is repeated: ~1 MB for 1 GiB, in well under a
    second. The archive is written by hand (no zip64 needed below 4 GiB).
    """
    chunk = bytes(1024 * 1024)
    assert expanded_bytes % len(chunk) == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    count = expanded_bytes // len(chunk)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    zeros = segment * count + compressor.flush(zlib.Z_FINISH)
    main_py = b"def main(event):\n    return None\n"
    main_compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    main_deflated = main_compressor.compress(main_py) + main_compressor.flush()
    entries = [(b"main.py", main_deflated, zlib.crc32(main_py), len(main_py)),
               (b"zeros.bin", zeros, crc, expanded_bytes)]
    out = bytearray()
    central = bytearray()
    for name, deflated, entry_crc, size in entries:
        offset = len(out)
        fields = (8, 0, 0x21, entry_crc, len(deflated), size, len(name))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, *fields, 0) + name + deflated
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, *fields, 0, 0,
                               0, 0, 0, offset) + name
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries),
                                 len(central), len(out), 0)
    return bytes(out)


# --- the job flow ----------------------------------------------------------------------
def unique_name(prefix: str = "job") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_job(client: httpx.Client, name: str | None = None) -> str:
    response = client.post("/api/v1/jobs", json={"name": name or unique_name()})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def upload_code(client: httpx.Client, job_id: str, data: bytes) -> httpx.Response:
    return client.put(f"/api/v1/jobs/{job_id}/code", content=data,
                      headers={"Content-Type": "application/zip"})


def deploy_job(account: Account, main_py: str, *, settings: dict[str, Any] | None = None,
               variables: list[dict[str, Any]] | None = None,
               extra_files: dict[str, str | bytes] | None = None) -> str:
    """Create, upload, schedule (ad hoc), configure and publish a job; return its id."""
    client = account.owner
    job_id = create_job(client)
    uploaded = upload_code(client, job_id, make_zip({"main.py": main_py, **(extra_files or {})}))
    assert uploaded.status_code == 201, uploaded.text
    for path, body in ((f"/api/v1/jobs/{job_id}/schedule", {"type": "none"}),
                       (f"/api/v1/jobs/{job_id}/settings", settings or {}),
                       (f"/api/v1/jobs/{job_id}/variables", {"variables": variables or []})):
        response = client.put(path, json=body)
        assert response.status_code == 200, f"PUT {path}: {response.text}"
    published = client.post(f"/api/v1/jobs/{job_id}/publish")
    assert published.status_code == 200, published.text
    assert published.json()["status"] == "published"
    return job_id


def invoke(client: httpx.Client, job_id: str, body: Any = None) -> str:
    response = client.post(f"/api/v1/jobs/{job_id}/invoke", json=body if body is not None else {})
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    return str(response.json()["execution_id"])


def get_execution(client: httpx.Client, execution_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/executions/{execution_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def wait_for(client: httpx.Client, execution_id: str, statuses: Iterable[str] | str = FINISHED,
             timeout: float = 15.0) -> dict[str, Any]:
    """Poll the execution until its status is one of ``statuses``; return it."""
    wanted = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.monotonic() + timeout
    execution = get_execution(client, execution_id)
    while execution["status"] not in wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"execution {execution_id} did not reach {sorted(wanted)} "
                                 f"within {timeout:g} s; now:\n{json.dumps(execution, indent=1)}")
        time.sleep(0.1)
        execution = get_execution(client, execution_id)
    return execution


def wait_until(predicate: Callable[[], Any], timeout: float,
               message: str | Callable[[], str], interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message if isinstance(message, str) else message())
        time.sleep(interval)


def read_logs(client: httpx.Client, execution_id: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/executions/{execution_id}/logs", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def lines_of(logs: list[dict[str, Any]], stream: str) -> list[str]:
    return [item["message"] for item in logs if item["stream"] == stream]


# --- processes -------------------------------------------------------------------------
def processes_of(execution_id: str) -> list[int]:
    """Host pids of an execution's processes, whatever PID namespace they run in: the
    pids a job prints are its sandbox's (bubblewrap), but its environment names its
    output folder, which is named after the execution (a cold start), or is a warm
    interpreter's folder that the execution's folder name links to (a warm start)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and process_alive(int(entry.name)):
            try:
                if _is_of(execution_id, (entry / "environ").read_bytes()):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _is_of(execution_id: str, environ: bytes) -> bool:
    if execution_id.encode() in environ:
        return True
    for variable in environ.split(b"\0"):
        if variable.startswith(b"OUTPUT_DIR=") and b"/warm-" in variable:
            # runtime/box/supervisor.py: <work>/<execution>-<n>-warm-<random> -> warm-<random>
            folder = Path(variable[len(b"OUTPUT_DIR="):].decode(errors="replace")).parent
            for alias in folder.parent.glob(f"{execution_id}-*-warm-*"):
                with contextlib.suppress(OSError):
                    if os.readlink(alias) == folder.name:
                        return True
    return False


def is_ready_warm_interpreter(pid: int) -> bool:
    """Whether ``pid`` is a warm interpreter no attempt has taken yet (runtime/box/warm.py):
    spawned ahead, under a job uid of its own, it has run no job code. Its output folder
    exists and no execution's folder name links to it."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    for variable in environ.split(b"\0"):
        if variable.startswith(b"OUTPUT_DIR=") and b"/warm-" in variable:
            folder = Path(variable[len(b"OUTPUT_DIR="):].decode(errors="replace")).parent
            if not folder.is_dir():
                return False  # its attempt is over: a leftover, not a ready box
            for alias in folder.parent.glob("*-warm-*"):
                with contextlib.suppress(OSError):
                    if os.readlink(alias) == folder.name:
                        return False
            return True
    return False


def kill_orphan(pid: int, marker: str) -> None:
    """SIGKILL a job process left behind by a killed server, if it is still the one we mean.

    ``marker`` (the execution id) must be named by the process's environment (processes_of),
    so a recycled pid is never hit.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return
    if _is_of(marker, environ):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
