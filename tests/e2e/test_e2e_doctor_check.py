"""``batchyard doctor`` and ``batchyard check`` as an operator runs them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from batchyard.store.db import Database

pytestmark = pytest.mark.timeout(120)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATCHYARD_")}
    return subprocess.run([sys.executable, "-m", "batchyard.cli.main", *args],
                          capture_output=True, text=True, timeout=100,
                          env={**clean, **(env or {})})


def test_doctor_without_bubblewrap_names_it_and_the_apt_package(tmp_path: Path) -> None:
    done = cli("doctor", "--data-dir", str(tmp_path / "data"),
               env={"PATH": str(tmp_path / "empty-bin")})
    sandbox = [line for line in done.stdout.splitlines() if "sandbox" in line]
    assert sandbox and "bubblewrap" in sandbox[0], done.stdout
    assert "apt-get install bubblewrap" in done.stdout
    # Every other check still reports, each on its own line.
    for topic in ("network guard", "job interpreter", "database", "smtp", "disk", "clock"):
        assert f" {topic}: " in done.stdout, (topic, done.stdout)


def test_doctor_fails_on_an_unreachable_smtp_server_and_says_what_to_fix(
        tmp_path: Path) -> None:
    done = cli("doctor", "--data-dir", str(tmp_path / "data"),
               env={"BATCHYARD_SMTP_HOST": "127.0.0.1", "BATCHYARD_SMTP_PORT": "1",
                    "BATCHYARD_SANDBOX": "none"})
    assert done.returncode == 1, done.stdout
    assert "FAIL smtp: 127.0.0.1:1 unreachable" in done.stdout
    assert "fix: check BATCHYARD_SMTP_HOST" in done.stdout


def test_check_finds_an_orphan_row_and_passes_a_sound_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database = Database(f"sqlite:///{data / 'batchyard.sqlite3'}")
    database.migrate()
    database.dispose()
    assert cli("check", "--data-dir", str(data)).returncode == 0
    # A log line of an execution that is gone (written with the references unchecked).
    raw = sqlite3.connect(data / "batchyard.sqlite3")
    raw.execute("PRAGMA foreign_keys=OFF")
    raw.execute("INSERT INTO log_lines (account_id, execution_id, seq, attempt, at, stream, "
                "message) VALUES ('acc_x', 'exe_gone', 1, 1, '2026-01-01 00:00:00', "
                "'stdout', 'hi')")
    raw.commit()
    raw.close()
    done = cli("check", "--data-dir", str(data))
    assert done.returncode == 1
    assert "log_lines.execution_id: 1 row(s) refer to no executions row" in done.stdout
