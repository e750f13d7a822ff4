"""A private PostgreSQL cluster for tests that kill or restart the database.

Never the machine's own server: Debian's ``initdb``/``pg_ctl`` (run as the ``postgres``
user, which they require) create a cluster in a temporary folder of its own, on a free
port, with its socket in that folder. The folder is 0711 under the system's temporary
folder, so ``postgres`` can reach it even when the checkout lies in a folder only root
can enter.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class ClusterUnavailable(RuntimeError):
    """This host cannot run a private cluster (the reason is the message)."""


def _bindir() -> Path:
    config = shutil.which("pg_config")
    if config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            found = Path(subprocess.run([config, "--bindir"], check=True, text=True,
                                        capture_output=True).stdout.strip())
            if (found / "initdb").exists():
                return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise ClusterUnavailable("PostgreSQL's server binaries (initdb, pg_ctl) are not "
                                 "installed (Debian package postgresql)")
    return Path(candidates[-1]).parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    def __init__(self, max_connections: int = 200, settings: dict[str, str] | None = None,
                 ) -> None:
        self.max_connections = max_connections
        # Extra server settings (-c name=value), e.g. a bench's pg_stat_statements.
        self.settings = dict(settings or {})
        if os.geteuid() != 0:
            raise ClusterUnavailable("a private cluster is made as root (runuser -u postgres)")
        try:
            self._owner = pwd.getpwnam("postgres")
        except KeyError:
            raise ClusterUnavailable("there is no postgres user on this host") from None
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="batchyard-pg-"))
        os.chmod(self.root, 0o711)
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        for folder in (self.data, self.sockets):
            folder.mkdir(mode=0o700)
            os.chown(folder, self._owner.pw_uid, self._owner.pw_gid)
        self.log = self.root / "sockets" / "server.log"
        self.port = _free_port()
        self._as_postgres([str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                           "-U", "postgres", "--no-sync", "-E", "UTF8"])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, command: list[str]) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", *command],
                              capture_output=True, text=True, cwd=self.root, check=False)
        if done.returncode != 0:
            raise ClusterUnavailable(f"{Path(command[0]).name} failed: {done.stderr.strip()}"
                                     f"{self._log_tail()}")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\nserver log:\n" + self.log.read_text()[-2000:]
        return ""

    def start(self) -> PostgresCluster:
        # fsync off: a test cluster's durability across a host crash is not under test; a
        # killed server still recovers from its WAL.
        options = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
                   f"-c fsync=off -c max_connections={self.max_connections}"
                   + "".join(f" -c {name}={value}" for name, value in self.settings.items()))
        self._as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                           "-l", str(self.log), "-w", "-t", "60", "start"])
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.pid() is not None:
            self._as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode,
                               "-w", "-t", "60", "stop"])

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
            return pid
        return None

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would (its backends follow it)."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self, *, crash: bool = False) -> None:
        if crash:
            self.kill()
            # A killed postmaster leaves its pid file; pg_ctl start notices the stale one.
        else:
            self.stop()
        self.start()

    def remove(self) -> None:
        with contextlib.suppress(ClusterUnavailable):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
