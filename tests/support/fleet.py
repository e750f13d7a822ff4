"""A fleet of batchyard processes on one PostgreSQL: API+scheduler nodes, workers on the
database, remote workers over HTTP; each can be SIGKILLed and started again as it was
(same port, same data folder, so a restarted node takes its attempts back)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

READY_SECONDS = 60.0


class FleetProcess:
    def __init__(self, name: str, root: Path, args: list[str], env: Mapping[str, str],
                 health_url: str | None = None) -> None:
        self.name = name
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHYARD_")}
        self.env.update(env)
        self.env.update(PYTHONUNBUFFERED="1", TMPDIR=str(root))
        self.health_url = health_url
        self.log_path = root / "process.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self._offset = 0

    def start(self, wait: bool = True) -> FleetProcess:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "batchyard.cli.main", *self.args], env=self.env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.output()[-3000:]}")
            if self.health_url is None:
                fresh = self.output()[self._offset:]
                if " running" in fresh or "accepted by" in fresh:
                    return
            else:
                try:
                    if httpx.get(self.health_url, timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} was not ready in time: {self.output()[-3000:]}")

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.kills += 1

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
