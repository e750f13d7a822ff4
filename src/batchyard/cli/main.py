"""``batchyard``: the server (``serve``) and the developer kit, in one command.

Every flag of ``serve`` has a BATCHYARD_* environment twin. The kit's commands import
what they need when they run: ``batchyard --help`` loads neither the server stack nor
the HTTP client.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from batchyard.cli import account, kit, operate
from batchyard.cli.common import chosen
from batchyard.cli.ops import register as register_operations
from batchyard.cli.roles import run_server, worker
from batchyard.logs import configure_logging

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="batchyard: scheduled and API-invoked Python batch jobs.\n\n"
                       "Exit codes: 0 ok, 1 job failed, 2 usage or invalid input, "
                       "3 refused by a plan limit, 4 not found / forbidden / bad key, "
                       "5 server unreachable or failing.")


@app.callback()
def _root(profile: Annotated[str | None, typer.Option(
        "--profile", "-p", help="Profile to use (BATCHYARD_PROFILE; default: the default "
                                "profile).")] = None) -> None:
    """batchyard: scheduled and API-invoked Python batch jobs."""
    chosen.profile = profile


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
    from batchyard.config import Settings

    overrides = {k: v for k, v in {"host": host, "port": port, "data_dir": data_dir,
                                   "workers": workers, "roles": role}.items() if v is not None}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    configure_logging(settings.log_format)
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
        typer.echo(f"Sign in to the console (one-time link, 72 h): {url}/invite/"
                   f"{info.invite_token}")
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


# The developer kit (and the vendor's lsbatch verbs as aliases).
app.command()(account.login)
app.command("configure", help="The vendor's verb: same as login.")(account.login)
app.command()(account.whoami)
app.command()(kit.init)
app.command()(kit.run)
app.command()(kit.pack)
app.command("deploy")(kit.deploy_command)
app.command()(kit.save)
app.command()(kit.publish)
app.command()(kit.install)
app.command()(kit.uninstall)
app.command()(operate.jobs)
app.command()(operate.invoke)
app.command()(operate.executions)
app.command()(operate.logs)
app.command()(operate.artifacts)
app.command()(operate.cancel)
app.command()(operate.usage)
register_operations(app)


def main() -> None:
    """The ``batchyard`` entry point: a plain ``run`` skips typer's command building
    (fastrun.py: the job's start is the figure developers wait for); all else is typer's."""
    from batchyard.cli.fastrun import run_if_plain

    status = run_if_plain(sys.argv[1:])
    if status is not None:
        sys.exit(status)
    app()


if __name__ == "__main__":
    main()
