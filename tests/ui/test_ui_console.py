"""The console in a real browser, as a person uses it: from an invite to an invocation
watched live until it succeeds, its artifact downloaded, and the usage page."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from e2e_support import ServerProcess, make_zip

JOB_MAIN = '''\
import os
import time

from helper import LS


def main(event):
    LS.log.info("starting", {"body": event["body"]})
    for step in range(3):
        print(f"step {step}")
        time.sleep(0.5)
    with open(os.path.join(os.environ["OUTPUT_DIR"], "report.csv"), "w") as report:
        report.write("name,greeting\\n" + event["body"].get("name", "world") + ",hello\\n")
    LS.log.info("done")
'''


def shot(page: Any, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def invite(server: ServerProcess, plan: dict[str, Any], role: str = "admin") -> tuple[str, str]:
    with server.client() as operator:
        account = operator.post("/api/v1/admin/accounts", json={
            "name": f"ui-{uuid.uuid4().hex[:6]}", "batch_jobs_enabled": True, "plan": plan})
        assert account.status_code == 201, account.text
        email = f"{role}-{uuid.uuid4().hex[:6]}@example.com"
        user = operator.post(f"/api/v1/admin/accounts/{account.json()['id']}/users",
                             json={"email": email, "role": role})
        assert user.status_code == 201, user.text
        return email, str(user.json()["invite_url"])


def test_a_person_goes_from_invite_to_a_watched_invocation_and_signs_out(
        page: Any, ui_server: ServerProcess, shots: Path, tmp_path: Path) -> None:
    # Two fires a day of a 60-minute job against a 60-minute budget: the forecast must
    # show the second blocked every day.
    email, url = invite(ui_server, {"daily_runtime_budget_minutes": 60})
    page.goto(url)
    shot(page, shots, "01-invite")
    page.get_by_label("New password", exact=True).fill("correct horse battery")
    page.get_by_label("New password, again").fill("correct horse battery")
    page.get_by_role("button", name="Set password and sign in").click()
    page.wait_for_url(re.compile(r"/jobs$"))
    shot(page, shots, "02-grid-empty")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/sign-in$"))
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill("correct horse battery")
    shot(page, shots, "03-sign-in")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/jobs$"))

    name = f"ui-report-{uuid.uuid4().hex[:6]}"
    page.get_by_text("Create a job").click()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_role("button", name="Create", exact=True).click()
    page.wait_for_url(re.compile(r"/jobs/job_"))
    job_url = page.url

    archive = tmp_path / "job.zip"
    archive.write_bytes(make_zip({"main.py": JOB_MAIN}))
    page.get_by_label(re.compile("Zip file with main.py")).set_input_files(str(archive))
    page.get_by_role("button", name="Upload").click()
    page.wait_for_selector("text=Uploaded code version 1.")
    assert page.locator(".source").inner_text().count("LS.log.info") == 2
    assert page.locator(".source .k").count() > 0, "main.py is not highlighted"

    schedule = page.locator("form[data-preview]")
    schedule.get_by_label("Type").select_option("daily")
    schedule.get_by_label(re.compile("^Times")).fill("01:00, 01:30")
    error = schedule.locator("[data-preview-error]")
    error.filter(has_text="01:00").wait_for()
    assert "01:30" in error.inner_text() and "60 minutes" in error.inner_text()
    shot(page, shots, "04-schedule-gap-error")
    schedule.get_by_label(re.compile("^Times")).fill("01:00, 03:00")
    forecast = schedule.locator("[data-preview-forecast]")
    forecast.filter(has_text="would be blocked").wait_for()
    assert error.inner_text() == ""
    assert "run-time budget" in forecast.inner_text()
    assert schedule.locator("ol.runs li").count() == 5
    shot(page, shots, "05-schedule-forecast")
    schedule.get_by_role("button", name="Save schedule").click()
    page.wait_for_selector("text=Schedule saved.")

    page.get_by_role("link", name="Review and publish…").click()
    diff = page.locator("table.diff")
    assert "main.py" in diff.inner_text() and "daily at 01:00, 03:00" in diff.inner_text()
    shot(page, shots, "06-publish-diff")
    page.get_by_role("button", name=f"Confirm: publish {name}").click()
    page.wait_for_selector("text=Published.")

    page.goto(ui_server.base_url + "/jobs")
    row = page.locator(f"tr[data-job='{name}']")
    assert row.locator("td[data-col=succeeded]").inner_text() == "0"
    row.get_by_text("Invoke now").click()
    row.get_by_label("JSON body (optional)").fill('{"name": "ui"}')
    shot(page, shots, "07-grid-invoke")
    row.get_by_role("button", name=f"Invoke {name}").click()
    page.wait_for_url(re.compile(r"/executions/exe_"))
    page.locator("pre.log").filter(has_text="step").wait_for()
    shot(page, shots, "08-execution-live")
    page.locator("[data-status]").filter(has_text="succeeded").wait_for(timeout=30_000)
    # The page loads itself again at the end: attempts, run time and artifacts appear.
    page.get_by_role("link", name="report.csv").wait_for()
    assert "running" not in page.locator("table").first.inner_text()
    assert "done" in page.locator("pre.log").inner_text()
    shot(page, shots, "09-execution-done")

    with page.expect_download() as download:
        page.get_by_role("link", name="report.csv").click()
    assert Path(download.value.path()).read_text() == "name,greeting\nui,hello\n"

    page.get_by_role("link", name="Usage").click()
    assert page.locator("svg.gauge").count() == 1
    assert "Executions today: 1 of 24" in page.locator("main").inner_text()
    assert "would be blocked" in page.locator("[data-forecast-summary]").inner_text()
    shot(page, shots, "10-usage")

    page.get_by_role("link", name="Batch jobs").click()
    row = page.locator(f"tr[data-job='{name}']")
    assert row.locator("td[data-col=succeeded]").inner_text() == "1"
    assert "succeeded" in row.inner_text()
    shot(page, shots, "11-grid-after")

    page.get_by_role("link", name="Audit").click()
    assert "job.publish" in page.locator("main").inner_text()
    shot(page, shots, "12-audit")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/sign-in$"))
    page.goto(job_url)
    page.wait_for_url(re.compile(r"/sign-in$"))
