"""Console pages over a real server: refused uploads explained in place, and the cookie of
a deployment behind https."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_support import (
    Account,
    AccountFactory,
    ServerProcess,
    create_job,
    deploy_job,
    invoke,
    make_zip,
    upload_code,
    wait_for,
)

PASSWORD = "a long enough password"


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def sign_in_by_invite(browser: httpx.Client, url: str, base: str | None = None) -> str:
    if base is not None:  # the link names the public URL; the server here is plain http
        url = base + "/invite/" + url.rsplit("/", 1)[1]
    form = browser.get(url)
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None, form.text[:300]
    headers = {}
    if base is not None:
        # A Secure cookie is not sent back over plain http: hand it over as the proxy would.
        assert "Secure" in form.headers["set-cookie"]
        headers["Cookie"] = form.headers["set-cookie"].split(";", 1)[0]
    answer = browser.post(url, data={"csrf": token.group(1), "password": PASSWORD,
                                     "password_again": PASSWORD}, headers=headers)
    assert answer.status_code == 303, answer.text[:300]
    return answer.headers["set-cookie"]


def sign_in_as(server: ServerProcess, browser: httpx.Client, account: Account,
               role: str) -> None:
    """A new user of ``account`` with ``role``, invited by the operator, signed in."""
    with server.client() as operator:
        url = operator.post(f"/api/v1/admin/accounts/{account.id}/users", json={
            "email": f"{role}-{uuid.uuid4().hex[:6]}@example.com", "role": role}
        ).json()["invite_url"]
    sign_in_by_invite(browser, url)


def test_a_refused_upload_is_explained_on_the_job_page(
        server: ServerProcess, make_account: AccountFactory, browser: httpx.Client) -> None:
    account = make_account(plan={"max_code_size_bytes": 2000})
    job_id = create_job(account.owner)
    with server.client() as operator:
        url = operator.post(f"/api/v1/admin/accounts/{account.id}/users", json={
            "email": f"up-{uuid.uuid4().hex[:6]}@example.com", "role": "developer"}
        ).json()["invite_url"]
    sign_in_by_invite(browser, url)
    page = browser.get(f"{server.base_url}/jobs/{job_id}")
    csrf = re.search(r'data-csrf="([^"]+)"', page.text)
    assert csrf is not None and 'data-max-bytes="2000"' in page.text

    def upload(content: bytes) -> str:
        answer = browser.post(f"{server.base_url}/jobs/{job_id}/code",
                              data={"csrf": csrf.group(1)},
                              files={"file": ("job.zip", content, "application/zip")})
        assert answer.status_code == 303
        assert answer.headers["location"].endswith("#code")
        return browser.get(server.base_url + answer.headers["location"]).text

    too_large = upload(b"x" * 5000)
    assert "Not saved: The file is larger than the plan" in too_large
    no_main = upload(make_zip({"job.py": "print(1)\n"}))
    assert "Not saved:" in no_main and "main.py" in no_main
    broken = upload(make_zip({"main.py": "def main(:\n"}))
    assert "Not saved:" in broken and "line 1" in broken
    assert account.owner.get(f"/api/v1/jobs/{job_id}").json()["code_version"] is None
    good = upload(make_zip({"main.py": "def main():\n    return 1\n"}))
    assert "Uploaded code version 1." in good and '<span class="k">def</span>' in good


def test_behind_https_the_session_cookie_is_secure_and_links_name_the_public_url(
        tmp_path: Path, browser: httpx.Client) -> None:
    server = ServerProcess(tmp_path, env={"BATCHYARD_PUBLIC_URL": "https://jobs.example"})
    server.start()
    try:
        with server.client() as operator:
            account = operator.post("/api/v1/admin/accounts", json={
                "name": "https", "batch_jobs_enabled": True}).json()["id"]
            url = operator.post(f"/api/v1/admin/accounts/{account}/users", json={
                "email": "tls@example.com", "role": "admin"}).json()["invite_url"]
        assert url.startswith("https://jobs.example/invite/")
        cookie = sign_in_by_invite(browser, url, base=server.base_url)
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    finally:
        server.stop()


def test_a_running_execution_is_cancelled_from_its_page(
        server: ServerProcess, make_account: AccountFactory, browser: httpx.Client) -> None:
    account = make_account()
    job_id = deploy_job(account, "import time\n\ndef main():\n    print('working')\n"
                        "    time.sleep(60)\n")
    execution = invoke(account.owner, job_id)
    wait_for(account.owner, execution, "running")
    sign_in_as(server, browser, account, "developer")
    page = browser.get(f"{server.base_url}/executions/{execution}")
    assert "Cancel execution" in page.text and "data-tail=\"/executions/" in page.text
    csrf = re.search(r'data-csrf="([^"]+)"', page.text)
    assert csrf is not None
    answer = browser.post(f"{server.base_url}/executions/{execution}/cancel",
                          data={"csrf": csrf.group(1)})
    assert answer.status_code == 303
    assert wait_for(account.owner, execution, timeout=20)["status"] == "cancelled"
    ended = browser.get(f"{server.base_url}/executions/{execution}").text
    assert "Cancel execution" not in ended and "cancelled" in ended


def test_the_audit_links_each_code_upload_to_its_changes(
        server: ServerProcess, make_account: AccountFactory, browser: httpx.Client) -> None:
    account = make_account()
    job_id = create_job(account.owner)
    for body in ("def main():\n    return 1\n", "def main():\n    return 2\n"):
        assert upload_code(account.owner, job_id, make_zip(
            {"main.py": body, "notes.txt": "same"})).status_code == 201
    sign_in_as(server, browser, account, "viewer")
    audit = browser.get(f"{server.base_url}/audit?job_id={job_id}").text
    link = f"/jobs/{job_id}/code/diff?base=1&head=2"
    assert link in audit
    diff = browser.get(f"{server.base_url}/jobs/{job_id}/code/diff",
                       params={"base": 1, "head": 2})
    assert diff.status_code == 200
    assert "-    return 1" in diff.text and "+    return 2" in diff.text
    assert "notes.txt" not in diff.text
    other = make_account()
    theirs = create_job(other.owner)
    upload_code(other.owner, theirs, make_zip({"main.py": "def main():\n    pass\n"}))
    assert browser.get(f"{server.base_url}/jobs/{theirs}/code/diff",
                       params={"base": 1, "head": 1}).status_code == 404


def test_the_execution_page_shows_each_attempts_cpu_time_and_peak_memory(
        server: ServerProcess, make_account: AccountFactory, browser: httpx.Client) -> None:
    account = make_account()
    job_id = deploy_job(account, "import time\n\ndef main():\n"
                        "    block = b'x' * (64 * 1024 * 1024)\n"
                        "    while time.process_time() < 0.3:\n        pass\n"
                        "    print(len(block))\n")
    execution = invoke(account.owner, job_id)
    done = wait_for(account.owner, execution, timeout=60)
    assert done["status"] == "succeeded", done
    (attempt,) = done["attempts"]
    assert attempt["cpu_seconds"] > 0.1 and attempt["peak_memory_bytes"] >= 64 << 20, attempt
    sign_in_as(server, browser, account, "viewer")
    page = browser.get(f"{server.base_url}/executions/{execution}").text
    assert '<th scope="col">CPU time</th><th scope="col">Peak memory</th>' in page
    cells = re.findall(r"<td>([^<]*)</td>", page.split("<h2>Attempts</h2>", 1)[1]
                       .split("</table>", 1)[0])
    assert f"{attempt['cpu_seconds']:.2f} s" in cells, cells
    assert f"{attempt['peak_memory_bytes'] / (1 << 20):.1f} MiB" in cells, cells
