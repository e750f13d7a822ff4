"""Backup, restore and checks of a store (issue 13): the file-level half, no services.

A backup is a tar file: ``manifest.json``, the SQLite database copied with SQLite's
online backup API (one step: a consistent snapshot that, in WAL mode, never blocks the
server's writers) and, only when asked, the data folder's keys. PostgreSQL deployments
use ``pg_dump`` (see ``PG_DUMP_ADVICE``).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Table, and_, func, select

from batchyard.errors import BatchyardError
from batchyard.store.db import MIGRATIONS, Database
from batchyard.store.models import Base

FORMAT = 1
DATABASE_MEMBER = "batchyard.sqlite3"
MANIFEST_MEMBER = "manifest.json"
# What the data folder holds besides the database that a restored server needs.
KEY_FILES = ("secret.key", "operator.token")
PG_DUMP_ADVICE = (
    "This store is PostgreSQL: back it up with PostgreSQL's own tools, e.g.\n"
    "  pg_dump --format=custom --file=batchyard.dump \"$BATCHYARD_DATABASE_URL\"\n"
    "and restore with pg_restore --clean --dbname=... batchyard.dump. pg_dump takes a\n"
    "consistent snapshot while the server runs. Keep the data folder's secret.key (or\n"
    "BATCHYARD_SECRET_KEY) with it: secrets in the dump cannot be decrypted without it.")
WITHOUT_KEYS = ("The backup holds no keys (--include-keys was not given): the secret "
                "variables, webhook secrets and database URLs in it can only be decrypted "
                "with this data folder's secret.key (or BATCHYARD_SECRET_KEY); keep that "
                "key safe separately.")


class MaintenanceError(BatchyardError):
    code = "maintenance_error"


@dataclass(frozen=True)
class BackupReport:
    path: Path
    size: int
    revision: str | None
    keys: tuple[str, ...]


def head_revision() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def backup_sqlite(database_file: Path, data_dir: Path, target: Path,
                  include_keys: bool) -> BackupReport:
    if not database_file.exists():
        raise MaintenanceError(f"No database at {database_file}")
    target = target.resolve()
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        copy = Path(scratch) / DATABASE_MEMBER
        source = sqlite3.connect(f"file:{database_file}?mode=ro", uri=True)
        destination = sqlite3.connect(copy)
        try:
            with destination:
                source.backup(destination)  # pages=-1: one step, one snapshot
            revision = destination.execute(
                "SELECT version_num FROM alembic_version").fetchone()
        finally:
            destination.close()
            source.close()
        keys = tuple(name for name in KEY_FILES if include_keys and (data_dir / name).exists())
        manifest: dict[str, Any] = {"format": FORMAT, "created_at": datetime.now(UTC).isoformat(),
                    "database": "sqlite", "revision": revision[0] if revision else None,
                    "keys": list(keys)}
        partial = Path(scratch) / "backup.tar"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w") as archive:
            _add_bytes(archive, MANIFEST_MEMBER, json.dumps(manifest, indent=2).encode())
            archive.add(copy, DATABASE_MEMBER)
            for name in keys:
                archive.add(data_dir / name, name)
        os.replace(partial, target)
    return BackupReport(target, target.stat().st_size, manifest["revision"], keys)


def restore_sqlite(backup: Path, data_dir: Path) -> dict[str, Any]:
    """Unpack ``backup`` into ``data_dir``, which must be empty (or not exist)."""
    if data_dir.exists() and any(data_dir.iterdir()):
        raise MaintenanceError(f"{data_dir} is not empty: restore only into an empty folder")
    try:
        archive = tarfile.open(backup, mode="r:")  # noqa: SIM115 (closed by the with below)
    except (OSError, tarfile.TarError) as exc:
        raise MaintenanceError(f"{backup} is not a batchyard backup: {exc}") from None
    with archive:
        manifest = _read_manifest(archive)
        wanted = {DATABASE_MEMBER, *manifest.get("keys", [])}
        members = {member.name: member for member in archive.getmembers()}
        if not wanted <= set(members) or not set(wanted) <= {DATABASE_MEMBER, *KEY_FILES}:
            raise MaintenanceError(f"{backup} is incomplete or holds unexpected files")
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        for name in sorted(wanted):
            member = members[name]
            source = archive.extractfile(member) if member.isfile() else None
            if source is None:
                raise MaintenanceError(f"{name} in {backup} is not a regular file")
            # Names are ours (checked above): no path from the archive is ever followed.
            fd = os.open(data_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                while chunk := source.read(1024 * 1024):
                    handle.write(chunk)
    return manifest


def _read_manifest(archive: tarfile.TarFile) -> dict[str, Any]:
    try:
        member = archive.extractfile(MANIFEST_MEMBER)
        manifest = json.loads(member.read()) if member is not None else None
    except (KeyError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MaintenanceError("not a batchyard backup (no manifest of format 1)")
    return manifest


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    archive.addfile(info, io.BytesIO(data))


def check_store(db: Database) -> list[str]:
    """Problems found (empty: the store is sound): migrations, integrity, references."""
    problems: list[str] = []
    head, current = head_revision(), current_revision(db)
    if current != head:
        problems.append(f"migrations: the store is at {current or 'nothing'}, the code at "
                        f"{head} (batchyard serve migrates at start)")
        return problems
    if db.is_sqlite:
        with db.engine.connect() as connection:
            verdict = connection.exec_driver_sql("PRAGMA quick_check").scalars().all()
        if verdict != ["ok"]:
            problems.append("sqlite integrity: " + "; ".join(map(str, verdict[:5])))
    # Every reference, whether or not the database enforces it (SQLite only does with
    # foreign_keys on): rows pointing at nothing are orphans, blobs included.
    with db.read() as session:
        for table in Base.metadata.sorted_tables:
            for constraint in table.foreign_key_constraints:
                parent: Table = constraint.referred_table
                pairs = [(element.parent, element.column) for element in constraint.elements]
                condition = and_(*(child == target for child, target in pairs))
                orphans = session.scalar(
                    select(func.count()).select_from(
                        table.outerjoin(parent, condition))
                    .where(*(child.is_not(None) for child, _ in pairs),
                           pairs[0][1].is_(None)))
                if orphans:
                    columns = ", ".join(child.name for child, _ in pairs)
                    problems.append(f"{table.name}.{columns}: {orphans} row(s) refer to no "
                                    f"{parent.name} row")
    return problems
