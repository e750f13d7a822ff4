"""The console in a real browser, as a person uses it: from an invite to an invocation
watched live until it succeeds, its artifact downloaded, and the usage page."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from e2e_support import OPERATOR_TOKEN, ServerProcess, make_zip

JOB_MAIN = '''\
import os
import time

from helper import LS


def main(event):
    LS.log.info("starting", {"body": event["body"]})
    for step in range(6):
        print(f"step {step}")
        time.sleep(0.5)
    with open(os.path.join(os.environ["OUTPUT_DIR"], "report.csv"), "w") as report:
        report.write("name,greeting\\n" + event["body"].get("name", "world") + ",hello\\n")
    LS.log.info("done")
'''


UNLABELLED = """() => [...document.querySelectorAll(
    'input:not([type=hidden]), select, textarea, button')].filter((el) => {
  if (el.tagName === 'BUTTON') return !el.textContent.trim() && !el.getAttribute('aria-label');
  if (el.getAttribute('aria-label') || el.closest('label')) return false;
  return !(el.id && document.querySelector(`label[for="${el.id}"]`));
}).map((el) => el.outerHTML)"""


def shot(page: Any, folder: Path, name: str) -> None:
    """A screenshot of the page as it is, after checking every control has a label."""
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    assert page.evaluate(UNLABELLED) == [], f"{name}: controls without a label"


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
    # Choosing the type refreshes the preview first, with no times yet: that error quotes
    # an example ("01:00") and must not be taken for the answer to the times typed.
    error.filter(has_text="60 minutes").wait_for()
    assert "01:00" in error.inner_text() and "01:30" in error.inner_text()
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

    # Before the run: the usage page counts nothing yet (it moves to 1 below).
    page.goto(ui_server.base_url + "/usage")
    assert "Executions today: 0 of 24" in page.locator("main").inner_text()
    gauge_before = page.locator("svg.gauge").inner_html()

    page.goto(ui_server.base_url + "/jobs")
    row = page.locator(f"tr[data-job='{name}']")
    assert row.locator("td[data-col=succeeded]").inner_text() == "0"
    row.get_by_text("Invoke now").click()
    row.get_by_label("JSON body (optional)").fill('{"name": "ui"}')
    shot(page, shots, "07-grid-invoke")
    row.get_by_role("button", name=f"Invoke {name}").click()
    page.wait_for_url(re.compile(r"/executions/exe_"))
    page.locator("pre.log").filter(has_text="step").wait_for()
    # The tail is live: later lines arrive into this very page (no reload) while it runs.
    page.evaluate("window.stillThisPage = true")
    lines_at_first = page.locator("pre.log").inner_text().count("step ")
    page.locator("pre.log").filter(has_text="step 3").wait_for(timeout=30_000)
    assert page.evaluate("window.stillThisPage === true")
    assert page.locator("[data-status]").inner_text() in ("queued", "running")
    assert lines_at_first < 4
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
    assert page.locator("svg.gauge").inner_html() != gauge_before  # the run's time is used
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


def test_the_operator_signs_in_with_the_token_and_invites_a_developer(
        page: Any, browser: Any, ui_server: ServerProcess, shots: Path) -> None:
    page.goto(ui_server.base_url + "/operator")
    page.wait_for_url(re.compile(r"/operator/sign-in$"))
    page.get_by_label("Operator token").fill("not the token")
    page.get_by_role("button", name="Sign in").click()
    assert "not the operator token" in page.locator("main").inner_text()
    page.get_by_label("Operator token").fill(OPERATOR_TOKEN)
    shot(page, shots, "01-operator-sign-in")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/operator$"))
    name = f"ops-{uuid.uuid4().hex[:6]}"
    page.get_by_label("Name").fill(name)
    page.get_by_label("Batch jobs enabled").check()
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(re.compile(r"/operator/accounts/acc_"))
    page.get_by_label("max_jobs").fill("7")
    page.get_by_label("Budget mode").select_option("strict")
    page.get_by_label("New main URL").fill("postgresql://app:hunter2@db.example:5432/crm")
    page.get_by_role("button", name="Save account").click()
    page.wait_for_url(re.compile(r"/operator/accounts/acc_"))
    assert page.get_by_label("max_jobs").input_value() == "7"
    text = page.locator("main").inner_text()
    assert "postgresql://db.example:5432" in text and "hunter2" not in page.content()
    shot(page, shots, "02-operator-account")
    page.get_by_label("E-mail").fill(f"dev-{name}@example.com")
    page.get_by_label("Role").select_option("developer")
    page.get_by_role("button", name="Add user and make an invite link").click()
    url = page.get_by_label("Invite link").input_value()
    assert url.startswith(ui_server.base_url + "/invite/")
    shot(page, shots, "03-operator-invite")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/operator/sign-in$"))

    person = browser.new_context().new_page()
    try:
        person.goto(url)
        person.get_by_label("New password", exact=True).fill("developer password")
        person.get_by_label("New password, again").fill("developer password")
        person.get_by_role("button", name="Set password and sign in").click()
        person.wait_for_url(re.compile(r"/jobs$"))
        assert person.get_by_text("Create a job").count() == 1
        assert person.get_by_text("Delete…").count() == 0
        assert person.goto(ui_server.base_url + "/operator").status == 403
    finally:
        person.context.close()


def test_pages_read_with_javascript_off(browser: Any, ui_server: ServerProcess,
                                        shots: Path) -> None:
    _email, url = invite(ui_server, {})
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(url)
        page.get_by_label("New password", exact=True).fill("no script here")
        page.get_by_label("New password, again").fill("no script here")
        page.get_by_role("button", name="Set password and sign in").click()
        page.wait_for_url(re.compile(r"/jobs$"))
        page.get_by_text("Create a job").click()
        page.get_by_label("Name", exact=True).fill("no-script")
        page.get_by_role("button", name="Create", exact=True).click()
        page.wait_for_url(re.compile(r"/jobs/job_"))
        # Without the live preview, a save answers the gap error in the schedule section.
        schedule = page.locator("form[data-preview]")
        schedule.get_by_label("Type").select_option("daily")
        schedule.get_by_label(re.compile("^Times")).fill("23:30, 00:10")
        schedule.get_by_role("button", name="Save schedule").click()
        refused = page.locator("#schedule [role=alert]").first
        assert "23:30" in refused.inner_text() and "00:10" in refused.inner_text()
        page.screenshot(path=str(shots / "01-no-script-gap-error.png"), full_page=True)
        for path, expected in (("/jobs", "no-script"), ("/usage", "Run-time budget"),
                               ("/audit", "job.create"), ("/executions", "No executions")):
            page.goto(ui_server.base_url + path)
            assert expected in page.locator("main").inner_text(), path
        page.screenshot(path=str(shots / "02-no-script-executions.png"), full_page=True)
    finally:
        context.close()
