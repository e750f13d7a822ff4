"""Quiet-schedule alerts end to end on the services, with time advanced by the test: a
daily job blocked by its budget raises one "late" alert and, after the next success, one
"recovered" alert, by e-mail (a real aiosmtpd server) and webhook (a real receiver)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import func, select

from batchyard.domain.attempts import AttemptResult
from batchyard.domain.clock import FixedClock
from batchyard.domain.executions import AttemptOutcome
from batchyard.errors import InvalidInput
from batchyard.runtime.loops.delivery_loop import DeliveryLoop, DeliveryPolicy
from batchyard.runtime.outbound.smtp import SmtpConfig, SmtpMailer
from batchyard.runtime.outbound.webhooks import WebhookPoster
from batchyard.services import accounts, alerts, jobs, retention, scheduler
from batchyard.services.context import Actor, Platform
from batchyard.services.queue import claim_next_execution, finish_attempt
from batchyard.store.models import Account, AlertIncident, Delivery, Job


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content or b"")))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, SmtpConfig]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, SmtpConfig(host="127.0.0.1", port=port, tls="none", user=None,
                            password=None, sender="batchyard@example.com", timeout=5.0)
    controller.stop()


@pytest.fixture
def receiver() -> Iterator[tuple[list[tuple[dict[str, str], bytes]], str]]:
    calls: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield calls, f"http://127.0.0.1:{httpd.server_address[1]}/alerts"
    httpd.shutdown()
    httpd.server_close()


def deliver_all(platform: Platform, config: SmtpConfig) -> None:
    loop = DeliveryLoop(platform, SmtpMailer(config), WebhookPoster(5.0, allow_private=True),
                        "https://by.example.com", DeliveryPolicy())
    loop.start()  # the real driver thread, woken by the outbox rows' commits
    try:
        loop.wake()
        for _ in range(3):
            assert loop.settle(10)
            loop.step()
        assert loop.settle(10)
    finally:
        loop.stop()


def test_a_budget_blocked_daily_job_raises_one_late_alert_and_one_recovered_alert(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job],
        smtp: tuple[Inbox, SmtpConfig],
        receiver: tuple[list[tuple[dict[str, str], bytes]], str]) -> None:
    inbox, config = smtp
    calls, url = receiver
    account = make_account(plan={"daily_runtime_budget_minutes": 0})
    owner = make_actor(account)
    job = make_published_job(owner, schedule={"type": "daily", "times": ["13:00"],
                                              "timezone": "UTC"}, settings={
        "notify": {"on_failure": ["ops@example.com"]}, "webhook": {"url": url},
        "alerts": {"late_after_minutes": 30}})
    assert alerts.check_alerts(platform) == alerts.AlertReport(0, 0)  # nothing expected yet

    clock.advance(hours=1)  # 13:00: the run is blocked by the budget
    assert scheduler.fire_due(platform).blocked == 1
    clock.advance(minutes=20)
    assert alerts.check_alerts(platform) == alerts.AlertReport(0, 0)  # within the window
    clock.advance(minutes=15)
    assert alerts.check_alerts(platform) == alerts.AlertReport(1, 0)
    for _ in range(3):  # one notification per incident, however often it is checked
        clock.advance(hours=3)
        assert alerts.check_alerts(platform) == alerts.AlertReport(0, 0)
    deliver_all(platform, config)
    assert len(inbox.messages) == 1 and len(calls) == 1

    accounts.update_account(platform, account.id, {"plan": {
        "daily_runtime_budget_minutes": 240}})
    clock.at = clock.at.replace(hour=13, minute=0) + timedelta(days=1)
    assert scheduler.fire_due(platform).queued == 1
    assert alerts.check_alerts(platform) == alerts.AlertReport(0, 0)  # still open, no repeat
    claimed = claim_next_execution(platform, "node-a:1", 30.0)
    assert claimed is not None and claimed.job_id == job.id
    clock.advance(seconds=5)
    finish_attempt(platform, claimed, AttemptResult(AttemptOutcome.SUCCEEDED, 5.0, 0, None,
                                                    clock.now()))
    assert alerts.check_alerts(platform) == alerts.AlertReport(0, 1)
    clock.advance(hours=2)
    assert alerts.check_alerts(platform) == alerts.AlertReport(0, 0)
    deliver_all(platform, config)

    subjects = [message_from_bytes(raw)["Subject"] for _, raw in inbox.messages]
    assert [to for to, _ in inbox.messages] == [["ops@example.com"], ["ops@example.com"]]
    assert subjects[0].endswith(": late") and subjects[1].endswith(": recovered"), subjects
    # The webhook also hears of the run itself (execution.succeeded), as always.
    alert_calls = [(headers, body) for headers, body in calls
                   if headers["x-batchyard-event"].startswith("alert.")]
    assert [headers["x-batchyard-event"] for headers, _ in alert_calls] == [
        "alert.late", "alert.late.recovered"]
    assert len(calls) == 3
    bodies = [json.loads(body) for _, body in alert_calls]
    assert bodies[0]["alert"]["job_id"] == job.id
    assert bodies[0]["alert"]["subject"] == "2025-03-10T13:00:00+00:00"
    assert bodies[1]["alert"]["subject"] == bodies[0]["alert"]["subject"]

    # Alert notifications and closed incidents are kept as long as the audit trail.
    clock.advance(days=366)
    retention.purge_alerts(platform, 365)
    with platform.db.read() as session:
        assert session.scalar(select(func.count()).select_from(AlertIncident)) == 0
        assert session.scalar(select(func.count()).select_from(Delivery).where(
            Delivery.execution_id.is_(None))) == 0


def test_a_run_past_max_duration_alerts_once_and_recovers_when_it_ends(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    from sqlalchemy import select

    from batchyard.services import invoke
    from batchyard.services.notifications import WEBHOOK
    from batchyard.store.models import Delivery

    owner = make_actor(make_account())
    job = make_published_job(owner, settings={
        "webhook": {"url": "https://hooks.example.com/x"},
        "alerts": {"max_duration_minutes": 10}})
    invoke.invoke(platform, owner, job.id, {}, {})
    claimed = claim_next_execution(platform, "node-a:1", 3600.0)
    assert claimed is not None
    clock.advance(minutes=9)
    assert alerts.check_alerts(platform) == alerts.AlertReport(0, 0)
    clock.advance(minutes=2)
    assert alerts.check_alerts(platform) == alerts.AlertReport(1, 0)
    clock.advance(minutes=5)
    assert alerts.check_alerts(platform) == alerts.AlertReport(0, 0)
    finish_attempt(platform, claimed, AttemptResult(AttemptOutcome.FAILED, 960.0, 1, "x",
                                                    clock.now()))
    assert alerts.check_alerts(platform) == alerts.AlertReport(0, 1)
    with platform.db.read() as session:
        events = list(session.scalars(select(Delivery.event).where(
            Delivery.kind == WEBHOOK, Delivery.execution_id.is_(None))
            .order_by(Delivery.created_at)))
    assert events == ["alert.duration", "alert.duration.recovered"]


def test_alert_settings_are_validated(platform: Platform, make_account: Callable[..., Account],
                                      make_actor: Callable[..., Actor],
                                      make_job: Callable[..., Job]) -> None:
    owner = make_actor(make_account())
    job = make_job(owner)
    for bad in ({"late_after_minutes": 0}, {"late_after_minutes": "x"},
                {"max_duration_minutes": 20000}, {"other": 1}, [1]):
        with pytest.raises(InvalidInput):
            jobs.update_settings(platform, owner, job.id, {"alerts": bad})
    changed = jobs.update_settings(platform, owner, job.id, {"alerts": {
        "late_after_minutes": 90}})
    assert changed.settings["alerts"] == {"late_after_minutes": 90.0,
                                          "max_duration_minutes": None}
    removed = jobs.update_settings(platform, owner, job.id, {"alerts": None})
    assert removed.settings["alerts"] is None
