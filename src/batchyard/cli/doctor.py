"""``batchyard doctor``: what this host gives the server, each finding with its fix.

Every check is real: the sandbox probe runs the actual launch command (in a scratch
folder, not the data folder), the database is connected to, the SMTP server dialled.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from batchyard.config import Settings

OK, WARN, FAIL = "ok", "warn", "FAIL"
LOW_DISK_BYTES = 1024 ** 3
CLOCK_TOLERANCE_SECONDS = 5.0


@dataclass(frozen=True)
class Finding:
    level: str
    topic: str
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{self.level:<4} {self.topic}: {self.detail}"
        return text + (f"\n     fix: {self.fix}" if self.fix else "")


def run_checks(settings: Settings) -> list[Finding]:
    checks: list[Callable[[Settings], Finding]] = [
        check_sandbox, check_network_guard, check_interpreter, check_database, check_smtp,
        check_disk, check_clock]
    findings = []
    for check in checks:
        try:
            findings.append(check(settings))
        except Exception as exc:  # a check that breaks is a finding, not a traceback
            findings.append(Finding(FAIL, check.__name__.removeprefix("check_"),
                                    f"the check itself failed: {type(exc).__name__}: {exc}"))
    return findings


def check_sandbox(settings: Settings) -> Finding:
    from batchyard.app import job_python
    from batchyard.errors import BatchyardError
    from batchyard.runtime.box.sandbox import IsolationLevel, JobLimits
    from batchyard.runtime.box.sandbox_setup import detect_sandbox

    if settings.sandbox == "off":
        return Finding(WARN, "sandbox", "BATCHYARD_SANDBOX=off: jobs run unconfined",
                       "only for hosts that isolate each job already; else unset it")
    if shutil.which("bwrap") is None and settings.sandbox != "none":
        return Finding(FAIL if settings.sandbox == "bubblewrap" else WARN, "sandbox",
                       "bubblewrap (bwrap) is not installed or not on PATH: jobs would run "
                       "under the rlimits launcher, without namespaces",
                       "apt-get install bubblewrap (Debian package bubblewrap)")
    scratch = Path(tempfile.mkdtemp(prefix="batchyard-doctor-"))
    try:
        os.chmod(scratch, 0o711)
        (scratch / "data").mkdir(mode=0o700)
        # The server's own detection, on a scratch data folder and runtime folder.
        sandbox = detect_sandbox(settings.sandbox, job_python(settings.python), JobLimits(
            memory_bytes=settings.job_memory_bytes, processes=settings.job_max_processes,
            open_files=settings.job_max_open_files, file_bytes=settings.job_max_file_bytes,
            cpu_seconds=settings.job_cpu_seconds), scratch / "data",
            settings.sandbox_uid_base, scratch / "runtime")
    except BatchyardError as exc:
        return Finding(FAIL, "sandbox", exc.message,
                       "see the reason; BATCHYARD_SANDBOX=auto falls back to rlimits")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not sandbox.runs_jobs:
        return Finding(FAIL, "sandbox", f"no job would run: {sandbox.report.problem}",
                       sandbox.report.fix or "see the reason")
    if sandbox.level is IsolationLevel.BUBBLEWRAP:
        return Finding(OK, "sandbox", sandbox.description)
    return Finding(WARN, "sandbox", sandbox.description,
                   "make bwrap runnable (apt-get install bubblewrap; unprivileged servers "
                   "need user namespaces: sysctl kernel.unprivileged_userns_clone=1)")


def check_network_guard(settings: Settings) -> Finding:
    from batchyard.runtime.box.netguard import find_nft

    if settings.job_network == "open":
        return Finding(WARN, "network guard", "BATCHYARD_JOB_NETWORK=open: jobs reach this "
                       "host's services and private networks", "unset it (default: public)")
    missing = []
    if os.geteuid() != 0:
        missing.append("the server is not root")
    if find_nft() is None:
        missing.append("nft is not installed")
    if missing:
        return Finding(WARN, "network guard", "off: " + " and ".join(missing)
                       + ": jobs can reach loopback and private networks",
                       "run the server as root with nftables installed "
                       "(apt-get install nftables)")
    return Finding(OK, "network guard", "nft found and running as root: the table is "
                   "installed at start")


def check_interpreter(settings: Settings) -> Finding:
    from batchyard.app import job_python

    python = job_python(settings.python)
    real = Path(os.path.realpath(python))
    if not real.exists():
        return Finding(FAIL, "job interpreter", f"{python} does not exist",
                       "set BATCHYARD_PYTHON to a Python 3.11+ interpreter")
    if os.geteuid() == 0:
        closed = [str(parent) for parent in real.parents if not os.stat(parent).st_mode & 0o001]
        if closed or not os.stat(real).st_mode & 0o001:
            # bubblewrap binds the interpreter's folders into the sandbox traversable; the
            # rlimits launcher runs it by its host path.
            return Finding(WARN, "job interpreter",
                           f"{real} cannot be run by the attempt uids outside bubblewrap "
                           f"(not traversable: {', '.join(closed) or real}): the rlimits "
                           "level would run jobs as root",
                           "install Python outside /root (apt-get install python3) and set "
                           "BATCHYARD_PYTHON=/usr/bin/python3")
    return Finding(OK, "job interpreter", f"{real}")


def check_database(settings: Settings) -> Finding:
    from batchyard.store.db import Database
    from batchyard.store.maintenance import current_revision, head_revision

    url = settings.resolved_database_url
    where = url.split("@")[-1] if "@" in url else url
    if url.startswith("sqlite") and not (settings.data_dir / "batchyard.sqlite3").exists():
        return Finding(WARN, "database", f"no store yet at {where}",
                       "batchyard serve creates and migrates it at first start")
    db = Database(url, pool_size=1)
    try:
        current = current_revision(db)
    except Exception as exc:
        return Finding(FAIL, "database", f"cannot connect to {where}: {exc}",
                       "check BATCHYARD_DATABASE_URL and that the database server runs")
    finally:
        db.dispose()
    head = head_revision()
    if current != head:
        return Finding(WARN, "database", f"{where} is at migration {current}, the code at "
                       f"{head}", "batchyard serve migrates at start")
    return Finding(OK, "database", f"{where} reachable, migrated ({head})")


def check_smtp(settings: Settings) -> Finding:
    from batchyard.runtime.outbound.smtp import SmtpConfig

    config = SmtpConfig.from_settings(settings)
    if config is None:
        return Finding(WARN, "smtp", "no SMTP server configured: no e-mail is sent",
                       "set BATCHYARD_SMTP_HOST (and _PORT, _TLS, _USER, _PASSWORD)")
    try:
        with socket.create_connection((config.host, config.port), timeout=5):
            pass
    except OSError as exc:
        return Finding(FAIL, "smtp", f"{config.host}:{config.port} unreachable: {exc}",
                       "check BATCHYARD_SMTP_HOST/_PORT and the firewall")
    return Finding(OK, "smtp", f"{config.host}:{config.port} reachable")


def check_disk(settings: Settings) -> Finding:
    folder = settings.data_dir if settings.data_dir.exists() else Path.cwd()
    usage = shutil.disk_usage(folder)
    detail = (f"{usage.free / 1024 ** 3:.1f} GiB free of {usage.total / 1024 ** 3:.1f} GiB "
              f"under {folder.resolve()}")
    if usage.free < LOW_DISK_BYTES or usage.free < usage.total * 0.05:
        return Finding(FAIL, "disk", detail, "free space, or lower the plans' "
                       "retention_days and BATCHYARD_ENV_CACHE_MAX_MB")
    return Finding(OK, "disk", detail)


def check_clock(settings: Settings) -> Finding:
    from datetime import UTC, datetime

    from batchyard.store.db import Database

    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        return Finding(OK, "clock", "SQLite: the database shares this host's clock")
    db = Database(url, pool_size=1)
    try:
        offset = db.clock_offset(lambda: datetime.now(UTC))
    except Exception as exc:
        return Finding(FAIL, "clock", f"cannot read the database's clock: {exc}")
    finally:
        db.dispose()
    detail = f"{offset or 0.0:+.3f} s from the database's clock"
    if offset is not None and abs(offset) > CLOCK_TOLERANCE_SECONDS:
        return Finding(FAIL, "clock", detail, "run NTP (chrony, systemd-timesyncd) on "
                       "every host: leases compare clocks")
    return Finding(OK, "clock", detail)
