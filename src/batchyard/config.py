"""The server's configuration: one typed object, built once in the entry point.

Every field has a ``BATCHYARD_<NAME>`` environment twin; secrets may also come
from ``BATCHYARD_<NAME>_FILE``. Nothing here is read at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AUTO_WORKERS = -1
MAX_DEFAULT_WORKERS = 8


def default_workers(job_memory_bytes: int) -> int:
    """Worker slots when none are configured: jobs mostly wait on I/O (APIs, databases), so
    not one per CPU; as many as the host's memory holds at the per-job memory limit, at
    least 2 and at most 8 (the plan's max_concurrent_executions keeps one account from
    holding them all)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 0
    return max(2, min(MAX_DEFAULT_WORKERS, memory // job_memory_bytes))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCHYARD_", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str | None = None
    host: str = "127.0.0.1"
    # The server's own log: "text" (human-readable) or "json" (one object per line).
    log_format: Literal["text", "json"] = "text"
    port: int = 8080
    public_url: str | None = None
    operator_token: SecretStr | None = None
    secret_key: SecretStr | None = None
    # Worker slots of this process (0: API only); AUTO_WORKERS sizes them (default_workers).
    workers: int = Field(default=AUTO_WORKERS, ge=AUTO_WORKERS, le=256)
    # How often an idle worker re-checks the queue for work queued by another
    # process; work queued in this process wakes a worker at once.
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    lease_seconds: float = Field(default=30.0, gt=1)
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    kill_grace_seconds: float = Field(default=0.5, ge=0)
    log_cap_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    log_line_max_bytes: int = Field(default=16 * 1024, ge=256)
    # Retention (issue 13): executions follow their plan's retention_days; the audit
    # trail is kept this long; the retention loop deletes this many executions per
    # transaction (short write locks) and looks again after the interval.
    audit_retention_days: int = Field(default=365, ge=1)
    retention_batch_size: int = Field(default=200, ge=1, le=10_000)
    retention_interval_seconds: float = Field(default=300.0, gt=0)
    # How often jobs' quiet-schedule and duration alerts are checked (domain/alerts.py).
    alerts_interval_seconds: float = Field(default=30.0, gt=0)
    # uv's download cache (<data>/uv-cache), cleaned by the retention loop above this.
    uv_cache_max_mb: int = Field(default=2048, ge=1)
    artifact_cap_bytes: int = Field(default=50 * 1024 * 1024, ge=0)
    artifact_max_files: int = Field(default=100, ge=0)
    # Dependencies (SPEC 5): environments of jobs' requirements.txt, least recently used
    # evicted above this total; an install longer than the timeout fails the attempt
    # (install time is not the job's run time).
    env_cache_max_mb: int = Field(default=2048, ge=1)
    env_install_timeout_seconds: float = Field(default=600.0, gt=0)
    # Preparing an attempt's folder (extracting its code), installs excluded: past it the
    # attempt fails with reason setup_failed.
    setup_timeout_seconds: float = Field(default=120.0, gt=0)
    # E-mail (SPEC 5, Notifications): no host = nothing is sent, and jobs are told so.
    smtp_host: str | None = None
    # None: the usual port of the TLS mode (25, 587 for starttls, 465 for ssl).
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_tls: Literal["none", "starttls", "ssl"] = "starttls"
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "batchyard@localhost"
    smtp_timeout_seconds: float = Field(default=30.0, gt=0)
    email_attachments_max_bytes: int = Field(default=10 * 1024 * 1024, ge=0)
    # The outbox: summary e-mails and webhooks are retried with exponential backoff
    # (base, 2x, 4x, ...) up to this many tries.
    delivery_max_tries: int = Field(default=5, ge=1, le=50)
    delivery_backoff_seconds: float = Field(default=30.0, gt=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # Webhooks go out from the server itself, not from the sandbox: by default they may
    # not reach loopback, private or link-local addresses (this host, its LAN, metadata).
    webhook_allow_private: bool = False
    python: str | None = None
    # Sandbox (SPEC 5, Isolation): "auto" = bubblewrap where it runs here, else the rlimits
    # launcher; "bubblewrap" refuses to start without it; "rlimits" (or its older name
    # "none") = the rlimits launcher. Where neither gives each attempt a uid of its own, no
    # job runs (sandbox_unavailable). "off" = no confinement at all, jobs as the server's
    # uid: the only way to that (where every server already runs in its own disposable
    # machine or container, and to measure the sandbox's cost).
    sandbox: Literal["auto", "bubblewrap", "rlimits", "none", "off"] = "auto"
    # The rlimits level's runtime folder (runtime/box/jobroot.py): the SDK copy, the attempts'
    # folders and the requirements environments, reachable by the job uids; None =
    # /var/lib/batchyard/runtime-<digest of the data folder's path>.
    runtime_dir: Path | None = None
    # Limits of every job process (soft = hard); the processes limit counts the whole
    # attempt (its own uid). CPU seconds 0 = none: the deadline bounds wall time anyway.
    job_memory_bytes: int = Field(default=1024 ** 3, ge=64 * 1024 ** 2)
    job_max_processes: int = Field(default=256, ge=8)
    job_max_open_files: int = Field(default=1024, ge=64)
    job_max_file_bytes: int = Field(default=256 * 1024 ** 2, ge=1024 ** 2)
    job_cpu_seconds: int = Field(default=0, ge=0)
    # What an attempt's working, output and tmp folders may hold together (0: no limit).
    job_max_disk_bytes: int = Field(default=2 * 1024 ** 3, ge=0)
    # Warm starts (runtime/box/warm.py): interpreters spawned ahead of their attempts, in
    # their own sandbox and uid, one attempt each; at most this many in all (0: off),
    # this many per key (requirements), this much resident memory, for keys whose
    # attempts started in the last warm_idle_seconds.
    warm_pool_size: int = Field(default=4, ge=0, le=256)
    warm_pool_per_key: int = Field(default=4, ge=1, le=256)
    warm_pool_max_mb: int = Field(default=256, ge=0)
    warm_idle_seconds: float = Field(default=300.0, gt=0)
    # When the server runs as root each attempt gets its own uid from this base + n.
    sandbox_uid_base: int = Field(default=2_000_000_000, ge=1000, le=4_000_000_000)
    # "public": an nftables table refuses the job uids this host (loopback, its own
    # addresses) and private, link-local and CGNAT networks (runtime/box/netguard.py); where it
    # cannot be installed (not root, no nft) the server starts anyway and says so. "open":
    # jobs reach everything the server's host reaches.
    job_network: Literal["public", "open"] = "public"
    # What this process does: a comma-separated subset of api, scheduler, worker (default
    # all: the embedded mode). Any number of each may share one PostgreSQL store.
    roles: str = "api,scheduler,worker"
    # Older switches, kept as aliases: scheduler=false drops the scheduler role, and
    # workers=0 the worker role.
    scheduler: bool = True
    # /metrics without the operator token, on 127.0.0.1 only (0: not served).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # What this process's worker advertises (e.g. "gpu,region=eu"); a job whose
    # worker_labels are not all among them is not claimed here.
    worker_labels: str = ""
    # How often this process's row in the node registry is renewed (health's node list).
    node_heartbeat_seconds: float = Field(default=5.0, gt=0)
    # Database access (SPEC 6): limits of each query the broker runs for a job.
    db_statement_timeout_seconds: float = Field(default=300.0, gt=0)
    db_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    db_max_rows: int = Field(default=100_000, ge=1)
    db_max_reply_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite:///{(self.data_dir / 'batchyard.sqlite3').resolve()}"

    @model_validator(mode="after")
    def _size_worker_pool(self) -> Settings:
        if self.workers == AUTO_WORKERS:
            self.workers = default_workers(self.job_memory_bytes)
        return self

    def load_file_secrets(self) -> Settings:
        """Apply ``BATCHYARD_*_FILE`` twins so secrets can live in mounted files."""
        updates: dict[str, SecretStr] = {}
        for name in ("operator_token", "secret_key", "smtp_password"):
            path = os.environ.get(f"BATCHYARD_{name.upper()}_FILE")
            if path and getattr(self, name) is None:
                updates[name] = SecretStr(Path(path).read_text().strip())
        return self.model_copy(update=updates) if updates else self


def normalise_database_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and pick the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url
