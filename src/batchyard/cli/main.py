"""``batchyard serve`` and friends. Every flag has a BATCHYARD_* environment twin."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from batchyard.cli.roles import run_server, worker
from batchyard.config import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="batchyard: scheduled and API-invoked Python batch jobs.")


@app.callback()
def _root() -> None:
    """batchyard: scheduled and API-invoked Python batch jobs."""


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder for all stored data.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Worker slots (0: no worker role, an alias of --role without worker).")] = None,
    demo: Annotated[bool, typer.Option(help="Create/print the demo account and job.")] = False,
    role: Annotated[str | None, typer.Option(
        help="What this process does: a comma-separated subset of api,scheduler,worker "
             "(default all).")] = None,
) -> None:
    """Run the API, the scheduler and the worker pool (or the roles given) in one process."""
    overrides = {k: v for k, v in {"host": host, "port": port, "data_dir": data_dir,
                                   "workers": workers, "roles": role}.items() if v is not None}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from batchyard.app import Server
    from batchyard.nodelock import DataFolderBusy

    try:
        server = Server(settings)
    except DataFolderBusy as exc:
        typer.echo(f"batchyard: {exc.message}", err=True)
        raise typer.Exit(code=1) from None
    except ValueError as exc:  # roles
        typer.echo(f"batchyard: {exc}", err=True)
        raise typer.Exit(code=2) from None
    url = settings.public_url or f"http://{settings.host}:{settings.port}"
    typer.echo(f"batchyard {settings.resolved_database_url.split(':', 1)[0]} store at "
               f"{server.data_dir}")
    if server.operator_token_generated:
        typer.echo(f"Operator token (saved in {server.data_dir / 'operator.token'}): "
                   f"{server.operator_token}")
    if demo:
        from batchyard.demo import ensure_demo

        info = ensure_demo(server.platform, server.data_dir)
        typer.echo(f"\nbatchyard is at {url}  (API docs: {url}/docs)")
        typer.echo(f"Demo API key: {info.api_key}")
        typer.echo("Check it:      curl -s -H 'Authorization: Bearer "
                   f"{info.api_key}' {url}/api/v1/me")
        typer.echo("Run the demo:  curl -s -X POST -H 'Authorization: Bearer "
                   f"{info.api_key}' -H 'Content-Type: application/json' "
                   f"-d '{{\"name\": \"you\"}}' {url}/api/v1/jobs/{info.job_id}/invoke")
        typer.echo("Then read it:  curl -s -H 'Authorization: Bearer "
                   f"{info.api_key}' {url}/api/v1/executions/<execution_id>\n")
    elif "api" in server.roles:
        typer.echo(f"batchyard is at {url}")
    run_server(server)


app.command()(worker)


if __name__ == "__main__":
    app()
