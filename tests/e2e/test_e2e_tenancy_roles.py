"""Tenancy (another account sees 404, never 403) and roles (owner, developer, viewer)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from e2e_support import (
    Account,
    AccountFactory,
    create_job,
    deploy_job,
    invoke,
    make_zip,
    upload_code,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)

WRITES_AN_ARTIFACT = textwrap.dedent("""\
    import os

    def main(event):
        print("tenant data")
        with open(os.path.join(os.environ["OUTPUT_DIR"], "out.txt"), "w") as handle:
            handle.write("private")
    """)


@dataclass
class Tenant:
    account: Account
    job_id: str
    execution_id: str


@pytest.fixture
def tenant(make_account: AccountFactory) -> Tenant:
    """An account with a published job, run once (logs and an artifact)."""
    account = make_account()
    job_id = deploy_job(account, WRITES_AN_ARTIFACT,
                        variables=[{"key": "PLAIN", "value": "v", "secret": False}])
    execution = wait_for(account.owner, invoke(account.owner, job_id))
    assert execution["status"] == "succeeded", execution
    return Tenant(account, job_id, execution["id"])


Request = tuple[str, str, dict[str, Any]]


def _job_and_execution_requests(job_id: str, execution_id: str) -> list[Request]:
    zip_bytes = make_zip({"main.py": "def main():\n    pass\n"})
    job = f"/api/v1/jobs/{job_id}"
    execution = f"/api/v1/executions/{execution_id}"
    return [
        ("GET", job, {}),
        ("PATCH", job, {"json": {"description": "taken over"}}),
        ("DELETE", job, {}),
        ("POST", f"{job}/invoke", {"json": {}}),
        ("POST", f"{job}/publish", {}),
        ("POST", f"{job}/unpublish", {}),
        ("GET", f"{job}/code/versions", {}),
        ("GET", f"{job}/code/versions/1", {}),
        ("PUT", f"{job}/code", {"content": zip_bytes,
                                "headers": {"Content-Type": "application/zip"}}),
        ("GET", f"{job}/settings", {}),
        ("PUT", f"{job}/settings", {"json": {"retries": 1}}),
        ("GET", f"{job}/variables", {}),
        ("PUT", f"{job}/variables", {"json": {"variables": []}}),
        ("GET", f"{job}/schedule", {}),
        ("PUT", f"{job}/schedule", {"json": {"type": "none"}}),
        ("GET", execution, {}),
        ("GET", f"{execution}/logs", {}),
        ("GET", f"{execution}/logs", {"headers": {"Accept": "text/event-stream"}}),
        ("POST", f"{execution}/cancel", {}),
        ("GET", f"{execution}/artifacts", {}),
        ("GET", f"{execution}/artifacts/out.txt", {}),
    ]


def test_other_account_gets_404_for_every_job_and_execution_resource(
        tenant: Tenant, make_account: AccountFactory) -> None:
    outsider = make_account()

    for method, path, kwargs in _job_and_execution_requests(tenant.job_id,
                                                             tenant.execution_id):
        response = outsider.owner.request(method, path, **kwargs)
        assert response.status_code == 404, f"{method} {path}: {response.text}"
        assert response.json()["error"]["code"] == "not_found", f"{method} {path}"
        assert "private" not in response.text and "tenant data" not in response.text

    listed = outsider.owner.get("/api/v1/executions", params={"job_id": tenant.job_id})
    assert listed.status_code == 200 and listed.json()["items"] == []
    assert outsider.owner.get("/api/v1/jobs").json()["items"] == []
    assert outsider.owner.get("/api/v1/audit", params={"job_id": tenant.job_id}).json()[
        "items"] == []
    # Nothing the outsider sent changed the job or ran it.
    job = tenant.account.owner.get(f"/api/v1/jobs/{tenant.job_id}").json()
    assert job["status"] == "published" and job["description"] == "" and job["code_version"] == 1
    runs = tenant.account.owner.get("/api/v1/executions", params={"job_id": tenant.job_id})
    assert [item["id"] for item in runs.json()["items"]] == [tenant.execution_id]


def test_other_accounts_ids_look_exactly_like_unknown_ids(
        tenant: Tenant, make_account: AccountFactory) -> None:
    outsider = make_account()

    for real, unknown in ((f"/api/v1/jobs/{tenant.job_id}", "/api/v1/jobs/job_doesnotexist"),
                          (f"/api/v1/executions/{tenant.execution_id}",
                           "/api/v1/executions/exe_doesnotexist")):
        theirs, nobodys = outsider.owner.get(real), outsider.owner.get(unknown)
        assert theirs.status_code == nobodys.status_code == 404
        assert theirs.json()["error"]["code"] == nobodys.json()["error"]["code"]
        assert set(theirs.json()["error"]) == set(nobodys.json()["error"])


def _forbidden(response: httpx.Response, what: str) -> None:
    assert response.status_code == 403, f"{what}: {response.status_code} {response.text}"
    assert response.json()["error"]["code"] == "forbidden", what


def test_developer_creates_uploads_and_invokes_but_cannot_publish_unpublish_or_delete(
        tenant: Tenant) -> None:
    developer = tenant.account.developer

    own_job = create_job(developer)
    assert upload_code(developer, own_job, make_zip(
        {"main.py": "def main():\n    print('dev')\n"})).status_code == 201
    assert developer.put(f"/api/v1/jobs/{own_job}/schedule",
                         json={"type": "none"}).status_code == 200
    assert developer.put(f"/api/v1/jobs/{own_job}/settings",
                         json={"retries": 1}).status_code == 200
    assert developer.put(f"/api/v1/jobs/{own_job}/variables", json={
        "variables": [{"key": "A", "value": "1"}]}).status_code == 200
    _forbidden(developer.post(f"/api/v1/jobs/{own_job}/publish"), "publish")
    _forbidden(developer.post(f"/api/v1/jobs/{tenant.job_id}/unpublish"), "unpublish")
    _forbidden(developer.delete(f"/api/v1/jobs/{tenant.job_id}"), "delete")
    _forbidden(developer.delete(f"/api/v1/jobs/{own_job}"), "delete own job")
    execution = wait_for(developer, invoke(developer, tenant.job_id, {"by": "developer"}))

    assert execution["status"] == "succeeded", execution
    assert tenant.account.owner.get(f"/api/v1/jobs/{own_job}").json()["status"] == "draft"
    assert tenant.account.owner.get(f"/api/v1/jobs/{tenant.job_id}").json()["status"] == \
        "published"


def test_viewer_gets_403_on_every_write_and_200_on_every_read(tenant: Tenant) -> None:
    viewer = tenant.account.viewer
    job = f"/api/v1/jobs/{tenant.job_id}"
    execution = f"/api/v1/executions/{tenant.execution_id}"
    zip_bytes = make_zip({"main.py": "def main():\n    pass\n"})

    writes: list[Request] = [
        ("POST", "/api/v1/jobs", {"json": {"name": "viewer-made"}}),
        ("PATCH", job, {"json": {"name": "renamed-by-viewer"}}),
        ("PUT", f"{job}/code", {"content": zip_bytes,
                                "headers": {"Content-Type": "application/zip"}}),
        ("PUT", f"{job}/code", {"files": {"file": ("code.zip", zip_bytes)}}),
        ("PUT", f"{job}/settings", {"json": {"retries": 1}}),
        ("PUT", f"{job}/variables", {"json": {"variables": []}}),
        ("PUT", f"{job}/schedule", {"json": {"type": "daily", "times": ["03:00"]}}),
        ("POST", f"{job}/invoke", {"json": {}}),
        ("POST", f"{execution}/cancel", {}),
        ("POST", f"{job}/publish", {}),
        ("POST", f"{job}/unpublish", {}),
        ("DELETE", job, {}),
    ]
    for method, path, kwargs in writes:
        _forbidden(viewer.request(method, path, **kwargs), f"{method} {path}")

    reads = ["/api/v1/me", "/api/v1/jobs", job, f"{job}/code/versions", f"{job}/code/versions/1",
             f"{job}/settings", f"{job}/variables", f"{job}/schedule", "/api/v1/executions",
             execution, f"{execution}/logs", f"{execution}/artifacts",
             f"{execution}/artifacts/out.txt", "/api/v1/usage", "/api/v1/audit"]
    for path in reads:
        response = viewer.get(path)
        assert response.status_code == 200, f"GET {path}: {response.text}"
    assert viewer.get(f"{execution}/artifacts/out.txt").content == b"private"
    owner_view = tenant.account.owner.get(job).json()
    assert owner_view["name"].startswith("job-") and owner_view["code_version"] == 1
    assert owner_view["settings"]["retries"] == 0
    assert len(tenant.account.owner.get("/api/v1/jobs").json()["items"]) == 1
    assert len(tenant.account.owner.get("/api/v1/executions").json()["items"]) == 1


def _feature_disabled(response: httpx.Response, what: str) -> None:
    assert response.status_code == 403, f"{what}: {response.status_code} {response.text}"
    error = response.json()["error"]
    assert error["code"] == "feature_disabled", what
    assert "enable" in error["message"].lower()


def test_account_created_disabled_gets_403_feature_disabled(
        make_account: AccountFactory) -> None:
    account = make_account(enabled=False)

    _feature_disabled(account.owner.get("/api/v1/jobs"), "list jobs")
    _feature_disabled(account.owner.post("/api/v1/jobs", json={"name": "first-job"}), "create")
    _feature_disabled(account.owner.get("/api/v1/executions"), "list executions")


def test_disabling_an_account_closes_its_job_endpoints_and_blocks_invocations(
        tenant: Tenant, operator: httpx.Client) -> None:
    account_path = f"/api/v1/admin/accounts/{tenant.account.id}"
    job = f"/api/v1/jobs/{tenant.job_id}"
    assert operator.patch(account_path, json={"batch_jobs_enabled": False}).status_code == 200

    _feature_disabled(tenant.account.owner.get(job), "get job")
    _feature_disabled(tenant.account.owner.put(f"{job}/settings", json={"retries": 1}),
                      "settings")
    _feature_disabled(tenant.account.owner.get(f"/api/v1/executions/{tenant.execution_id}"),
                      "get execution")
    invoked = tenant.account.owner.post(f"{job}/invoke", json={})
    _feature_disabled(invoked, "invoke")

    assert operator.patch(account_path, json={"batch_jobs_enabled": True}).status_code == 200
    blocked = tenant.account.owner.get("/api/v1/executions",
                                       params={"job_id": tenant.job_id, "status": "blocked"})
    assert [(e["id"], e["reason"]) for e in blocked.json()["items"]] == [
        (invoked.json()["error"]["execution_id"], "feature_disabled")]
