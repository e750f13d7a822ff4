"""``batchyard deploy``: make the server's job what the project says, writing only what
differs, and say what that was.

What the last deploy did is kept in ``.batchyard/state.json`` (git-ignored): the job
id, the code version it uploaded with its SHA-256, each secret's server digest with a
local fingerprint of the value sent, and the revision it published. With it, deploying
an unchanged project costs two reads (the job, its variables) and no write. Secrets
are compared by the digest the API returns for each value (never the value): equal
server digest and equal local fingerprint mean the server holds what this project holds.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import secrets
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from batchyard.cli import packing
from batchyard.cli.project import Project, write_lsbatch_id
from batchyard.client import ApiError, Client, Job

STATE_FILE = "state.json"
PUBLISH_ACTION = "job.publish"


@dataclass
class Report:
    job_id: str = ""
    created: bool = False
    changes: list[str] = field(default_factory=list)
    code_files: dict[str, list[str]] = field(default_factory=dict)
    next_runs: list[str] = field(default_factory=list)
    # Changes made on the server (console, API) since the last publish, from the audit.
    pending: list[str] = field(default_factory=list)
    uploaded: dict[str, Any] | None = None
    published: int | None = None
    reads: int = 0
    writes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "created": self.created, "changes": self.changes,
                "code_files": self.code_files, "next_runs": self.next_runs,
                "pending_on_server": self.pending, "uploaded": self.uploaded,
                "published_revision": self.published,
                "requests": {"reads": self.reads, "writes": self.writes}}


class Counter:
    """Counts the client's requests (the deploy's cost, shown and benchmarked)."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def __call__(self, method: str, path: str) -> None:
        if method == "GET":
            self.report.reads += 1
        else:
            self.report.writes += 1


def _load_state(project: Project) -> dict[str, Any]:
    try:
        data = json.loads((project.state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_state(project: Project, state: dict[str, Any]) -> None:
    folder = project.state_dir
    folder.mkdir(exist_ok=True, mode=0o700)
    (folder / ".gitignore").write_text("*\n")
    path = folder / STATE_FILE
    path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    path.chmod(0o600)


def _fingerprint(state: dict[str, Any], value: str) -> str:
    # Keyed by a random salt of this checkout: the state file holds no plain hash of a
    # secret that could be looked up.
    salt = state.setdefault("salt", secrets.token_hex(16))
    return hmac.new(bytes.fromhex(salt), value.encode(), hashlib.sha256).hexdigest()


def deploy(client: Client, project: Project, report: Report, publish: bool,
           before_publish: Callable[[Report], None],
           progress: Callable[[int, int], None] | None = None) -> Report:
    """Apply the project; ``before_publish(report)`` is called with the differences
    before the new revision is made (and also when nothing is to be published)."""
    state = _load_state(project)
    if state.get("url") != client.url:
        state = {"salt": state.get("salt")} if state.get("salt") else {}
    state["url"] = client.url
    # The plan's code size limit (kept from the last deploy): a package over it is refused
    # before anything is created or sent.
    if not state.get("code_limit"):
        state["code_limit"] = _code_limit(client)
    package = packing.build(project, state["code_limit"])

    job = _find_job(client, project, state)
    if job is None:
        job = client.create_job(project.name, project.description or None)
        report.created = True
        report.changes.append(f"job created: {project.name} ({job['id']})")
    if state.get("job_id") != job["id"]:
        # What was recorded is another job's (a code version number means nothing here).
        for key in ("code", "published", "secrets"):
            state.pop(key, None)
    report.job_id = job["id"]
    state["job_id"] = job["id"]
    if project.kind == "lsbatch":
        write_lsbatch_id(project, job["id"])
    wrote = report.created
    try:
        wrote |= _apply_details(client, project, job, report)
        wrote |= _apply_code(client, project, job, package, state, report, progress)
        wrote |= _apply_settings(client, project, job, report)
        wrote |= _apply_schedule(client, job, project.schedule, report)
        wrote |= _apply_variables(client, project, job, state, report)
        current = job["status"] == "published" and (
            not publish or _published_is_current(client, job, state, report))
        before_publish(report)
        if publish and (wrote or not current):
            published = client.publish(job["id"])
            state["published"] = {"revision": published["revision"],
                                  "modified_at": published["modified_at"]}
            report.published = published["revision"]
    finally:
        _save_state(project, state)
    return report


def _code_limit(client: Client) -> int:
    plan = client.me()["account"]["plan"]
    return int(plan.get("max_code_size_bytes") or packing.DEFAULT_CODE_LIMIT)


def _find_job(client: Client, project: Project, state: dict[str, Any]) -> Job | None:
    job_id = project.job_id or state.get("job_id")
    if job_id:
        try:
            return client.job(str(job_id))
        except ApiError as exc:
            if exc.status != 404:
                raise
    found = client.find_job(project.name)
    return client.job(found["id"]) if found else None


def _apply_details(client: Client, project: Project, job: Job, report: Report) -> bool:
    changes: dict[str, str] = {}
    if job["name"] != project.name:
        changes["name"] = project.name
    if project.description and job["description"] != project.description:
        changes["description"] = project.description
    if not changes:
        return False
    client.update_job(job["id"], **changes)
    report.changes.extend(f"{key}: {job[key]!r} -> {value!r}"  # type: ignore[literal-required]
                          for key, value in changes.items())
    return True


def _apply_code(client: Client, project: Project, job: Job, package: packing.Package,
                state: dict[str, Any], report: Report,
                progress: Callable[[int, int], None] | None) -> bool:
    recorded = state.get("code") or {}
    version = job["code_version"]
    server_sha: str | None = None
    if version is not None:
        if recorded.get("version") == version:
            server_sha = recorded.get("sha256")
        else:
            server_sha = next((v["sha256"] for v in client.code_versions(job["id"])
                               if v["version"] == version), None)
    if server_sha == package.sha256:
        state["code"] = {"version": version, "sha256": package.sha256}
        return False
    # The plan may have changed since the last deploy: its limit now, before the upload.
    limit = _code_limit(client)
    state["code_limit"] = limit
    packing.validate(project, package.data, limit)
    report.code_files = _file_changes(client, job, version, package)
    uploaded = client.upload_code(job["id"], package.data, progress)
    report.uploaded = dict(uploaded)
    report.changes.append(f"code: version {uploaded['version']} ({uploaded['size']} bytes, "
                          f"sha256 {uploaded['sha256'][:12]})")
    state["code"] = {"version": uploaded["version"], "sha256": uploaded["sha256"]}
    return True


def _file_changes(client: Client, job: Job, version: int | None,
                  package: packing.Package) -> dict[str, list[str]]:
    """Files added, removed and changed against the server's current code."""
    local = _hashes(package.data)
    if version is None:
        return {"added": sorted(local), "removed": [], "changed": []}
    try:
        remote = _hashes(client.download_code(job["id"], version))
    except (ApiError, zipfile.BadZipFile):
        return {"added": sorted(local), "removed": [], "changed": []}
    return {"added": sorted(set(local) - set(remote)),
            "removed": sorted(set(remote) - set(local)),
            "changed": sorted(name for name in set(local) & set(remote)
                              if local[name] != remote[name])}


def _hashes(data: bytes) -> dict[str, str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: hashlib.sha256(archive.read(info)).hexdigest()
                for info in archive.infolist() if not info.is_dir()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return all(_same(value, b.get(key)) for key, value in a.items())
    return bool(a == b)


def _apply_settings(client: Client, project: Project, job: Job, report: Report) -> bool:
    current = job["settings"]
    changed = {key: value for key, value in project.settings.items()
               if not _same(value, current.get(key))}
    if not changed:
        return False
    client.put_settings(job["id"], changed)
    report.changes.extend(f"settings.{key}: {json.dumps(current.get(key))} -> "
                          f"{json.dumps(value)}" for key, value in changed.items())
    return True


def _apply_schedule(client: Client, job: Job, desired: dict[str, Any] | None,
                    report: Report) -> bool:
    from batchyard.domain.schedules import describe_next_runs, validate_schedule

    current = job["schedule"]
    desired = dict(desired) if desired is not None else None
    if desired is None:
        if current is not None:
            return False
        desired = {"type": "none"}  # publishing needs one; the vendor's jobs are ad hoc
    # Without a timezone in batchyard.toml the server's choice stands (the account's zone
    # when the schedule is first set): only the rest is compared.
    timezone = desired.get("timezone") or (current or {}).get("timezone")
    if current is not None and timezone:
        normalised = validate_schedule({**desired, "timezone": timezone}, str(timezone))
        if _same(normalised, current) and _same(current, normalised):
            if normalised["type"] != "none":
                report.next_runs = [run["local"] for run in
                                    describe_next_runs(normalised, datetime.now(UTC))]
            return False
    answer = client.put_schedule(job["id"], desired)
    report.next_runs = [str(run.get("local")) for run in answer.get("next_runs") or []]
    report.changes.append(f"schedule: {answer.get('summary') or desired['type']}"
                          + (f" (was {job['schedule_summary']})" if current else ""))
    return True


def _apply_variables(client: Client, project: Project, job: Job, state: dict[str, Any],
                     report: Report) -> bool:
    server = {v["key"]: v for v in client.variables(job["id"])}
    recorded: dict[str, Any] = state.get("secrets") or {}
    desired = {v.key: v for v in project.variables}
    changes: list[str] = []
    for key in sorted(set(server) | set(desired)):
        mine, theirs = desired.get(key), server.get(key)
        if mine is None:
            changes.append(f"variables: - {key}")
        elif theirs is None:
            changes.append(f"variables: + {key}" + (" (secret)" if mine.secret else ""))
        elif mine.secret != theirs["secret"]:
            changes.append(f"variables: ~ {key} (now {'secret' if mine.secret else 'plain'})")
        elif not mine.secret and mine.value != theirs["value"]:
            changes.append(f"variables: ~ {key}")
        elif mine.secret and recorded.get(key) != {
                "digest": theirs["digest"], "local": _fingerprint(state, mine.value)}:
            changes.append(f"variables: ~ {key} (secret)")
    if not changes:
        return False
    answer = client.put_variables(job["id"], [
        {"key": v.key, "value": v.value, "secret": v.secret} for v in project.variables])
    state["secrets"] = {v["key"]: {"digest": v["digest"],
                                   "local": _fingerprint(state, desired[v["key"]].value)}
                        for v in answer if v["secret"]}
    report.changes.extend(changes)
    return True


def _published_is_current(client: Client, job: Job, state: dict[str, Any],
                          report: Report) -> bool:
    """Whether the published revision is the server's working copy (as it was before this
    deploy): known from the last deploy's publish, else from the audit trail, whose
    changes since the last publish are listed in ``report.pending``."""
    if state.get("published") == {"revision": job["revision"],
                                  "modified_at": job["modified_at"]}:
        return True
    entries = client.audit(job["id"], limit=100)
    for entry in entries:  # newest first
        if entry["action"] == PUBLISH_ACTION:
            break
        report.pending.append(f"{entry['action']} by {entry['actor']} at {entry['at'][:19]}")
    if not report.pending and entries:
        state["published"] = {"revision": job["revision"], "modified_at": job["modified_at"]}
    return not report.pending
