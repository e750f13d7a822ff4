"""The outbox and the e-mail quota against real databases; the delivery loop's step with the
fake mailer and a real HTTP receiver."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from batchyard.domain.clock import FixedClock
from batchyard.domain.executions import AttemptOutcome
from batchyard.domain.notifications import signature
from batchyard.errors import NotFound
from batchyard.runtime.delivery_loop import DeliveryLoop, DeliveryPolicy
from batchyard.runtime.smtp import DeliveryFailure, RecordingMailer
from batchyard.runtime.webhooks import WebhookPoster
from batchyard.services import executions, invoke, notifications
from batchyard.services.context import Actor, Platform
from batchyard.services.queue import (
    AttemptResult,
    ClaimedAttempt,
    LogBatch,
    LogRecord,
    claim_next_execution,
    finish_attempt,
)
from batchyard.store.models import Account, Delivery, Job

Result = Callable[..., AttemptResult]
NOTIFY = {"on_failure": ["ops@example.com"], "on_success": ["team@example.com"]}
SECRET = "whsec-integration"


@pytest.fixture
def owner(make_account: Callable[..., Account], make_actor: Callable[..., Actor]) -> Actor:
    return make_actor(make_account())


def start(platform: Platform, actor: Actor, job: Job) -> ClaimedAttempt:
    invoke.invoke(platform, actor, job.id, {}, {})
    claimed = claim_next_execution(platform, "node-a:1", 30.0)
    assert claimed is not None
    return claimed


def deliveries(platform: Platform, execution_id: str | None = None) -> list[Delivery]:
    with platform.db.read() as session:
        stmt = select(Delivery).order_by(Delivery.kind)
        if execution_id is not None:
            stmt = stmt.where(Delivery.execution_id == execution_id)
        return list(session.scalars(stmt))


@pytest.fixture
def hook_server() -> Iterator[tuple[list[tuple[dict[str, str], bytes]], list[int], str]]:
    """A real HTTP receiver: records (headers, body) and answers the queued statuses, then 200."""
    calls: list[tuple[dict[str, str], bytes]] = []
    statuses: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(statuses.pop(0) if statuses else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield calls, statuses, f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    httpd.shutdown()
    httpd.server_close()


def loop(platform: Platform, mailer: RecordingMailer | None,
         max_tries: int = 3) -> DeliveryLoop:
    return DeliveryLoop(platform, mailer, WebhookPoster(5.0, allow_private=True),
                        "https://by.example.com", DeliveryPolicy(max_tries=max_tries,
                                                                 backoff_seconds=10.0))


# --- the outbox is written with the final state -----------------------------------------------
def test_a_failed_execution_owes_one_email_and_one_webhook_with_its_last_logs(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job],
        result: Result) -> None:
    job = make_published_job(owner, settings={
        "notify": NOTIFY, "webhook": {"url": "https://hooks.example.com/x", "secret": SECRET}})
    claimed = start(platform, owner, job)
    woken = threading.Event()
    platform.on_delivery = woken.set
    logs = [LogRecord(platform.clock.now(), "stdout", f"line {n}") for n in range(30)]
    done = result(AttemptOutcome.FAILED, error="ValueError: boom")

    finish_attempt(platform, claimed, replace(done, logs=LogBatch(
        tuple(logs), claimed.log_seq, 100, False)))

    email, webhook = deliveries(platform, claimed.execution_id)
    assert woken.is_set()
    assert (email.kind, email.status, email.event) == ("email", "pending", "execution.failed")
    assert email.payload["to"] == ["ops@example.com"]
    summary = email.payload["summary"]
    assert summary["status"] == "failed" and summary["reason"] == "error"
    assert summary["message"] == "ValueError: boom"
    assert summary["log_tail"] == [f"line {n}" for n in range(10, 30)]
    assert webhook.kind == "webhook"
    assert webhook.payload["url"] == "https://hooks.example.com/x"
    assert SECRET not in str(webhook.payload)
    assert platform.secrets.decrypt(webhook.payload["secret"]) == SECRET


def test_an_attempt_that_is_retried_owes_nothing_yet(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job],
        result: Result) -> None:
    job = make_published_job(owner, settings={"retries": 1, "notify": NOTIFY})
    claimed = start(platform, owner, job)

    finish_attempt(platform, claimed, result(AttemptOutcome.FAILED))

    assert deliveries(platform) == []
    retried = claim_next_execution(platform, "node-a:1", 30.0)
    assert retried is not None
    finish_attempt(platform, retried, result(AttemptOutcome.SUCCEEDED))
    [email] = deliveries(platform)
    assert email.payload["to"] == ["team@example.com"]
    assert email.payload["summary"]["attempts"] == 2


def test_a_success_without_on_success_or_webhook_owes_nothing(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job],
        result: Result) -> None:
    job = make_published_job(owner, settings={"notify": {"on_failure": ["ops@example.com"]}})

    finish_attempt(platform, start(platform, owner, job), result(AttemptOutcome.SUCCEEDED))

    assert deliveries(platform) == []


def test_cancelling_a_queued_execution_calls_the_webhook_but_mails_nobody(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job]) -> None:
    job = make_published_job(owner, settings={
        "notify": NOTIFY, "webhook": {"url": "https://hooks.example.com/x"}})
    recorded = invoke.invoke(platform, owner, job.id, {}, {})

    executions.cancel(platform, owner, recorded.id)

    [webhook] = deliveries(platform)
    assert (webhook.kind, webhook.event) == ("webhook", "execution.cancelled")
    assert webhook.payload["secret"] is None


def test_deliveries_are_listed_only_for_their_own_account(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job],
        make_account: Callable[..., Account], make_actor: Callable[..., Actor],
        result: Result) -> None:
    job = make_published_job(owner, settings={"notify": NOTIFY})
    claimed = start(platform, owner, job)
    finish_attempt(platform, claimed, result(AttemptOutcome.FAILED))
    outsider = make_actor(make_account())

    assert len(notifications.list_deliveries(platform, owner, claimed.execution_id)) == 1
    with pytest.raises(NotFound):
        notifications.list_deliveries(platform, outsider, claimed.execution_id)


# --- the e-mail quota of job code ----------------------------------------------------------------
def test_the_email_quota_is_three_per_execution_and_a_failed_send_gives_one_back(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job]) -> None:
    job = make_published_job(owner, settings={"notify": NOTIFY})
    claimed = start(platform, owner, job)
    take = lambda: notifications.take_job_email(  # noqa: E731
        platform, claimed.account_id, claimed.execution_id, 3)

    assert [take(), take(), take()] == [1, 2, 3]
    with pytest.raises(notifications.TooManyEmails):
        take()
    notifications.give_back_job_email(platform, claimed.account_id, claimed.execution_id)
    assert take() == 3


def test_concurrent_email_requests_never_pass_the_quota(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job]) -> None:
    job = make_published_job(owner, settings={"notify": NOTIFY})
    claimed = start(platform, owner, job)
    granted: list[int] = []
    refused: list[int] = []

    def ask() -> None:
        try:
            granted.append(notifications.take_job_email(
                platform, claimed.account_id, claimed.execution_id, 3))
        except notifications.TooManyEmails:
            refused.append(1)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(granted) == [1, 2, 3]
    assert len(refused) == 5


def test_an_email_type_without_recipients_is_refused(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job]) -> None:
    job = make_published_job(owner, settings={"notify": {"on_success": ["team@example.com"]}})
    claimed = start(platform, owner, job)

    assert notifications.job_email_recipients(
        platform, claimed.account_id, claimed.job_id, claimed.revision, "info") == (
        "team@example.com",)
    with pytest.raises(notifications.NoRecipients, match=r"notify\.on_failure"):
        notifications.job_email_recipients(platform, claimed.account_id, claimed.job_id,
                                            claimed.revision, "error")


# --- the delivery loop ---------------------------------------------------------------------------
def test_the_loop_mails_the_summary_once(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job],
        result: Result) -> None:
    job = make_published_job(owner, settings={"notify": NOTIFY})
    claimed = start(platform, owner, job)
    finish_attempt(platform, claimed, result(AttemptOutcome.TIMED_OUT))
    mailer = RecordingMailer()
    delivery = loop(platform, mailer)

    delivery.step()
    delivery.step()

    [sent] = mailer.sent
    assert sent.to == ("ops@example.com",)
    assert sent.subject == f"[batchyard] {job.name}: timed_out (timeout)"
    assert f"https://by.example.com/api/v1/executions/{claimed.execution_id}" in sent.body
    [row] = deliveries(platform)
    assert (row.status, row.attempts, row.next_attempt_at) == ("sent", 1, None)


def test_a_failing_mail_server_is_retried_with_backoff_then_given_up(
        platform: Platform, clock: FixedClock, owner: Actor,
        make_published_job: Callable[..., Job], result: Result) -> None:
    job = make_published_job(owner, settings={"notify": NOTIFY})
    finish_attempt(platform, start(platform, owner, job), result(AttemptOutcome.FAILED))
    mailer = RecordingMailer(fail_with=DeliveryFailure("connection refused"))
    delivery = loop(platform, mailer, max_tries=3)

    delays = []
    for _ in range(3):
        delivery.step()
        [row] = deliveries(platform)
        if row.next_attempt_at is not None:
            delays.append((row.next_attempt_at - clock.now()).total_seconds())
            clock.advance(seconds=delays[-1])

    [row] = deliveries(platform)
    assert (row.status, row.attempts) == ("failed", 3)
    assert row.last_error == "connection refused"
    assert delays == [10.0, 20.0]


def test_without_a_mail_server_summaries_fail_at_once(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job],
        result: Result) -> None:
    job = make_published_job(owner, settings={"notify": NOTIFY})
    finish_attempt(platform, start(platform, owner, job), result(AttemptOutcome.FAILED))

    loop(platform, None).step()

    [row] = deliveries(platform)
    assert (row.status, row.attempts) == ("failed", 1)
    assert "BATCHYARD_SMTP_HOST" in (row.last_error or "")


def test_a_claimed_delivery_is_not_claimed_again_until_its_lease_ends(
        platform: Platform, clock: FixedClock, owner: Actor,
        make_published_job: Callable[..., Job], result: Result) -> None:
    job = make_published_job(owner, settings={"notify": NOTIFY})
    finish_attempt(platform, start(platform, owner, job), result(AttemptOutcome.FAILED))

    [first] = notifications.claim_due(platform, 60.0, 10)
    assert notifications.claim_due(platform, 60.0, 10) == []
    clock.advance(seconds=61)
    [again] = notifications.claim_due(platform, 60.0, 10)

    assert again.id == first.id and again.attempts == 2
    # The first sender's late outcome is fenced off.
    assert notifications.record_sent(platform, first) is False
    assert notifications.record_sent(platform, again) is True


def test_the_webhook_is_posted_signed_and_retried_after_a_500(
        platform: Platform, clock: FixedClock, owner: Actor,
        make_published_job: Callable[..., Job], result: Result,
        hook_server: tuple[list[tuple[dict[str, str], bytes]], list[int], str]) -> None:
    calls, statuses, url = hook_server
    statuses.append(500)
    job = make_published_job(owner, settings={"webhook": {"url": url, "secret": SECRET}})
    finish_attempt(platform, start(platform, owner, job), result(AttemptOutcome.SUCCEEDED))
    delivery = loop(platform, None)

    delivery.step()
    clock.advance(seconds=10)
    delivery.step()

    [row] = deliveries(platform)
    assert (row.status, row.attempts) == ("sent", 2)
    (_, first_body), (headers, body) = calls
    assert first_body == body
    assert headers["x-batchyard-signature"] == signature(SECRET, body)
    assert headers["x-batchyard-event"] == "execution.succeeded"
    assert headers["x-batchyard-delivery"] == row.id


def test_webhooks_to_private_addresses_are_refused_unless_allowed() -> None:
    poster = WebhookPoster(1.0)
    try:
        for url in ("http://127.0.0.1:9/x", "http://[::1]:9/x", "http://169.254.169.254/x",
                    "http://10.1.2.3/x", "http://localhost:9/x"):
            with pytest.raises(DeliveryFailure) as caught:
                poster.post(url, b"{}", {})
            assert caught.value.permanent, url
    finally:
        poster.close()
