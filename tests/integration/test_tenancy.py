"""No account can read, change, run or detect another account's things: always NotFound."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from batchyard.domain.attempts import AttemptResult, OutputFile
from batchyard.errors import NotFound
from batchyard.services import accounts, executions, invoke, jobs
from batchyard.services.context import Actor, Platform
from batchyard.services.queue import claim_next_execution, finish_attempt
from batchyard.store import scoped
from batchyard.store.models import Account, Execution, Job


def test_an_outsider_gets_not_found_everywhere(platform: Platform,
                                               result: Callable[..., AttemptResult],
                                               make_account: Callable[..., Account],
                                               make_actor: Callable[..., Actor],
                                               make_published_job: Callable[..., Job],
                                               code_zip: Callable[..., bytes]) -> None:
    home = make_account()
    owner = make_actor(home, "admin")
    outsider = make_actor(make_account(), "super_admin")
    job = make_published_job(owner, settings={"concurrency": "allow"},
                             variables=[{"key": "TOKEN", "value": "abc", "secret": True}])
    finished = invoke.invoke(platform, owner, job.id, {}, {})
    claimed = claim_next_execution(platform, "node-a:1", 30)
    assert claimed is not None
    content = b"report"
    finish_attempt(platform, claimed, result(artifacts=(
        OutputFile("out.txt", content, hashlib.sha256(content).hexdigest()),)))
    queued = invoke.invoke(platform, owner, job.id, {}, {})
    key = accounts.create_api_key(platform, owner, "owner's")

    service_calls: dict[str, Callable[[], Any]] = {
        "get_job": lambda: jobs.get_job(platform, outsider, job.id),
        "update_job": lambda: jobs.update_job(platform, outsider, job.id, {"name": "mine"}),
        "delete_job": lambda: jobs.delete_job(platform, outsider, job.id),
        "upload_code": lambda: jobs.upload_code(platform, outsider, job.id, code_zip()),
        "list_code_versions": lambda: jobs.list_code_versions(platform, outsider, job.id),
        "code_version_content": lambda: jobs.code_version_content(platform, outsider,
                                                                  job.id, 1),
        "update_settings": lambda: jobs.update_settings(platform, outsider, job.id,
                                                        {"retries": 0}),
        "list_variables": lambda: jobs.list_variables(platform, outsider, job.id),
        "replace_variables": lambda: jobs.replace_variables(platform, outsider, job.id, []),
        "set_schedule": lambda: jobs.set_schedule(platform, outsider, job.id,
                                                  {"type": "none"}),
        "publish": lambda: jobs.publish(platform, outsider, job.id),
        "unpublish": lambda: jobs.unpublish(platform, outsider, job.id),
        "invoke": lambda: invoke.invoke(platform, outsider, job.id, {}, {}),
        "get_execution": lambda: executions.get_execution(platform, outsider, finished.id),
        "read_logs": lambda: executions.read_logs(platform, outsider, finished.id,
                                                  level=None, after=None),
        "cancel": lambda: executions.cancel(platform, outsider, queued.id),
        "list_artifacts": lambda: executions.list_artifacts(platform, outsider, finished.id),
        "artifact_content": lambda: executions.artifact_content(platform, outsider,
                                                                finished.id, "out.txt"),
        "revoke_api_key": lambda: accounts.revoke_api_key(platform, outsider, key.key.id),
    }
    scoped_getters: dict[str, Callable[[Session, str], Any]] = {
        "account": lambda s, a: scoped.account(s, home.id) if a == home.id else
        scoped.account(s, "acc_nope"),
        "job": lambda s, a: scoped.job(s, a, job.id),
        "job include_deleted": lambda s, a: scoped.job(s, a, job.id, include_deleted=True),
        "code_version": lambda s, a: scoped.code_version(s, a, job.id, 1),
        "revision": lambda s, a: scoped.revision(s, a, job.id, 1),
        "execution": lambda s, a: scoped.execution(s, a, finished.id),
        "artifact": lambda s, a: scoped.artifact(s, a, finished.id, "out.txt"),
        "user": lambda s, a: scoped.user(s, a, owner.user_id),
        "api_key": lambda s, a: scoped.api_key(s, a, key.key.id),
    }

    leaks = []
    for name, call in service_calls.items():
        try:
            call()
        except NotFound:
            continue
        except Exception as error:  # any other answer reveals something
            leaks.append(f"{name}: {type(error).__name__}: {error}")
        else:
            leaks.append(f"{name}: answered")
    with platform.db.read() as session:
        for name, getter in scoped_getters.items():
            getter(session, home.id)  # the owner finds it
            try:
                getter(session, outsider.account_id)
            except NotFound:
                continue
            leaks.append(f"scoped.{name}: answered")
        assert scoped.variables(session, outsider.account_id, job.id) == []
        assert scoped.code_versions(session, outsider.account_id, job.id) == []
        assert scoped.job_by_name(session, outsider.account_id, job.name) is None
        assert scoped.jobs(session, outsider.account_id) == []
    assert leaks == []

    # The outsider's lists are empty and nothing of the owner's changed.
    assert jobs.list_jobs(platform, outsider) == []
    listed, _ = executions.list_executions(platform, outsider, job_id=job.id, status=None,
                                           since=None, until=None, limit=10, cursor=None)
    assert listed == []
    assert accounts.list_api_keys(platform, outsider) != [] and all(
        k.account_id == outsider.account_id for k in accounts.list_api_keys(platform, outsider))
    assert jobs.get_job(platform, owner, job.id).name == job.name
    assert executions.get_execution(platform, owner, queued.id).execution.status == "queued"
    assert [v.version for v in jobs.list_code_versions(platform, owner, job.id)] == [1]
    assert accounts.authenticate(platform, key.secret).account_id == home.id
    with platform.db.read() as session:
        assert session.query(Execution).filter(
            Execution.account_id == outsider.account_id).count() == 0


def test_members_see_their_accounts_jobs(platform: Platform,
                                         make_account: Callable[..., Account],
                                         make_actor: Callable[..., Actor],
                                         make_published_job: Callable[..., Job]) -> None:
    account = make_account()
    owner = make_actor(account, "admin")
    job = make_published_job(owner)
    execution = invoke.invoke(platform, owner, job.id, {}, {})
    for role in ("viewer", "developer", "super_admin"):
        member = make_actor(account, role)
        assert jobs.get_job(platform, member, job.id).id == job.id
        detail = executions.get_execution(platform, member, execution.id)
        assert detail.execution.id == execution.id
