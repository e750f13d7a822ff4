"""What a person checks before acting on a job: the difference a publish would make, a
schedule's next runs and forecast before it is saved, the files of a code version."""

from __future__ import annotations

import difflib
import io
import zipfile
from dataclasses import dataclass
from typing import Any

from batchyard.domain import forecast as projection
from batchyard.domain.jobs import settings_from_dict
from batchyard.domain.plans import plan_from_dict
from batchyard.domain.roles import Permission
from batchyard.domain.schedules import describe_next_runs, schedule_summary, validate_schedule
from batchyard.services import forecast as forecasts
from batchyard.services import jobs
from batchyard.services.context import Actor, Platform
from batchyard.store import scoped

MAX_SHOWN_SOURCE = 200_000


@dataclass(frozen=True)
class Change:
    section: str
    name: str
    before: str
    after: str


@dataclass(frozen=True)
class SchedulePreview:
    schedule: dict[str, Any]
    summary: str
    next_runs: list[dict[str, str]]
    forecast: str
    blocked_days: int


@dataclass(frozen=True)
class CodeFiles:
    version: int
    files: list[tuple[str, int]]
    main_path: str | None
    main_source: str | None


def _files(content: bytes) -> dict[str, int]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {info.filename: info.CRC for info in archive.infolist() if not info.is_dir()}


def publish_diff(platform: Platform, actor: Actor, job_id: str) -> list[Change]:
    """The working copy against the last revision: code files, settings, variables by name
    (secret values never leave: a changed secret shows as changed), schedule."""
    actor.require(Permission.READ)
    changes: list[Change] = []
    with platform.db.read() as session:
        job = scoped.job(session, actor.account_id, job_id)
        revision = scoped.revision(session, actor.account_id, job.id, job.revision) \
            if job.revision else None
        variables = list(scoped.variables(session, actor.account_id, job.id))
        old_code = scoped.code_version(session, actor.account_id, job.id,
                                       revision.code_version).content if revision else None
        new_code = scoped.code_version(session, actor.account_id, job.id,
                                       job.code_version).content if job.code_version else None
        if revision is None or revision.code_version != job.code_version:
            before = _files(old_code) if old_code else {}
            after = _files(new_code) if new_code else {}
            changes.append(Change("code", "version", str(revision.code_version) if revision
                                  else "none", str(job.code_version or "none")))
            for name in sorted(set(before) | set(after)):
                if before.get(name) != after.get(name):
                    changes.append(Change("code", name,
                                          "present" if name in before else "absent",
                                          ("changed" if name in before else "added")
                                          if name in after else "removed"))
        old_settings = settings_from_dict(revision.settings if revision else None).public_dict()
        new_settings = settings_from_dict(job.settings).public_dict()
        for key in sorted(set(old_settings) | set(new_settings)):
            if old_settings.get(key) != new_settings.get(key) or revision is None:
                changes.append(Change("settings", key, str(old_settings.get(key))
                                      if revision else "—", str(new_settings.get(key))))
        old_vars = {item["key"]: item for item in (revision.variables if revision else [])}
        new_vars = {row.key: row for row in variables}
        for key in sorted(set(old_vars) | set(new_vars)):
            old, new = old_vars.get(key), new_vars.get(key)
            if old is None and new is not None:
                changes.append(Change("variables", key, "absent",
                                      "added (secret)" if new.secret else f"added: {new.value}"))
            elif new is None and old is not None:
                changes.append(Change("variables", key, "present", "removed"))
            elif old is not None and new is not None:
                secret = bool(old["secret"]) or new.secret
                old_value = platform.secrets.decrypt(old["value"]) if old["secret"] \
                    else old["value"]
                new_value = platform.secrets.decrypt(new.value) if new.secret else new.value
                if (old_value, bool(old["secret"])) != (new_value, new.secret):
                    changes.append(Change("variables", key, "(secret)" if secret else old_value,
                                          "changed (secret)" if secret else new_value))
        old_schedule = revision.schedule if revision else None
        if old_schedule != job.schedule:
            changes.append(Change("schedule", "schedule", schedule_summary(old_schedule),
                                  schedule_summary(job.schedule)))
    return changes


def schedule_preview(platform: Platform, actor: Actor, job_id: str,
                     data: dict[str, Any]) -> SchedulePreview:
    """Validate like a save would (the minimum-gap error names the pair), then list the next
    five runs and what the plan would block over the next 30 days with this schedule."""
    actor.require(Permission.READ)
    now = platform.clock.now()
    with platform.db.read() as session:
        scoped.job(session, actor.account_id, job_id)
        account = scoped.account(session, actor.account_id)
        plan = plan_from_dict(account.plan)
    schedule = validate_schedule(data, account.timezone,
                                 min_gap_minutes=plan.min_schedule_gap_minutes, now=now)
    runs = describe_next_runs(schedule, now) if schedule["type"] != "none" else []
    result = forecasts.account_forecast(platform, actor, 30, job_id=job_id, schedule=schedule)
    return SchedulePreview(schedule, schedule_summary(schedule), runs,
                           projection.summary(result, job_id),
                           len(result.blocked_days(job_id)))


def code_files(platform: Platform, actor: Actor, job_id: str, version: int) -> CodeFiles:
    """A version's file tree and its main.py (at the root or in the single top folder)."""
    actor.require(Permission.READ)
    with platform.db.read() as session:
        scoped.job(session, actor.account_id, job_id)
        content = scoped.code_version(session, actor.account_id, job_id, version).content
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        names = [info.filename for info in infos]
        main = next((name for name in names if name == "main.py"), None) or next(
            (name for name in names if name.count("/") == 1 and name.endswith("/main.py")),
            None)
        source = None
        if main is not None:
            raw = archive.read(main)[:MAX_SHOWN_SOURCE]
            source = raw.decode("utf-8", errors="replace")
    return CodeFiles(version, sorted((info.filename, info.file_size) for info in infos),
                     main, source)


def replace_variables_keeping_secrets(platform: Platform, actor: Actor, job_id: str,
                                      items: list[dict[str, Any]]) -> None:
    """The console's variables form: a secret sent without a value keeps the stored one
    (the browser never had it)."""
    actor.require(Permission.WRITE)
    with platform.db.read() as session:
        scoped.job(session, actor.account_id, job_id)
        stored = {row.key: row for row in scoped.variables(session, actor.account_id, job_id)}
    filled = []
    for item in items:
        old = stored.get(item["key"])
        if item.get("value") is None and old is not None and old.secret:
            item = {**item, "value": platform.secrets.decrypt(old.value)}
        filled.append(item)
    jobs.replace_variables(platform, actor, job_id, filled)


@dataclass(frozen=True)
class FileChange:
    name: str
    status: str  # added, removed, changed
    diff: tuple[str, ...]  # unified diff lines of a text file; empty for binary or large ones


def code_diff(platform: Platform, actor: Actor, job_id: str, base: int,
              head: int) -> list[FileChange]:
    """File by file, what changed from code version ``base`` to ``head``."""
    actor.require(Permission.READ)
    with platform.db.read() as session:
        scoped.job(session, actor.account_id, job_id, include_deleted=True)
        old = scoped.code_version(session, actor.account_id, job_id, base).content
        new = scoped.code_version(session, actor.account_id, job_id, head).content
    with zipfile.ZipFile(io.BytesIO(old)) as before, zipfile.ZipFile(io.BytesIO(new)) as after:
        old_files = {i.filename: i for i in before.infolist() if not i.is_dir()}
        new_files = {i.filename: i for i in after.infolist() if not i.is_dir()}
        changes = []
        for name in sorted(set(old_files) | set(new_files)):
            was, now = old_files.get(name), new_files.get(name)
            if was is not None and now is not None and was.CRC == now.CRC:
                continue
            status = "added" if was is None else "removed" if now is None else "changed"
            old_text = _text(before, was)
            new_text = _text(after, now)
            lines: tuple[str, ...] = ()
            if old_text is not None and new_text is not None:
                lines = tuple(difflib.unified_diff(
                    old_text.splitlines(), new_text.splitlines(), f"v{base}/{name}",
                    f"v{head}/{name}", lineterm=""))
            changes.append(FileChange(name, status, lines))
    return changes


def _text(archive: zipfile.ZipFile, info: zipfile.ZipInfo | None) -> str | None:
    """A file's text for a diff; "" for a missing side; None when binary or too large."""
    if info is None:
        return ""
    if info.file_size > MAX_SHOWN_SOURCE:
        return None
    try:
        return archive.read(info).decode("utf-8")
    except UnicodeDecodeError:
        return None
