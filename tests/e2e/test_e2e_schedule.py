"""PUT /jobs/{id}/schedule over HTTP: next runs, gap refusals naming the pair, bad input."""

from __future__ import annotations

from e2e_support import AccountFactory, create_job


def test_a_daily_schedule_answers_its_next_five_runs_in_utc_and_local_time(
        make_account: AccountFactory) -> None:
    account = make_account()
    job_id = create_job(account.owner)
    answer = account.owner.put(f"/api/v1/jobs/{job_id}/schedule", json={
        "type": "daily", "times": ["09:30", "21:30"], "timezone": "Asia/Kolkata"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["times"] == ["09:30", "21:30"]
    assert len(body["next_runs"]) == 5
    assert all(run["local"].endswith("+05:30") for run in body["next_runs"])
    assert {run["local"][11:16] for run in body["next_runs"]} == {"09:30", "21:30"}
    assert account.owner.get(f"/api/v1/jobs/{job_id}").json()["schedule_summary"] \
        .startswith("daily")


def test_times_closer_than_the_plans_gap_are_refused_naming_the_pair(
        make_account: AccountFactory) -> None:
    account = make_account(plan={"min_schedule_gap_minutes": 60})
    job_id = create_job(account.owner)
    answer = account.owner.put(f"/api/v1/jobs/{job_id}/schedule", json={
        "type": "daily", "times": ["23:30", "00:10"], "timezone": "UTC"})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "schedule_gap_too_small"
    assert "23:30" in error["message"] and "00:10" in error["message"]
    assert len(error["pair"]) == 2


def test_bad_schedules_are_refused_with_the_field(make_account: AccountFactory) -> None:
    account = make_account()
    job_id = create_job(account.owner)
    for bad, field in (({"type": "daily", "times": ["25:00"]}, "times"),
                       ({"type": "weekly", "times": ["09:00"], "days_of_week": ["xyz"]},
                        "days_of_week"),
                       ({"type": "cron", "cron": "not a cron"}, "cron"),
                       ({"type": "daily", "times": ["09:00"], "timezone": "Mars/Base"},
                        "timezone")):
        answer = account.owner.put(f"/api/v1/jobs/{job_id}/schedule", json=bad)
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.json()["error"]["field"] == field, answer.json()
