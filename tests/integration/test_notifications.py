"""The outbox and the e-mail quota against real databases; the delivery loop's step with the
fake mailer and real HTTP receivers; the SMTP mailer against a real aiosmtpd server."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from batchyard.domain.attempts import AttemptResult, ClaimedAttempt, LogBatch, LogRecord
from batchyard.domain.clock import FixedClock
from batchyard.domain.executions import AttemptOutcome
from batchyard.domain.notifications import signature
from batchyard.errors import NotFound
from batchyard.runtime.loops.delivery_loop import DeliveryLoop, DeliveryPolicy
from batchyard.runtime.outbound.smtp import (
    NOT_SENT,
    RECIPIENTS_REFUSED,
    DeliveryFailure,
    OutgoingEmail,
    RecordingMailer,
    SmtpConfig,
    SmtpMailer,
)
from batchyard.runtime.outbound.webhooks import WebhookPoster
from batchyard.services import executions, invoke, notifications
from batchyard.services.context import Actor, Platform
from batchyard.services.queue import claim_next_execution, finish_attempt
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
    assert delivery.settle()
    delivery.step()
    assert delivery.settle()

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
        assert delivery.settle()
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

    delivery = loop(platform, None)
    delivery.step()
    assert delivery.settle()

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
    assert delivery.settle()
    clock.advance(seconds=10)
    delivery.step()
    assert delivery.settle()

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


# --- webhooks: one deadline, pinned addresses ----------------------------------------------------
@pytest.fixture
def dribbler() -> Iterator[str]:
    """A receiver that answers one byte every 0.2 s (for 10 s): each read gets a byte well
    within any per-phase timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    stopped = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 48:
                    if stopped.wait(0.2):
                        return
                    connection.sendall(bytes([byte]))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    stopped.set()
    listener.close()
    thread.join(5)


def test_a_receiver_answering_a_byte_at_a_time_is_cut_off_at_the_whole_calls_deadline(
        dribbler: str) -> None:
    poster = WebhookPoster(1.0, allow_private=True)
    started = time.monotonic()
    with pytest.raises(DeliveryFailure, match=r"did not answer within 1 s") as caught:
        poster.post(dribbler, b"{}", {})
    assert 0.9 < time.monotonic() - started < 2
    assert not caught.value.permanent


def test_a_name_that_resolves_to_loopback_is_refused_before_any_connection(
        hook_server: tuple[list[tuple[dict[str, str], bytes]], list[int], str]) -> None:
    calls, _, url = hook_server
    port = urlsplit(url).port
    for poster, target in (
            (WebhookPoster(2.0), f"http://localhost:{port}/hook"),  # the system's resolver
            # One public address does not make up for a private one beside it.
            (WebhookPoster(2.0, resolver=lambda host, port: ["93.184.216.34", "127.0.0.1"]),
             f"http://hooks.example.test:{port}/hook")):
        with pytest.raises(DeliveryFailure, match="non-public address") as caught:
            poster.post(target, b"{}", {})
        assert caught.value.permanent
    assert calls == []


def test_the_webhook_connects_to_the_address_it_checked_and_still_names_the_host(
        hook_server: tuple[list[tuple[dict[str, str], bytes]], list[int], str]) -> None:
    calls, _, url = hook_server
    port = urlsplit(url).port
    looked_up: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        looked_up.append((host, port))
        return ["127.0.0.1"]

    # hooks.example.test resolves nowhere: the call can only have gone where the lookup
    # that was checked said.
    poster = WebhookPoster(5.0, allow_private=True, resolver=resolver)
    assert poster.post(f"http://hooks.example.test:{port}/hook", b'{"a": 1}',
                       {"X-Batchyard-Event": "execution.failed"}) == 200

    assert looked_up == [("hooks.example.test", port)]
    [(headers, body)] = calls
    assert headers["host"] == f"hooks.example.test:{port}"
    assert headers["x-batchyard-event"] == "execution.failed"
    assert headers["content-type"] == "application/json"
    assert body == b'{"a": 1}'


def _certificate(name: str, folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_to_the_checked_address_verifies_the_hosts_certificate_by_name(
        tmp_path: Path) -> None:
    cert, key = _certificate("hooks.example.test", tmp_path)
    other_cert, _ = _certificate("elsewhere.example.test", tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _context: names.append(name)
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hosts.append(str(self.headers["Host"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = server_context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://hooks.example.test:{httpd.server_address[1]}/hook"
    try:
        trusted = WebhookPoster(5.0, allow_private=True, resolver=lambda h, p: ["127.0.0.1"],
                                ssl_context=ssl.create_default_context(cafile=str(cert)))
        assert trusted.post(url, b"{}", {}) == 204
        assert names == ["hooks.example.test"]
        assert hosts == [f"hooks.example.test:{httpd.server_address[1]}"]
        # Verification is by the name: a certificate of another name is refused.
        untrusted = WebhookPoster(
            5.0, allow_private=True, resolver=lambda h, p: ["127.0.0.1"],
            ssl_context=ssl.create_default_context(cafile=str(other_cert)))
        with pytest.raises(DeliveryFailure, match="could not be called"):
            untrusted.post(url, b"{}", {})
        assert len(hosts) == 1
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- the loop does not wait for the slowest send ----------------------------------------------
@pytest.fixture
def held_server() -> Iterator[tuple[list[str], threading.Event, str]]:
    """A receiver whose ``/held...`` paths answer only once ``release`` is set."""
    calls: list[str] = []
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            calls.append(self.path)
            if self.path.startswith("/held"):
                release.wait(20)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield calls, release, f"http://127.0.0.1:{httpd.server_address[1]}"
    release.set()
    httpd.shutdown()
    httpd.server_close()


def _ended_with_webhooks(platform: Platform, owner: Actor,
                         make_published_job: Callable[..., Job], result: Result,
                         *urls: str) -> None:
    for url in urls:
        job = make_published_job(owner, settings={"webhook": {"url": url}})
        finish_attempt(platform, start(platform, owner, job), result(AttemptOutcome.FAILED))


def _row_for(platform: Platform, path: str) -> Delivery:
    [row] = [row for row in deliveries(platform) if row.payload["url"].endswith(path)]
    return row


def test_a_slow_webhook_does_not_hold_back_the_other_deliveries(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job],
        result: Result, held_server: tuple[list[str], threading.Event, str]) -> None:
    calls, release, base = held_server
    _ended_with_webhooks(platform, owner, make_published_job, result,
                         f"{base}/held", f"{base}/fast")
    delivery = DeliveryLoop(platform, None, WebhookPoster(10.0, allow_private=True),
                            "https://by.example.com", DeliveryPolicy(senders=4))

    started = time.monotonic()
    delivery.step()
    assert time.monotonic() - started < 2  # handed over, not waited for

    until = time.monotonic() + 5
    while _row_for(platform, "/fast").status != "sent" and time.monotonic() < until:
        time.sleep(0.05)
    assert _row_for(platform, "/fast").status == "sent"
    assert _row_for(platform, "/held").status == "pending"
    release.set()
    assert delivery.settle()
    assert _row_for(platform, "/held").status == "sent"
    assert sorted(calls) == ["/fast", "/held"]


def test_rows_are_claimed_only_when_a_sender_is_idle(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job],
        result: Result, held_server: tuple[list[str], threading.Event, str]) -> None:
    _, release, base = held_server
    _ended_with_webhooks(platform, owner, make_published_job, result,
                         f"{base}/held-a", f"{base}/held-b")
    delivery = DeliveryLoop(platform, None, WebhookPoster(10.0, allow_private=True),
                            "https://by.example.com", DeliveryPolicy(senders=1))

    delivery.step()
    delivery.step()  # the one sender is busy: nothing more is claimed (its lease unused)

    assert sorted(row.attempts for row in deliveries(platform)) == [0, 1]
    release.set()
    assert delivery.settle()
    delivery.step()
    assert delivery.settle()
    assert [(row.status, row.attempts) for row in deliveries(platform)] == [("sent", 1)] * 2


def test_the_claim_lease_stays_well_above_the_webhooks_deadline(platform: Platform) -> None:
    slow = DeliveryLoop(platform, None, WebhookPoster(100.0), "https://by.example.com",
                        DeliveryPolicy(lease_seconds=120.0))
    usual = DeliveryLoop(platform, None, WebhookPoster(10.0), "https://by.example.com",
                         DeliveryPolicy(lease_seconds=120.0))
    assert slow.policy.lease_seconds == 300.0
    assert usual.policy.lease_seconds == 120.0


# --- SMTP: the operator's server stays out of what tenants see ----------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RefusingMailServer:
    """aiosmtpd handler that refuses, in words naming the operator's own hosts."""

    def __init__(self, refuse_recipients: bool) -> None:
        self.refuse_recipients = refuse_recipients

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self.refuse_recipients:
            return "550 5.7.1 relaying denied by policy of mx-internal.corp.example"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "554 5.7.1 rejected by filter-7.corp.example (account ops-relay)"


@pytest.fixture
def refusing_smtp(request: pytest.FixtureRequest) -> Iterator[SmtpConfig]:
    controller = Controller(RefusingMailServer(request.param), hostname="127.0.0.1",
                            port=_free_port())
    controller.start()
    yield SmtpConfig(host="127.0.0.1", port=controller.port, tls="none", user=None,
                     password=None, sender="batchyard@example.com", timeout=5.0)
    controller.stop()


def test_the_smtp_password_is_not_in_the_configs_repr() -> None:
    config = SmtpConfig(host="smtp.example.com", port=587, tls="starttls", user="relay",
                        password="Smtp-Secret-42", sender="b@example.com", timeout=5.0)
    assert "Smtp-Secret-42" not in repr(config)
    assert "relay" in repr(config)


@pytest.mark.parametrize(("refusing_smtp", "message"), [(True, RECIPIENTS_REFUSED),
                                                        (False, NOT_SENT)],
                         indirect=["refusing_smtp"])
def test_a_refusing_mail_server_gives_tenants_a_generic_error_and_the_log_its_words(
        refusing_smtp: SmtpConfig, message: str, caplog: pytest.LogCaptureFixture) -> None:
    mailer = SmtpMailer(refusing_smtp)

    with caplog.at_level(logging.WARNING, logger="batchyard.mail"), \
            pytest.raises(DeliveryFailure) as caught:
        mailer.send(OutgoingEmail(to=("ops@example.com",), subject="s", body="b"))

    assert str(caught.value) == message
    assert caught.value.permanent
    assert "corp.example" in caplog.text
    assert f"127.0.0.1:{refusing_smtp.port}" in caplog.text


def test_an_unreachable_mail_server_is_retried_and_not_named_to_tenants(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job],
        result: Result, caplog: pytest.LogCaptureFixture) -> None:
    port = _free_port()  # nothing listens there
    mailer = SmtpMailer(SmtpConfig(host="127.0.0.1", port=port, tls="none", user=None,
                                   password=None, sender="b@example.com", timeout=2.0))
    job = make_published_job(owner, settings={"notify": NOTIFY})
    finish_attempt(platform, start(platform, owner, job), result(AttemptOutcome.FAILED))
    delivery = DeliveryLoop(platform, mailer, WebhookPoster(5.0), "https://by.example.com",
                            DeliveryPolicy())

    with caplog.at_level(logging.WARNING, logger="batchyard.mail"):
        delivery.step()
        assert delivery.settle()

    [row] = deliveries(platform)
    assert (row.status, row.last_error) == ("pending", NOT_SENT)
    assert str(port) not in (row.last_error or "")
    assert f"127.0.0.1:{port} could not be reached" in caplog.text
