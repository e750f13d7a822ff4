"""The API additions of the console: the forecast, and a person's password."""

from __future__ import annotations

import json

from e2e_support import AccountFactory, ServerProcess, create_job, make_zip, upload_code

HOURLY_JOB = {"timeout_minutes": 60}


def test_the_forecast_lists_the_blocked_fires_and_tries_an_unsaved_schedule(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account(plan={"daily_runtime_budget_minutes": 60})
    client = account.owner
    job_id = create_job(client)
    assert upload_code(client, job_id, make_zip({"main.py": "def main():\n    pass\n"})) \
        .status_code == 201
    assert client.put(f"/api/v1/jobs/{job_id}/settings", json=HOURLY_JOB).status_code == 200
    schedule = {"type": "daily", "times": ["01:00", "03:00"], "timezone": "UTC"}
    assert client.put(f"/api/v1/jobs/{job_id}/schedule", json=schedule).status_code == 200

    # Unpublished: nothing is planned yet.
    empty = client.get("/api/v1/usage/forecast", params={"days": 7})
    assert empty.status_code == 200, empty.text
    assert len(empty.json()["days"]) == 7
    assert all(day["planned"] == 0 for day in empty.json()["days"])

    assert client.post(f"/api/v1/jobs/{job_id}/publish").status_code == 200
    planned = client.get("/api/v1/usage/forecast", params={"days": 5}).json()
    later = planned["days"][1:]
    assert all(day["planned"] == 2 and len(day["blocked"]) == 1 for day in later)
    assert {fire["reason"] for day in later for fire in day["blocked"]} == {
        "runtime_budget_insufficient"}
    assert all(day["max_runtime_seconds"] == 3600 for day in later)
    assert "would be blocked" in planned["summary"]

    # A schedule being edited: one run a day fits the budget.
    tried = client.get("/api/v1/usage/forecast", params={
        "days": 5, "job": job_id,
        "schedule": json.dumps({"type": "daily", "times": ["01:00"]})}).json()
    assert all(not day["blocked"] for day in tried["days"])
    assert tried["summary"].startswith("No run of this schedule")

    assert client.get("/api/v1/usage/forecast", params={"days": 0}).status_code == 422
    assert client.get("/api/v1/usage/forecast", params={
        "job": job_id, "schedule": "{not json"}).status_code == 422
    assert client.get("/api/v1/usage/forecast", params={
        "job": "job_nope", "schedule": "{}"}).status_code in (404, 422)
    other = make_account()
    assert other.owner.get("/api/v1/usage/forecast", params={
        "job": job_id, "schedule": json.dumps({"type": "none"})}).status_code == 404


def test_a_person_sets_and_changes_a_password_over_the_api(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()
    client = account.owner
    short = client.post("/api/v1/me/password", json={"new_password": "short"})
    assert short.status_code == 422
    assert client.post("/api/v1/me/password",
                       json={"new_password": "first password"}).status_code == 204
    wrong = client.post("/api/v1/me/password", json={"current_password": "nope",
                                                     "new_password": "second password"})
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "current_password"
    assert client.post("/api/v1/me/password", json={
        "current_password": "first password",
        "new_password": "second password"}).status_code == 204
    assert client.post("/api/v1/me/password", json={"new_password": "x" * 10},
                       headers={"Authorization": "Bearer nope"}).status_code == 401


def test_the_operator_token_reaches_the_operator_pages_and_no_account_page(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()
    with server.client() as operator:
        listing = operator.get("/operator")
        assert listing.status_code == 200 and account.id in listing.text
        assert operator.get(f"/operator/accounts/{account.id}").status_code == 200
        # Account pages are people's: the operator has none.
        assert operator.get("/jobs", follow_redirects=False).status_code == 303
    with server.client("not-the-token") as stranger:
        assert stranger.get("/operator").status_code == 401
    with server.client(account.keys["owner"]) as key_holder:
        assert key_holder.get("/operator").status_code == 401
