"""The console's defences against a real server: CSRF, tenancy, roles, the failed sign-in
limit, and secret values that never reach a page."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from e2e_support import (
    AccountFactory,
    ServerFactory,
    ServerProcess,
    deploy_job,
    invoke,
    wait_for,
)

PASSWORD = "a long enough password"
SECRET = "s3cr3t-" + uuid.uuid4().hex


_OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def person(server: ServerProcess, account_id: str, role: str) -> tuple[str, httpx.Client]:
    """A user of the account who accepted an invite: a browser-like client with its cookie."""
    with server.client() as operator:
        email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
        made = operator.post(f"/api/v1/admin/accounts/{account_id}/users",
                             json={"email": email, "role": role})
        assert made.status_code == 201, made.text
        url = made.json()["invite_url"]
    assert url.startswith(server.base_url + "/invite/")
    client = httpx.Client(base_url=server.base_url, timeout=30)
    _OPEN.append(client)
    form = client.get(url)
    assert form.status_code == 200 and email in form.text
    accepted = client.post(url, data={"csrf": _token(form.text), "password": PASSWORD,
                                      "password_again": PASSWORD})
    assert accepted.status_code == 303 and accepted.headers["location"] == "/jobs"
    cookie = accepted.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    # One time only.
    assert client.get(url).status_code == 404
    return email, client


def _token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html) or re.search(
        r'data-csrf="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def csrf_of(client: httpx.Client) -> str:
    return _token(client.get("/jobs").text)


def test_a_cross_site_post_without_the_token_is_refused(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, "def main():\n    pass\n")
    _email, browser = person(server, account.id, "admin")
    # What a foreign page's form would send: the cookie rides along, the token cannot.
    for path in (f"/jobs/{job_id}/unpublish", f"/jobs/{job_id}/delete", "/jobs"):
        refused = browser.post(path, data={"name": "evil-job"},
                               headers={"Origin": "https://evil.example"})
        assert refused.status_code == 403, (path, refused.text)
        assert "security token" in refused.text
    wrong = browser.post(f"/jobs/{job_id}/unpublish", data={"csrf": "guess"})
    assert wrong.status_code == 403
    assert account.owner.get(f"/api/v1/jobs/{job_id}").json()["status"] == "published"
    names = [job["name"] for job in account.owner.get("/api/v1/jobs").json()["items"]]
    assert "evil-job" not in names
    # With the token the same post works: the refusal above was the token's doing.
    done = browser.post(f"/jobs/{job_id}/unpublish", data={"csrf": csrf_of(browser)})
    assert done.status_code == 303
    assert account.owner.get(f"/api/v1/jobs/{job_id}").json()["status"] == "unpublished"


def test_another_accounts_pages_are_not_found(
        server: ServerProcess, make_account: AccountFactory) -> None:
    mine, theirs = make_account(), make_account()
    their_job = deploy_job(theirs, "def main():\n    print('x')\n")
    their_execution = invoke(theirs.owner, their_job)
    wait_for(theirs.owner, their_execution)
    _email, browser = person(server, mine.id, "admin")
    csrf = csrf_of(browser)
    for path in (f"/jobs/{their_job}", f"/jobs/{their_job}/publish",
                 f"/jobs/{their_job}/code/1", f"/executions/{their_execution}",
                 f"/executions/{their_execution}/log.txt",
                 f"/executions/{their_execution}/events"):
        assert browser.get(path).status_code == 404, path
    for path in (f"/jobs/{their_job}/unpublish", f"/jobs/{their_job}/invoke",
                 f"/executions/{their_execution}/cancel"):
        assert browser.post(path, data={"csrf": csrf}).status_code == 404, path
    assert their_job not in browser.get("/jobs").text
    assert their_execution not in browser.get("/executions").text
    # The session cookie is no API credential, and a person has no operator pages.
    assert browser.get("/api/v1/jobs").status_code == 401
    assert browser.get("/operator").status_code == 403


def test_a_viewer_sees_no_write_controls_and_is_refused_a_publish(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, "def main():\n    pass\n")
    account.owner.post(f"/api/v1/jobs/{job_id}/unpublish")
    _email, viewer = person(server, account.id, "viewer")
    page = viewer.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    assert "Upload" not in page.text and "Save settings" not in page.text
    assert "Review and publish" not in page.text
    grid = viewer.get("/jobs").text
    assert "Create a job" not in grid and "Delete" not in grid
    refused = viewer.post(f"/jobs/{job_id}/publish", data={"csrf": csrf_of(viewer)})
    assert refused.status_code == 403 and "viewer" in refused.text
    assert account.owner.get(f"/api/v1/jobs/{job_id}").json()["status"] == "unpublished"
    _email, developer = person(server, account.id, "developer")
    assert developer.post(f"/jobs/{job_id}/publish",
                          data={"csrf": csrf_of(developer)}).status_code == 403


def test_the_tenth_failed_sign_in_in_a_minute_is_refused_with_a_wait(
        launch_server: ServerFactory, tmp_path: object) -> None:
    # A server of its own: every client here is 127.0.0.1, whose failures it counts.
    server = launch_server()
    with server.client() as operator:
        account_id = operator.post("/api/v1/admin/accounts", json={
            "name": "limits", "batch_jobs_enabled": True}).json()["id"]
    email, _browser = person(server, account_id, "admin")
    client = httpx.Client(base_url=server.base_url, timeout=30)
    _OPEN.append(client)

    def attempt(address: str, password: str) -> httpx.Response:
        form = client.get("/sign-in")
        return client.post("/sign-in", data={"csrf": _token(form.text), "email": address,
                                             "password": password})

    for number in range(1, 10):
        answer = attempt(email, f"wrong {number}")
        assert answer.status_code == 401, (number, answer.text)
        assert "not right" in answer.text
    tenth = attempt(email, "wrong 10")
    assert tenth.status_code == 429
    assert "wait 60 seconds" in tenth.text
    assert tenth.headers["Retry-After"] == "60"
    # Even the right password waits now.
    right = attempt(email, PASSWORD)
    assert right.status_code == 429 and "wait" in right.text
    assert "batchyard_session" not in right.headers.get("set-cookie", "")
    # The client address is over its limit too, for any e-mail.
    assert attempt("someone-else@example.com", "x").status_code == 429


def test_secret_values_never_appear_in_any_page(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, "import os\nfrom helper import LS\n\ndef main():\n"
                        "    print('token is', LS.settings.TOKEN)\n",
                        variables=[{"key": "TOKEN", "value": SECRET, "secret": True},
                                   {"key": "PLAIN", "value": "visible-value", "secret": False}])
    execution = invoke(account.owner, job_id)
    assert wait_for(account.owner, execution)["status"] == "succeeded"
    _email, browser = person(server, account.id, "admin")
    csrf = csrf_of(browser)
    # Keep the secret (empty value), add a new one: the form never held the old value.
    saved = browser.post(f"/jobs/{job_id}/variables", data={
        "csrf": csrf, "key.1": "TOKEN", "value.1": "", "secret.1": "on",
        "was_secret.1": "on", "key.2": "PLAIN", "value.2": "visible-value",
        "key.3": "OTHER", "value.3": SECRET + "-2", "secret.3": "on"})
    assert saved.status_code == 303
    variables = {v["key"]: v for v in account.owner.get(
        f"/api/v1/jobs/{job_id}/variables").json()["variables"]}
    assert variables["TOKEN"]["secret"] and variables["OTHER"]["secret"]
    rerun = invoke(account.owner, job_id)
    wait_for(account.owner, rerun)
    logs = account.owner.get(f"/api/v1/executions/{rerun}/logs").json()["items"]
    assert any("token is ***" in line["message"] for line in logs), logs
    pages = ["/jobs", f"/jobs/{job_id}", f"/jobs/{job_id}/publish", "/executions",
             f"/executions/{execution}", f"/executions/{rerun}", "/usage", "/audit",
             f"/audit?job_id={job_id}", f"/executions/{rerun}/log.txt"]
    for path in pages:
        answer = browser.get(path)
        assert answer.status_code == 200, (path, answer.text[:300])
        assert SECRET not in answer.text, path
    job_page = browser.get(f"/jobs/{job_id}").text
    assert "visible-value" in job_page
    diff = browser.get(f"/jobs/{job_id}/publish").text
    assert "OTHER" in diff and "added (secret)" in diff
