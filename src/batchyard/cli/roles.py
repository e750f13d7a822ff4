"""Running a process by role: ``serve --role ...`` without the API, and ``batchyard worker``
(a worker on the shared database, or a remote one over HTTP with a worker token)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from batchyard.app import Server

# The server stack (uvicorn, the configuration) is imported when a command runs:
# `batchyard --help` and the developer kit's commands load none of it.


def _until_signalled() -> threading.Event:
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    return stop


def run_server(server: Server) -> None:
    """The API in front when this process has that role; else its loops until SIGTERM."""
    settings = server.settings
    if "api" in server.roles:
        import uvicorn

        uvicorn.run(server.app, host=settings.host, port=settings.port, log_level="warning",
                    timeout_graceful_shutdown=15)
        return
    stop = _until_signalled()
    server.start_background()
    typer.echo(f"batchyard {','.join(sorted(server.roles))} node {server.node_id} running")
    try:
        stop.wait()
    finally:
        server.stop()


def worker(
    server: Annotated[str | None, typer.Option(
        help="The control plane's URL: run as a remote worker over HTTP(S), with no "
             "database credentials (needs --token-file).")] = None,
    token_file: Annotated[Path | None, typer.Option(
        help="File holding this worker's token (POST /api/v1/admin/workers).")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="Folder for this worker's node id, code cache and environments.")] = None,
    workers: Annotated[int | None, typer.Option(help="Attempts run at once.")] = None,
    labels: Annotated[str | None, typer.Option(
        help="Labels this worker advertises, e.g. gpu,region=eu.")] = None,
) -> None:
    """A worker-only process: on the shared PostgreSQL (BATCHYARD_DATABASE_URL), or a
    remote worker of the control plane at --server."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from batchyard.config import Settings

    overrides = {k: v for k, v in {"data_dir": data_dir, "workers": workers,
                                   "worker_labels": labels}.items() if v is not None}
    if server is None:
        from batchyard.app import Server
        from batchyard.nodelock import DataFolderBusy

        settings = Settings(roles="worker", **overrides)  # type: ignore[arg-type]
        if settings.workers == 0:
            typer.echo("batchyard: a worker needs --workers of at least 1", err=True)
            raise typer.Exit(code=2)
        if settings.resolved_database_url.startswith("sqlite"):
            typer.echo("batchyard: a worker-only process shares a PostgreSQL store with the "
                       "API (set BATCHYARD_DATABASE_URL), or runs remote (--server URL "
                       "--token-file F); with SQLite, `batchyard serve` runs the workers",
                       err=True)
            raise typer.Exit(code=2)
        try:
            run_server(Server(settings))
        except DataFolderBusy as exc:
            typer.echo(f"batchyard: {exc.message}", err=True)
            raise typer.Exit(code=1) from None
        return
    if token_file is None:
        typer.echo("batchyard: a remote worker needs --token-file", err=True)
        raise typer.Exit(code=2)
    from batchyard.domain.attempts import WorkerPortClosed
    from batchyard.remote_worker import RemoteWorker

    settings = Settings(**overrides)  # type: ignore[arg-type]
    token = token_file.read_text().strip()
    stop = _until_signalled()
    try:
        refused = RemoteWorker(settings, server, token).run(stop) != 0
    except WorkerPortClosed:
        refused = True
    if refused:
        typer.echo("batchyard: the control plane refused this worker's token (revoked or "
                   "unknown); create a new one with POST /api/v1/admin/workers", err=True)
        raise typer.Exit(code=1)
