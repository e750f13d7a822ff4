"""Operator commands: ``backup``, ``restore``, ``check``, ``doctor`` (issue 13)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from batchyard.config import Settings


DataDir = Annotated[Path | None, typer.Option(help="The data folder (BATCHYARD_DATA_DIR).")]


def _settings(data_dir: Path | None) -> Settings:
    # Imported when a command runs: `batchyard --help` loads none of the server stack.
    from batchyard.config import Settings

    overrides = {"data_dir": data_dir} if data_dir is not None else {}
    return Settings(**overrides).load_file_secrets()  # type: ignore[arg-type]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"batchyard: {message}", err=True)
    return typer.Exit(code=1)


def backup(
    to: Annotated[Path, typer.Option("--to", help="The backup file to write.")],
    include_keys: Annotated[bool, typer.Option(
        help="Also copy the data folder's secret.key and operator.token.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Copy the store consistently while the server runs (SQLite's online backup API)."""
    from batchyard.store.maintenance import (
        PG_DUMP_ADVICE,
        WITHOUT_KEYS,
        MaintenanceError,
        backup_sqlite,
    )

    settings = _settings(data_dir)
    if not settings.resolved_database_url.startswith("sqlite"):
        raise _fail(PG_DUMP_ADVICE)
    try:
        report = backup_sqlite(settings.data_dir / "batchyard.sqlite3", settings.data_dir, to,
                               include_keys)
    except MaintenanceError as exc:
        raise _fail(exc.message) from None
    typer.echo(f"backup written to {report.path} ({report.size} bytes, migration "
               f"{report.revision})")
    if report.keys:
        typer.echo(f"it includes {', '.join(report.keys)}: keep the file as secret as they are")
    else:
        typer.echo(WITHOUT_KEYS)
        if settings.secret_key is not None:
            typer.echo("(this server's key comes from BATCHYARD_SECRET_KEY, not the folder)")


def restore(
    backup_file: Annotated[Path, typer.Argument(help="A file made by batchyard backup.")],
    data_dir: DataDir = None,
) -> None:
    """Unpack a backup into an empty data folder, then migrate and check it."""
    from batchyard.store.db import Database
    from batchyard.store.maintenance import MaintenanceError, check_store, restore_sqlite

    settings = _settings(data_dir)
    if not settings.resolved_database_url.startswith("sqlite"):
        raise _fail("BATCHYARD_DATABASE_URL names a PostgreSQL store: restore it with "
                    "pg_restore")
    try:
        manifest = restore_sqlite(backup_file, settings.data_dir)
    except MaintenanceError as exc:
        raise _fail(exc.message) from None
    db = Database(settings.resolved_database_url, pool_size=1)
    try:
        db.migrate()
        problems = check_store(db)
    finally:
        db.dispose()
    typer.echo(f"restored {backup_file} (taken {manifest.get('created_at')}) into "
               f"{settings.data_dir.resolve()}")
    if not manifest.get("keys"):
        typer.echo("The backup held no keys: give this server the original secret.key "
                   "(copy it into the folder or set BATCHYARD_SECRET_KEY), or its secrets "
                   "cannot be decrypted.")
    for problem in problems:
        typer.echo(f"problem: {problem}", err=True)
    if problems:
        raise typer.Exit(code=1)


def check(data_dir: DataDir = None) -> None:
    """Verify a store: migrations, integrity, references (orphan rows and blobs)."""
    from batchyard.store.db import Database
    from batchyard.store.maintenance import check_store

    settings = _settings(data_dir)
    db = Database(settings.resolved_database_url, pool_size=1)
    try:
        problems = check_store(db)
    finally:
        db.dispose()
    for problem in problems:
        typer.echo(f"problem: {problem}")
    if problems:
        raise typer.Exit(code=1)
    typer.echo("the store is sound: migrated, intact, no orphan rows")


def doctor(data_dir: DataDir = None) -> None:
    """Check what this host gives the server: each finding with its fix."""
    from batchyard.cli.doctor import FAIL, run_checks

    findings = run_checks(_settings(data_dir))
    for finding in findings:
        typer.echo(finding.line())
    if any(finding.level == FAIL for finding in findings):
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    for command in (backup, restore, check, doctor):
        app.command()(command)
