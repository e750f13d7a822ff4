"""Driving the ``batchyard`` command the way a developer does: a real subprocess with its
own config and cache folders, against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Kit:
    """``batchyard`` with a home of its own (profiles, environment cache)."""

    home: Path
    env_extra: dict[str, str]

    @classmethod
    def make(cls, root: Path) -> Kit:
        home = root / "home"
        (home / "config").mkdir(parents=True, exist_ok=True)
        (home / "cache").mkdir(parents=True, exist_ok=True)
        return cls(home, {})

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHYARD_")}
        env.update(XDG_CONFIG_HOME=str(self.home / "config"),
                   XDG_CACHE_HOME=str(self.home / "cache"), HOME=str(self.home),
                   PYTHONUNBUFFERED="1", COLUMNS="200", NO_COLOR="1")
        env.update(self.env_extra)
        return env

    def __call__(self, *args: str, cwd: Path, timeout: float = 120,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "batchyard.cli.main", *args], cwd=cwd,
                              env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def json(self, *args: str, cwd: Path, expect: int = 0, **kwargs: Any) -> Any:
        done = self(*args, "--json", cwd=cwd, **kwargs)
        assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
        return json.loads(done.stdout)

    def login(self, url: str, key: str, cwd: Path) -> None:
        key_file = self.home / "key.txt"
        key_file.write_text(key + "\n")
        done = self("login", "--url", url, "--key-file", str(key_file), cwd=cwd)
        assert done.returncode == 0, done.stdout + done.stderr


def user_records(logs: list[dict[str, Any]]) -> list[tuple[Any, Any, Any]]:
    """The job's own LS.log records (level, message, data), without the platform's lines."""
    return [(item["level"], item["message"], item["data"]) for item in logs
            if item["stream"] == "log" and not str(item["message"]).startswith("batchyard:")]
