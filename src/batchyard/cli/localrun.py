"""``batchyard run``: one attempt on this machine through the server's own runtime.

The project is packed and validated as for an upload, then run by the server's
``Supervisor`` (runtime/box/supervisor.py): the same boot, SDK, channel dispatcher, log
masking, deadline kill and output collection, with ``--sandbox`` the same sandbox
detection, and requirements installed with uv into a cached environment by the same
``EnvCache``. Only the channel's answers differ (localhandlers.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchyard.cli.packing import Package
from batchyard.cli.project import Project

_MINUTE = 60.0


@dataclass(frozen=True)
class LocalResult:
    status: str
    error: str | None
    runtime_seconds: float
    outputs: tuple[str, ...]
    records: tuple[dict[str, Any], ...]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "batchyard"


def job_python() -> str:
    # As the server does (app.job_python): the base interpreter by its real path, so the
    # job sees the standard library only, not this virtual environment's packages.
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def run_locally(project: Project, package: Package, variables: Mapping[str, str],
                secret_values: tuple[str, ...], event: Mapping[str, Any], timeout_minutes: float,
                databases: Mapping[str, str], sandboxed: bool,
                show: Callable[[dict[str, Any]], None], say: Callable[[str], None]
                ) -> LocalResult:
    # The server's runtime: imported only now, so the other commands start fast.
    from batchyard.cli.localhandlers import QUERY_ANSWERS, PrintedEmail, QueryAnswers
    from batchyard.domain import codezip
    from batchyard.domain.attempts import ClaimedAttempt, LogRecord
    from batchyard.runtime.box.envcache import EnvCache
    from batchyard.runtime.box.sandbox import JobLimits, Sandbox
    from batchyard.runtime.box.sandbox_setup import detect_sandbox
    from batchyard.runtime.box.supervisor import RuntimeLimits, Supervisor
    from batchyard.sdk import JOBPATH

    manifest = codezip.inspect_code_zip(package.data, len(package.data))
    python = job_python()
    cache = cache_dir()
    work_root = Path(tempfile.mkdtemp(prefix="batchyard-run-"))
    records: list[dict[str, Any]] = []

    def write(batch: list[LogRecord], first_seq: int, used: int, truncated: bool) -> bool:
        for record in batch:
            item = {"at": record.at.isoformat(), "stream": record.stream,
                    "level": record.level, "message": record.message, "data": record.data}
            records.append(item)
            show(item)
        return True

    try:
        os.chmod(work_root, 0o711)
        _compile_sdk(JOBPATH)
        run_root = work_root
        if sandboxed:
            # The server's own choice of level and folders, in this run's temporary folder:
            # a "data folder" that stays closed, and a runtime folder for the job's side.
            data = work_root / "data"
            data.mkdir(mode=0o700)
            sandbox = detect_sandbox("auto", python, JobLimits(), data, 2_000_000_000,
                                     work_root / "runtime")
            if sandbox.placement is not None:
                python, run_root = sandbox.placement.python, sandbox.placement.work_root
        else:
            sandbox = Sandbox.unconfined()
        requests: dict[str, Any] = {"email": PrintedEmail(say, project.settings.get(
            "notify") or {})}
        if databases:
            from batchyard.cli.localdb import LocalDatabases

            requests["db"] = LocalDatabases(databases)
        elif (project.root / QUERY_ANSWERS).is_file():
            requests["db"] = QueryAnswers(project.root)
        supervisor = Supervisor(python, run_root, RuntimeLimits(
            kill_grace_seconds=0.5, log_cap_bytes=5 * 1024 * 1024,
            log_line_max_bytes=16 * 1024, artifact_cap_bytes=50 * 1024 * 1024,
            artifact_max_files=100), sandbox, requests=requests,
            environments=EnvCache(cache / "envs", python, cache / "uv-cache",
                                  2048 * 1024 * 1024, 600.0))
        retry = event.get("retry_attempt")
        attempt = ClaimedAttempt(
            execution_id=f"local-{secrets.token_hex(4)}", account_id="local",
            job_id="local", job_name=project.name,
            number=(retry + 1) if isinstance(retry, int) and retry >= 0 else 1,
            worker="this machine", revision=0, code=package.data,
            main_parameters=manifest.main_parameters, requirements=manifest.requirements,
            variables=dict(variables), secret_values=secret_values,
            deadline_seconds=timeout_minutes * _MINUTE,
            timeout_seconds=timeout_minutes * _MINUTE,
            params={"body": event.get("body", {}),
                    "query_string_parameters": event.get("query_string_parameters", {})},
            source=str(event.get("source") or "api"),
            database_access="db" in requests, log_seq=0, log_bytes=0, log_truncated=False)
        result = supervisor.run(attempt, write)
        if result.logs is not None:
            write(list(result.logs.records), 0, 0, False)
        outputs = _write_outputs(project.root / "output", result.artifacts)
        return LocalResult(result.outcome.value, result.error, result.runtime_seconds,
                           outputs, tuple(records))
    finally:
        shutil.rmtree(work_root, ignore_errors=True)


def _compile_sdk(jobpath: Path) -> None:
    """The job runs with -B: the SDK's bytecode is made once (as the server does at start)."""
    import compileall

    compileall.compile_dir(str(jobpath), quiet=1)


def _write_outputs(folder: Path, artifacts: Any) -> tuple[str, ...]:
    """The run's outputs replace the last run's in ./output."""
    shutil.rmtree(folder, ignore_errors=True)
    written = []
    for artifact in artifacts:
        target = folder / artifact.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(artifact.content)
        written.append(artifact.name)
    return tuple(written)
