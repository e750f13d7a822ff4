"""Composition root: settings → store → services → worker pool → API."""

from __future__ import annotations

import compileall
import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from batchyard import __version__
from batchyard.api.deps import api_key_valid
from batchyard.api.errors import install_error_handlers
from batchyard.api.guard import RequestGuard, operator_or_key
from batchyard.api.metrics import install_request_metrics
from batchyard.api.metrics import router as metrics_router
from batchyard.api.routes_account import router as account_router
from batchyard.api.routes_admin import router as admin_router
from batchyard.api.routes_admin_workers import router as admin_workers_router
from batchyard.api.routes_executions import router as executions_router
from batchyard.api.routes_jobs import router as jobs_router
from batchyard.api.routes_worker import ClaimWaiters
from batchyard.api.routes_worker import router as worker_router
from batchyard.config import Settings
from batchyard.domain.clock import SystemClock
from batchyard.nodelock import take_node_slot
from batchyard.runtime.box.envcache import EnvCache
from batchyard.runtime.box.netguard import install_network_guard
from batchyard.runtime.box.sandbox import JobLimits, Sandbox
from batchyard.runtime.box.sandbox_setup import detect_sandbox
from batchyard.runtime.box.supervisor import RuntimeLimits, Supervisor
from batchyard.runtime.box.workspace import lock_work_root, share_work_root
from batchyard.runtime.channel.dbbroker import DatabaseBroker
from batchyard.runtime.channel.dbrun import QueryLimits
from batchyard.runtime.channel.mailer import JobEmailHandler
from batchyard.runtime.loops.alert_loop import AlertLoop
from batchyard.runtime.loops.delivery_loop import DeliveryLoop, DeliveryPolicy
from batchyard.runtime.loops.node_loop import NodeHeartbeat
from batchyard.runtime.loops.pool import PoolTiming, Sweeper, WorkerPool
from batchyard.runtime.loops.retention_loop import RetentionLoop, RetentionPolicy, UvCache
from batchyard.runtime.loops.scheduler_loop import SchedulerLoop
from batchyard.runtime.outbound.smtp import SmtpConfig, SmtpMailer
from batchyard.runtime.outbound.webhooks import WebhookPoster
from batchyard.runtime.port_local import LocalPort
from batchyard.sdk import JOBPATH
from batchyard.services import nodes, queue
from batchyard.services.context import Platform
from batchyard.services.invoke_batcher import InvocationBatcher
from batchyard.services.metrics import PROCESS, StoreCollector
from batchyard.services.secrets import SecretBox
from batchyard.store.db import Database
from batchyard.web.console import install_console

if TYPE_CHECKING:
    from batchyard.store.wakeups import QueueWakeups

log = logging.getLogger("batchyard")


def job_python(configured: str | None) -> str:
    """The interpreter for job code: the base interpreter by its real path.

    Spawning it directly (with -I -S) skips pyenv shims and site .pth files,
    which cost 40-90 ms per start; job code sees only the standard library.
    """
    if configured:
        return configured
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def _read_or_create(path: Path, make: str) -> str:
    if path.exists():
        return path.read_text().strip()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(make)
    return make


def _seal(data_dir: Path) -> None:
    """The data folder (database, secret key, operator token) is the server's alone, at
    every level: closed, and each file in it private too."""
    os.chmod(data_dir, 0o700)
    for entry in data_dir.iterdir():
        if entry.is_file() and not entry.is_symlink():
            os.chmod(entry, entry.stat().st_mode & 0o700)


def _log_sandbox(sandbox: Sandbox) -> None:
    report = sandbox.report
    if not sandbox.runs_jobs:
        log.error("NO JOB WILL RUN: this host cannot isolate them: %s. To change: %s. "
                  "(The API serves; each execution ends failed, reason sandbox_unavailable.)",
                  report.problem, report.fix)
    for note in report.notes:
        log.warning("job isolation: %s", note)
    log.info("job isolation: %s", sandbox.description)
    placement = sandbox.placement
    if sandbox.runs_jobs and placement is not None:
        log.info("jobs run %s; their folders: %s", placement.python,
                 placement.runtime_dir or placement.work_root)


def sandbox_report(sandbox: Sandbox) -> dict[str, object]:
    """The operator's view of the sandbox (GET /api/v1/health with the operator token)."""
    placement = sandbox.placement
    return {"level": sandbox.level.value, "jobs_run": sandbox.runs_jobs,
            "problem": sandbox.report.problem, "fix": sandbox.report.fix,
            "notes": list(sandbox.report.notes),
            "python": placement.python if placement else None,
            "runtime_dir": str(placement.runtime_dir) if placement and
            placement.runtime_dir else None,
            "work_dir": str(placement.work_root) if placement else None,
            "job_uids": list(sandbox.uid_range) if sandbox.uid_range else None}


def build_supervisor(settings: Settings, data_dir: Path) -> Supervisor:
    """The attempt box of a worker host (this server's or a remote worker's): the sandbox
    decided, the network guard installed, the environment cache; no request handlers."""
    # Children run with -B; compile the SDK once so their imports stay fast.
    compileall.compile_dir(str(JOBPATH), quiet=1)
    # Sandbox: decided once here (a probe run of the real command as a job uid).
    sandbox = detect_sandbox(
        settings.sandbox, job_python(settings.python), JobLimits(
            memory_bytes=settings.job_memory_bytes, processes=settings.job_max_processes,
            open_files=settings.job_max_open_files, file_bytes=settings.job_max_file_bytes,
            cpu_seconds=settings.job_cpu_seconds), data_dir,
        settings.sandbox_uid_base, settings.runtime_dir)
    placement = sandbox.placement
    assert placement is not None
    python, work_root = placement.python, placement.work_root
    if sandbox.runs_jobs:
        # Before any attempt runs; the table outlives this process (runtime/box/netguard.py).
        guard = install_network_guard(settings.job_network, sandbox.uid_range)
        sandbox.add_note(guard.description)
        sandbox.network_guard = guard.table is not None
    _log_sandbox(sandbox)
    # What a killed previous life left (its attempts are retried by sweep_lost, in folders
    # of their own): one SIGKILL's folders per boot would fill the disk over months.
    work_root.parent.mkdir(parents=True, exist_ok=True)
    work_lock, alone = lock_work_root(work_root)
    try:
        swept = sandbox.sweep_leftovers(work_root, exclusive=alone)
    finally:
        share_work_root(work_lock)
    if swept:
        log.info("removed %d attempt folders left in %s by an earlier run", swept, work_root)
    supervisor = Supervisor(python, work_root, RuntimeLimits(
        kill_grace_seconds=settings.kill_grace_seconds,
        log_cap_bytes=settings.log_cap_bytes, log_line_max_bytes=settings.log_line_max_bytes,
        artifact_cap_bytes=settings.artifact_cap_bytes,
        artifact_max_files=settings.artifact_max_files, disk_bytes=settings.job_max_disk_bytes,
        setup_timeout_seconds=settings.setup_timeout_seconds), sandbox)
    supervisor.work_root_lock = work_lock
    # Dependencies: jobs' requirements.txt, installed by uv into cached environments.
    supervisor.environments = EnvCache(
        placement.env_root, python, placement.uv_cache, settings.env_cache_max_mb * 1024 * 1024,
        settings.env_install_timeout_seconds)
    # Warm starts: after the sandbox and the network guard, so that each box is the cold
    # path's to the byte.
    supervisor.enable_warm_starts(settings.warm_pool_size, settings.warm_pool_per_key,
                                  settings.warm_idle_seconds,
                                  settings.warm_pool_max_mb * 1024 * 1024)
    return supervisor


class Server:
    """Everything one ``batchyard serve`` process runs, built from one Settings object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.load_file_secrets()
        self.roles = process_roles(self.settings)
        if "worker" not in self.roles:
            self.settings = self.settings.model_copy(update={"workers": 0})
        data_dir = self.settings.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        self.data_dir = data_dir
        # Before anything touches the store: a second process on a SQLite data folder is
        # refused here, and on PostgreSQL each process gets a node id of its own.
        base_id = _read_or_create(data_dir / "node.id", "node-" + secrets.token_hex(6))
        self.slot = take_node_slot(data_dir, base_id,
                                   shared_store=not self.settings.resolved_database_url
                                   .startswith("sqlite"))
        self.node_id = self.slot.node_id
        self.db = Database(self.settings.resolved_database_url,
                           pool_size=max(5, self.settings.workers + 5))
        self.db.migrate()
        secret = self.settings.secret_key.get_secret_value() if self.settings.secret_key \
            else None
        box = SecretBox.from_data_dir(data_dir, secret)
        if self.settings.operator_token is not None:
            self.operator_token = self.settings.operator_token.get_secret_value()
            self.operator_token_generated = False
        else:
            path = data_dir / "operator.token"
            self.operator_token_generated = not path.exists()
            self.operator_token = _read_or_create(path, "byo_" + secrets.token_urlsafe(32))
        self.platform = Platform(db=self.db, clock=SystemClock(), secrets=box)
        _seal(data_dir)
        self.supervisor = build_supervisor(self.settings, data_dir)
        smtp = SmtpConfig.from_settings(self.settings)
        mailer = SmtpMailer(smtp) if smtp is not None else None
        if smtp is None:
            log.warning("no SMTP server configured (BATCHYARD_SMTP_HOST): e-mail is not sent")
        # Requests job code makes over its channel, answered here with the server's powers.
        self.supervisor.requests["email"] = JobEmailHandler(
            self.platform, mailer, self.supervisor.work_root,
            self.settings.email_attachments_max_bytes)
        boot = secrets.token_hex(3)
        timing = PoolTiming(poll_interval=self.settings.poll_interval_seconds,
                            lease_seconds=self.settings.lease_seconds,
                            heartbeat_seconds=self.settings.heartbeat_seconds,
                            sweep_interval=self.settings.sweep_interval_seconds)
        self.pool = WorkerPool(LocalPort(self.platform,
                                         worker_labels(self.settings.worker_labels)),
                               self.supervisor,
                               f"{self.node_id}:{boot}", self.settings.workers, timing,
                               self.platform.clock.now)
        self.sweeper = Sweeper(self.platform, timing)
        # Remote workers' claims waiting in this process (api/routes_worker.py).
        self.claim_waiters = ClaimWaiters()
        # On PostgreSQL, work queued here wakes the other processes' workers too.
        self.wakeups: QueueWakeups | None = None
        if not self.db.is_sqlite:
            # Imported here: psycopg costs a server on SQLite ~20 MiB it never uses.
            from batchyard.store.wakeups import QueueWakeups

            self.wakeups = QueueWakeups(self.db.url, self._work_queued_elsewhere)
        self.platform.on_queued = self._work_queued_here
        self.platform.on_cancel = self.pool.cancel
        self.delivery = DeliveryLoop(
            self.platform, mailer, WebhookPoster(self.settings.webhook_timeout_seconds,
                                                 self.settings.webhook_allow_private),
            self.settings.public_url
            or f"http://{self.settings.host}:{self.settings.port}",
            DeliveryPolicy(max_tries=self.settings.delivery_max_tries,
                           backoff_seconds=self.settings.delivery_backoff_seconds))
        self.platform.on_delivery = self.delivery.wake
        self.scheduler = SchedulerLoop(self.platform) if "scheduler" in self.roles else None
        if self.scheduler is not None:
            self.platform.on_schedule_change = self.scheduler.wake
        # Database access (SPEC 6): jobs' queries run here, on their account's database.
        self.db_broker = DatabaseBroker(self.platform, QueryLimits(
            statement_timeout_seconds=self.settings.db_statement_timeout_seconds,
            connect_timeout_seconds=self.settings.db_connect_timeout_seconds,
            max_rows=self.settings.db_max_rows,
            max_reply_bytes=self.settings.db_max_reply_bytes))
        self.supervisor.requests["db"] = self.db_broker
        environments = self.supervisor.environments
        assert environments is not None  # build_supervisor gives every box its cache
        self.retention = RetentionLoop(self.platform, RetentionPolicy(
            batch_size=self.settings.retention_batch_size,
            audit_retention_days=self.settings.audit_retention_days,
            interval_seconds=self.settings.retention_interval_seconds), UvCache(
                environments.uv_cache, self.settings.uv_cache_max_mb * 1024 * 1024,
                environments.uv, environments.uv_environment))
        self.alerts = AlertLoop(self.platform, self.settings.alerts_interval_seconds)
        # Group commit of API invocations (services/invoke_batcher.py).
        self.invocations = InvocationBatcher(self.platform)
        # Metrics (issue 13): the store's figures at each scrape, and this process's own.
        self.metrics = CollectorRegistry()
        self.metrics.register(StoreCollector(self.platform, {
            "sandbox_level": self.supervisor.sandbox.level.value,
            "network_guard": "on" if self.supervisor.sandbox.network_guard else "off"}))
        self.metrics.register(PROCESS)
        self.metrics_server: WSGIServer | None = None
        self.started_at = self.platform.clock.now()
        self.node_heartbeat = NodeHeartbeat(self.beat, self.settings.node_heartbeat_seconds)
        self.app = create_app(self)

    def start_background(self) -> None:
        # This node's previous life cannot still be running anything: take its attempts now
        # rather than waiting for their leases to expire.
        swept = queue.sweep_lost(self.platform, self.settings.lease_seconds,
                                 owner_prefix=f"{self.node_id}:")
        if swept:
            log.warning("recovered %d execution(s) interrupted by the last shutdown", swept)
        if self.settings.metrics_port:
            # No token on this one: it listens on loopback only.
            # Imported here: its http.server costs a server without the port ~3 MiB.
            from prometheus_client import start_http_server

            self.metrics_server = start_http_server(self.settings.metrics_port, "127.0.0.1",
                                                    self.metrics)[0]
        self.node_heartbeat.start()
        self.invocations.start()
        if self.wakeups is not None:
            self.wakeups.start()
        self.pool.start()
        self.sweeper.start()
        self.delivery.start()
        self.retention.start()
        self.alerts.start()
        if self.scheduler is not None:
            self.scheduler.start()

    def stop(self) -> None:
        self.invocations.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        self.retention.stop()
        self.alerts.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        self.sweeper.stop()
        self.pool.stop()
        self.supervisor.close()
        # After the pool, whose last closes write outbox rows: what is not sent by now
        # waits in the outbox for the next start.
        self.delivery.stop()
        # After the pool: no attempt is left to query.
        self.db_broker.close()
        self.node_heartbeat.stop()
        if self.wakeups is not None:
            self.wakeups.stop()
        self.db.dispose()
        self.slot.release()


    def _work_queued_elsewhere(self) -> None:
        self.pool.wake()
        self.claim_waiters.wake()

    def _work_queued_here(self) -> None:
        self._work_queued_elsewhere()
        if self.wakeups is not None:
            self.wakeups.notify()

    def beat(self) -> None:
        nodes.heartbeat(self.platform, nodes.NodeBeat(
            id=self.node_id, roles=self.roles, capacity=self.settings.workers,
            running=self.pool.running_count(), labels=worker_labels(self.settings.worker_labels),
            remote=False, started_at=self.started_at))

    def live_nodes_within(self) -> float:
        """A node is live while heard from within this many seconds: three missed beats."""
        return 3 * self.settings.node_heartbeat_seconds + 1


def process_roles(settings: Settings) -> frozenset[str]:
    """--role, less what the older switches (scheduler=false, workers=0) turn off."""
    roles = nodes.parse_roles(settings.roles)
    if not settings.scheduler:
        roles -= {"scheduler"}
    if settings.workers == 0:
        roles -= {"worker"}
    if not roles:
        raise ValueError("this process would have no role left: --workers 0 and "
                         "BATCHYARD_SCHEDULER=false turn off the worker and scheduler roles")
    return roles


def worker_labels(text: str) -> tuple[str, ...]:
    return tuple(sorted({part.strip() for part in text.split(",") if part.strip()}))


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        server.start_background()
        try:
            yield
        finally:
            server.stop()

    app = FastAPI(title="batchyard", version=__version__, lifespan=lifespan,
                  openapi_url="/api/v1/openapi.json", docs_url="/docs", redoc_url=None)
    app.state.platform = server.platform
    app.state.invocations = server.invocations
    app.state.operator_token = server.operator_token
    app.state.isolation = server.supervisor.sandbox.description
    app.state.sandbox_report = sandbox_report(server.supervisor.sandbox)
    app.state.workers = server.settings.workers
    app.state.metrics = server.metrics
    app.state.server = server
    install_error_handlers(app)
    platform = server.platform

    async def key_valid(token: str) -> bool:
        return await api_key_valid(platform, token)

    app.add_middleware(RequestGuard,
                       credentials_valid=operator_or_key(server.operator_token, key_valid))
    install_request_metrics(app, access_log=server.settings.log_format == "json")
    for router in (metrics_router, admin_router, admin_workers_router, account_router,
                   jobs_router, executions_router, worker_router):
        app.include_router(router)
    install_console(app, server.settings.public_url
                    or f"http://{server.settings.host}:{server.settings.port}")
    return app
