"""Notifications: audiences, summaries, webhook bodies and signatures, backoff, settings."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from batchyard.domain.jobs import (
    JobSettings,
    Notify,
    Webhook,
    apply_settings_changes,
    settings_from_dict,
)
from batchyard.domain.notifications import (
    LOG_TAIL_LINES,
    Audience,
    ExecutionSummary,
    audience_of,
    header_text,
    log_tail,
    recipients,
    retry_delay,
    signature,
    summary_audience,
    summary_subject,
    summary_text,
    webhook_body,
)
from batchyard.domain.plans import Plan
from batchyard.errors import InvalidInput

NOTIFY = Notify(on_failure=("ops@example.com", "Lead@example.com"),
                on_success=("lead@example.com", "team@example.com"))
SUMMARY = ExecutionSummary(
    execution_id="exe_1", job_id="job_1", job_name="nightly-export", status="failed",
    reason="error", message="ValueError: boom", source="scheduler", attempts=2,
    created_at="2025-03-10T12:00:00+00:00", started_at="2025-03-10T12:00:01+00:00",
    ended_at="2025-03-10T12:00:05+00:00", runtime_seconds=3.25,
    log_tail=("starting", "Traceback (most recent call last):", "ValueError: boom"))


def seal(secret: str) -> str:
    return f"sealed:{secret}"


# --- who receives what ---------------------------------------------------------------------
@pytest.mark.parametrize(("email_type", "audience"), [
    ("failure", Audience.FAILURE), ("ERROR", Audience.FAILURE), (" warning ", Audience.FAILURE),
    ("success", Audience.SUCCESS), ("info", Audience.SUCCESS),
    ("report-ready", Audience.BOTH), ("", Audience.BOTH), (None, Audience.BOTH)])
def test_the_sdk_email_type_picks_the_notify_list(email_type: object,
                                                   audience: Audience) -> None:
    assert audience_of(email_type) is audience


def test_recipients_of_both_lists_are_each_listed_once_in_settings_order() -> None:
    assert recipients(Audience.BOTH, NOTIFY) == ("ops@example.com", "lead@example.com",
                                                 "team@example.com")
    assert recipients(Audience.FAILURE, NOTIFY) == ("ops@example.com", "lead@example.com")
    assert recipients(Audience.SUCCESS, Notify()) == ()


@pytest.mark.parametrize(("status", "audience"), [
    ("failed", Audience.FAILURE), ("timed_out", Audience.FAILURE),
    ("succeeded", Audience.SUCCESS), ("cancelled", None), ("blocked", None), ("missed", None)])
def test_only_failures_and_successes_are_mailed(status: str, audience: Audience | None) -> None:
    assert summary_audience(status) is audience


# --- what the summary says -----------------------------------------------------------------
def test_the_summary_names_job_execution_status_reason_run_time_logs_and_link() -> None:
    text = summary_text(SUMMARY, "https://by.example.com/")

    assert "Job:        nightly-export" in text
    assert "Execution:  exe_1" in text
    assert "Status:     failed" in text
    assert "Reason:     error" in text
    assert "Error:      ValueError: boom" in text
    assert "Run time:   3.250 s" in text
    assert "Details:    https://by.example.com/api/v1/executions/exe_1" in text
    assert text.endswith("Last 3 log lines:\n  starting\n  Traceback (most recent call last):"
                         "\n  ValueError: boom\n")


def test_the_summary_shows_the_last_attempts_cpu_time_and_peak_memory_when_measured() -> None:
    measured = ExecutionSummary(**{**SUMMARY.as_dict(), "log_tail": (), "cpu_seconds": 1.25,
                                   "peak_memory_bytes": 210 * 1024 * 1024})
    text = summary_text(measured, "https://by.example.com/")
    assert "CPU time:   1.250 s (last attempt)" in text
    assert "Peak memory: 210.0 MiB (last attempt, largest process)" in text
    assert "CPU time" not in summary_text(SUMMARY, "https://by.example.com/")
    # The webhook's body keeps its published shape.
    body = json.loads(webhook_body(measured, "dlv_1", "https://by.example.com"))
    assert "cpu_seconds" not in body["execution"]


def test_the_subject_names_the_job_and_status_and_a_reason_other_than_error() -> None:
    assert summary_subject(SUMMARY) == "[batchyard] nightly-export: failed"
    timed_out = ExecutionSummary(**{**SUMMARY.as_dict(), "status": "timed_out",
                                    "reason": "timeout", "log_tail": ()})
    assert summary_subject(timed_out) == "[batchyard] nightly-export: timed_out (timeout)"


def test_the_log_tail_keeps_the_last_lines_each_on_one_short_line() -> None:
    tail = log_tail([f"line {n}" for n in range(50)] + ["a\nb", "x" * 2000])

    assert len(tail) == LOG_TAIL_LINES
    assert tail[-2] == "a b"
    assert tail[-1] == "x" * 500
    assert tail[0] == "line 32"


def test_a_summary_survives_its_trip_through_the_outbox_json() -> None:
    stored = json.loads(json.dumps(SUMMARY.as_dict()))

    assert ExecutionSummary.from_dict(stored) == SUMMARY


def test_header_text_removes_line_breaks_and_cuts_at_255() -> None:
    assert header_text("a\r\nBcc: x@evil.example\nc") == "a Bcc: x@evil.example c"
    assert len(header_text("s" * 300)) == 255


# --- webhooks ----------------------------------------------------------------------------------
def test_the_webhook_body_is_the_same_bytes_every_time_and_holds_the_execution() -> None:
    first = webhook_body(SUMMARY, "dlv_1", "https://by.example.com")

    assert first == webhook_body(SUMMARY, "dlv_1", "https://by.example.com")
    payload = json.loads(first)
    assert payload["event"] == "execution.failed"
    assert payload["delivery_id"] == "dlv_1"
    assert payload["execution"]["id"] == "exe_1"
    assert payload["execution"]["status"] == "failed"
    assert payload["execution"]["url"] == "https://by.example.com/api/v1/executions/exe_1"
    assert "log_tail" not in payload["execution"]


def test_the_signature_is_the_hex_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"event":"execution.succeeded"}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()

    assert signature("s3cret", body) == f"sha256={expected}"
    assert signature("other", body) != signature("s3cret", body)


def test_retries_back_off_exponentially_up_to_the_cap() -> None:
    assert [retry_delay(n, 30) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert retry_delay(20, 30) == 3600


# --- the webhook setting -----------------------------------------------------------------------
def test_a_webhook_secret_is_stored_sealed_and_shown_only_as_has_secret() -> None:
    settings = apply_settings_changes(JobSettings(), {"webhook": {
        "url": "https://hooks.example.com/x", "secret": "abc"}}, Plan(), seal=seal)

    assert settings.webhook == Webhook("https://hooks.example.com/x", "sealed:abc")
    assert settings.as_dict()["webhook"] == {"url": "https://hooks.example.com/x",
                                             "secret": "sealed:abc"}
    assert settings.public_dict()["webhook"] == {"url": "https://hooks.example.com/x",
                                                 "has_secret": True}
    assert settings_from_dict(settings.as_dict()) == settings


def test_changing_the_webhook_url_without_a_secret_keeps_the_secret() -> None:
    current = JobSettings(webhook=Webhook("https://a.example.com", "sealed:abc"))

    kept = apply_settings_changes(current, {"webhook": {"url": "https://b.example.com"}},
                                  Plan(), seal=seal)
    cleared = apply_settings_changes(current, {"webhook": {"url": "https://b.example.com",
                                                           "secret": None}}, Plan(), seal=seal)
    removed = apply_settings_changes(current, {"webhook": None}, Plan(), seal=seal)
    untouched = apply_settings_changes(current, {"retries": 1}, Plan(), seal=seal)

    assert kept.webhook == Webhook("https://b.example.com", "sealed:abc")
    assert cleared.webhook == Webhook("https://b.example.com", None)
    assert removed.webhook is None
    assert untouched.webhook == current.webhook


@pytest.mark.parametrize("webhook", [
    {"url": "ftp://example.com/x"}, {"url": "https://"}, {"url": "example.com/x"},
    {"url": "https://user:pw@example.com/x"}, {"url": "https://example.com:99999/"},
    {"url": "https://exa mple.com/"}, {"url": "https://example.com/" + "x" * 2000},
    {"url": "https://example.com/", "secret": 5}, {"url": "https://example.com/", "x": 1},
    {}, "https://example.com/"])
def test_invalid_webhooks_are_refused_naming_the_field(webhook: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        apply_settings_changes(JobSettings(), {"webhook": webhook}, Plan(), seal=seal)
    assert str(caught.value.extra["field"]).startswith("webhook")
