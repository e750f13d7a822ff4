"""Job use cases: create, rename, delete, limits, code, variables, publish."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from batchyard.domain.clock import FixedClock
from batchyard.errors import (
    CodeTooLarge,
    Conflict,
    Forbidden,
    InvalidCode,
    InvalidInput,
    NotFound,
    NotPublishable,
)
from batchyard.services import audit, invoke, jobs
from batchyard.services.context import Actor, Platform
from batchyard.services.queue import claim_next_execution
from batchyard.store.models import Account, AuditEntry, Job, Revision, Variable

SECRET = "pa55-w0rd-never-in-audit"


@pytest.fixture
def account(make_account: Callable[..., Account]) -> Account:
    return make_account(plan={"max_jobs": 2})


@pytest.fixture
def admin(account: Account, make_actor: Callable[..., Actor]) -> Actor:
    return make_actor(account, "admin")


def job_audit(platform: Platform, actor: Actor, job_id: str) -> list[AuditEntry]:
    entries, _ = audit.list_entries(platform, actor, job_id, 100, None)
    return list(reversed(entries))


def test_create_rename_delete_are_audited(platform: Platform, clock: FixedClock,
                                          admin: Actor) -> None:
    job = jobs.create_job(platform, admin, {"name": "nightly", "description": "first"})
    assert (job.status, job.revision, job.code_version) == ("draft", None, None)
    assert jobs.get_job(platform, admin, job.id).name == "nightly"

    clock.advance(minutes=1)
    renamed = jobs.update_job(platform, admin, job.id, {"name": "nightly report",
                                                        "description": "first"})
    assert (renamed.name, renamed.modified_at) == ("nightly report", clock.now())
    jobs.update_job(platform, admin, job.id, {"name": "nightly report"})  # no change, no entry
    jobs.update_job(platform, admin, job.id, {"description": "second"})
    clock.advance(minutes=1)
    jobs.delete_job(platform, admin, job.id)

    entries = job_audit(platform, admin, job.id)
    assert [(e.action, e.actor, e.target) for e in entries] == [
        ("job.create", admin.email, job.id), ("job.rename", admin.email, job.id),
        ("job.update", admin.email, job.id), ("job.delete", admin.email, job.id)]
    assert entries[0].after == {"name": "nightly", "description": "first"}
    assert (entries[1].before, entries[1].after) == ({"name": "nightly"},
                                                     {"name": "nightly report"})
    assert (entries[2].before, entries[2].after) == ({"description": "first"},
                                                     {"description": "second"})
    assert entries[3].before == {"name": "nightly report", "status": "draft"}
    assert entries[3].at == clock.now()

    with pytest.raises(NotFound):
        jobs.get_job(platform, admin, job.id)
    assert jobs.list_jobs(platform, admin) == []


def test_invalid_input_is_refused(platform: Platform, admin: Actor) -> None:
    with pytest.raises(InvalidInput):
        jobs.create_job(platform, admin, {"name": "x"})
    job = jobs.create_job(platform, admin, {"name": "valid"})
    with pytest.raises(InvalidInput):
        jobs.update_job(platform, admin, job.id, {"name": "valid\n"})
    with pytest.raises(InvalidInput):
        jobs.update_job(platform, admin, job.id, {"status": "published"})
    with pytest.raises(InvalidInput):
        jobs.update_settings(platform, admin, job.id, {"retries": 2})  # plan allows 1
    assert jobs.get_job(platform, admin, job.id).name == "valid"


def test_max_jobs_counts_only_live_jobs(platform: Platform, admin: Actor) -> None:
    first = jobs.create_job(platform, admin, {"name": "one"})
    jobs.create_job(platform, admin, {"name": "two"})
    with pytest.raises(jobs.MaxJobsExceeded) as caught:
        jobs.create_job(platform, admin, {"name": "three"})
    assert (caught.value.code, caught.value.status, caught.value.extra["limit"]) == (
        "max_jobs_exceeded", 429, 2)
    jobs.delete_job(platform, admin, first.id)
    jobs.create_job(platform, admin, {"name": "three"})
    assert [j.name for j in jobs.list_jobs(platform, admin)] == ["three", "two"]


def test_max_jobs_holds_under_concurrent_creates(platform: Platform, admin: Actor) -> None:
    start = threading.Barrier(8)

    def create(index: int) -> bool:
        start.wait()
        try:
            jobs.create_job(platform, admin, {"name": f"racer {index}"})
        except jobs.MaxJobsExceeded:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(create, range(8)))
    assert created.count(True) == 2
    assert len(jobs.list_jobs(platform, admin)) == 2


def test_names_are_unique_among_live_jobs(platform: Platform, admin: Actor,
                                          make_account: Callable[..., Account],
                                          make_actor: Callable[..., Actor]) -> None:
    first = jobs.create_job(platform, admin, {"name": "report"})
    with pytest.raises(Conflict):
        jobs.create_job(platform, admin, {"name": "report"})
    second = jobs.create_job(platform, admin, {"name": "other"})
    with pytest.raises(Conflict):
        jobs.update_job(platform, admin, second.id, {"name": "report"})
    # Another account may use the same name.
    jobs.create_job(platform, make_actor(make_account()), {"name": "report"})

    jobs.delete_job(platform, admin, first.id)
    again = jobs.create_job(platform, admin, {"name": "report"})
    assert again.id != first.id
    jobs.delete_job(platform, admin, again.id)
    jobs.update_job(platform, admin, second.id, {"name": "report"})


def test_code_versions_increment_and_round_trip(platform: Platform, admin: Actor,
                                                code_zip: Callable[..., bytes]) -> None:
    job = jobs.create_job(platform, admin, {"name": "coder"})
    first = code_zip()
    second = code_zip("def main():\n    print('v2')\n", **{"requirements.txt": "httpx\n"})
    v1 = jobs.upload_code(platform, admin, job.id, first)
    v2 = jobs.upload_code(platform, admin, job.id, second)
    assert (v1.version, v2.version) == (1, 2)
    assert (v1.main_parameters, v2.main_parameters) == (1, 0)
    assert (v1.requirements, v2.requirements) == (None, "httpx\n")
    assert jobs.get_job(platform, admin, job.id).code_version == 2

    listed = jobs.list_code_versions(platform, admin, job.id)
    assert [(v.version, v.sha256, v.size, v.created_by) for v in listed] == [
        (2, hashlib.sha256(second).hexdigest(), len(second), admin.email),
        (1, hashlib.sha256(first).hexdigest(), len(first), admin.email)]
    for number, content in ((1, first), (2, second)):
        row, data = jobs.code_version_content(platform, admin, job.id, number)
        assert (row.version, data) == (number, content)
    with pytest.raises(NotFound):
        jobs.code_version_content(platform, admin, job.id, 3)

    with pytest.raises(InvalidCode):
        jobs.upload_code(platform, admin, job.id, code_zip("def main(:\n"))
    assert [e.action for e in job_audit(platform, admin, job.id)].count("job.code_upload") == 2
    assert len(jobs.list_code_versions(platform, admin, job.id)) == 2


def test_code_size_follows_the_plan(platform: Platform, make_account: Callable[..., Account],
                                    make_actor: Callable[..., Actor],
                                    code_zip: Callable[..., bytes]) -> None:
    actor = make_actor(make_account(plan={"max_code_size_bytes": 200}))
    job = jobs.create_job(platform, actor, {"name": "big"})
    with pytest.raises(CodeTooLarge):
        # Random text does not compress: the zip is well over 200 bytes.
        jobs.upload_code(platform, actor, job.id, code_zip(
            f"# {secrets.token_hex(200)}\ndef main():\n    pass\n"))
    assert jobs.list_code_versions(platform, actor, job.id) == []


def test_publish_snapshots_a_revision(platform: Platform, admin: Actor,
                                      code_zip: Callable[..., bytes]) -> None:
    job = jobs.create_job(platform, admin, {"name": "snap"})
    with pytest.raises(NotPublishable, match="code"):
        jobs.publish(platform, admin, job.id)
    original = code_zip("def main(event):\n    return 'v1'\n")
    jobs.upload_code(platform, admin, job.id, original)
    with pytest.raises(NotPublishable, match="schedule"):
        jobs.publish(platform, admin, job.id)
    jobs.update_settings(platform, admin, job.id, {"timeout_minutes": 0.05, "retries": 1,
                                                   "concurrency": "allow"})
    jobs.replace_variables(platform, admin, job.id, [
        {"key": "MODE", "value": "first"}, {"key": "TOKEN", "value": SECRET, "secret": True}])
    jobs.set_schedule(platform, admin, job.id, {"type": "none"})
    published = jobs.publish(platform, admin, job.id)
    assert (published.status, published.revision) == ("published", 1)

    # Edits after publishing change the working copy only.
    jobs.upload_code(platform, admin, job.id, code_zip("def main(event):\n    return 'v2'\n"))
    jobs.update_settings(platform, admin, job.id, {"timeout_minutes": 30, "retries": 0})
    jobs.replace_variables(platform, admin, job.id, [{"key": "MODE", "value": "second"}])
    execution = invoke.invoke(platform, admin, job.id, {}, {})
    assert execution.revision == 1
    claimed = claim_next_execution(platform, "node-a:1", 30)
    assert claimed is not None
    assert (claimed.revision, claimed.code, claimed.timeout_seconds) == (1, original, 3.0)
    assert claimed.variables == {"MODE": "first", "TOKEN": SECRET}
    assert claimed.secret_values == (SECRET,)
    with platform.db.read() as session:
        first_revision = session.scalars(select(Revision).where(
            Revision.job_id == job.id, Revision.number == 1)).one()
    assert first_revision.code_version == 1
    assert first_revision.settings["timeout_minutes"] == 0.05

    republished = jobs.publish(platform, admin, job.id)
    assert republished.revision == 2
    assert invoke.invoke(platform, admin, job.id, {}, {}).revision == 2
    claimed = claim_next_execution(platform, "node-a:1", 30)
    assert claimed is not None
    assert (claimed.revision, claimed.timeout_seconds, claimed.variables) == (
        2, 1800.0, {"MODE": "second"})
    assert claimed.secret_values == ()
    with platform.db.read() as session:
        first_revision = session.scalars(select(Revision).where(
            Revision.job_id == job.id, Revision.number == 1)).one()
    assert first_revision.settings["timeout_minutes"] == 0.05

    jobs.unpublish(platform, admin, job.id)
    with pytest.raises(Conflict):
        jobs.unpublish(platform, admin, job.id)
    assert [e.action for e in job_audit(platform, admin, job.id)
            if "publish" in e.action] == ["job.publish", "job.publish", "job.unpublish"]


def test_secret_variables_are_encrypted_and_never_audited(platform: Platform, admin: Actor,
                                                          code_zip: Callable[..., bytes]) -> None:
    job = jobs.create_job(platform, admin, {"name": "secretive"})
    views = jobs.replace_variables(platform, admin, job.id, [
        {"key": "REGION", "value": "eu-west-1"},
        {"key": "TOKEN", "value": SECRET, "secret": True}])
    assert [(v.key, v.value, v.secret) for v in views] == [
        ("REGION", "eu-west-1", False), ("TOKEN", None, True)]
    assert [(v.key, v.value) for v in jobs.list_variables(platform, admin, job.id)] == [
        ("REGION", "eu-west-1"), ("TOKEN", None)]
    jobs.replace_variables(platform, admin, job.id, [
        {"key": "REGION", "value": "eu-west-1"},
        {"key": "TOKEN", "value": SECRET + "-rotated", "secret": True}])
    jobs.upload_code(platform, admin, job.id, code_zip())
    jobs.set_schedule(platform, admin, job.id, {"type": "none"})
    jobs.publish(platform, admin, job.id)

    with platform.db.read() as session:
        stored = session.get_one(Variable, (job.id, "TOKEN"))
        revision = session.scalars(select(Revision).where(Revision.job_id == job.id)).one()
        entries = list(session.scalars(select(AuditEntry)))
    assert SECRET not in stored.value
    assert platform.secrets.decrypt(stored.value) == SECRET + "-rotated"
    assert SECRET not in json.dumps(revision.variables)

    dumped = json.dumps([{"action": e.action, "before": e.before, "after": e.after}
                         for e in entries])
    assert SECRET not in dumped
    assert "eu-west-1" in dumped  # ordinary values are recorded
    changes = [e for e in entries if e.action == "job.variables"]
    assert [(e.after or {}).get("secrets_changed") for e in changes] == [["TOKEN"], ["TOKEN"]]
    assert {"key": "TOKEN", "secret": True, "value": "***"} in (changes[1].before or [])


def test_roles_limit_what_members_do(platform: Platform, account: Account, admin: Actor,
                                     make_actor: Callable[..., Actor],
                                     make_published_job: Callable[..., Job]) -> None:
    developer, viewer = make_actor(account, "developer"), make_actor(account, "viewer")
    job = jobs.create_job(platform, developer, {"name": "by developer"})
    jobs.set_schedule(platform, developer, job.id, {"type": "none"})
    for forbidden in (jobs.publish, jobs.unpublish, jobs.delete_job):
        with pytest.raises(Forbidden):
            forbidden(platform, developer, job.id)
    with pytest.raises(Forbidden):
        jobs.create_job(platform, viewer, {"name": "by viewer"})
    with pytest.raises(Forbidden):
        jobs.update_job(platform, viewer, job.id, {"name": "renamed"})
    published = make_published_job(admin)
    with pytest.raises(Forbidden):
        invoke.invoke(platform, viewer, published.id, {}, {})
    assert jobs.get_job(platform, viewer, job.id).name == "by developer"
    assert invoke.invoke(platform, developer, published.id, {}, {}).status == "queued"
