"""E-mail and webhooks from a real server: an aiosmtpd server and an HTTP receiver catch them."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import textwrap
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from e2e_support import (
    AccountFactory,
    ServerFactory,
    ServerProcess,
    create_account,
    deploy_job,
    free_port,
    invoke,
    lines_of,
    read_logs,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

SENDER = "batchyard@notify.example.com"
PUBLIC_URL = "https://batchyard.example.com"
SECRET = "whsec-e2e-5d1f7c"


# --- the real SMTP server the platform talks to ------------------------------------------
@dataclass
class Received:
    mail_from: str
    to: list[str]
    message: EmailMessage


@dataclass
class Mailbox:
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.received.append(Received(str(envelope.mail_from),
                                          [str(to) for to in envelope.rcpt_tos], parsed))
        return "250 OK"

    def matching(self, text: str) -> list[Received]:
        """Messages whose text body mentions ``text`` (summaries: the execution id)."""
        with self.lock:
            messages = list(self.received)
        return [item for item in messages if text in _text_of(item.message)]

    def subjects(self, tag: str) -> list[Received]:
        """Messages whose subject starts with ``tag`` (e-mails sent by job code)."""
        with self.lock:
            messages = list(self.received)
        return [item for item in messages if str(item.message["Subject"]).startswith(tag)]


def _text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    return str(part.get_content()) if part is not None else ""


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


# --- the real HTTP receiver of webhooks -----------------------------------------------------
@dataclass
class Hook:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    calls: list[Hook] = field(default_factory=list)
    # Path → status codes to answer, in order; then 200.
    script: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, hook: Hook) -> int:
        with self.lock:
            self.calls.append(hook)
            planned = self.script.get(hook.path) or []
            return planned.pop(0) if planned else 200

    def calls_to(self, path: str) -> list[Hook]:
        with self.lock:
            return [hook for hook in self.calls if hook.path == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = state.answer(Hook(self.path, {k.lower(): v for k, v in
                                                   self.headers.items()}, body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mailbox: tuple[Mailbox, int],
           receiver: tuple[Receiver, str]) -> Iterator[ServerProcess]:
    """This module's server sends mail to ``mailbox`` and retries deliveries fast."""
    process = ServerProcess(tmp_path_factory.mktemp("e2e-notify"), env={
        "BATCHYARD_SMTP_HOST": "127.0.0.1", "BATCHYARD_SMTP_PORT": str(mailbox[1]),
        "BATCHYARD_SMTP_TLS": "none", "BATCHYARD_SMTP_FROM": SENDER,
        "BATCHYARD_PUBLIC_URL": PUBLIC_URL, "BATCHYARD_DELIVERY_BACKOFF_SECONDS": "0.2",
        # The receiver listens on loopback, which webhooks may not reach by default.
        "BATCHYARD_WEBHOOK_ALLOW_PRIVATE": "true"})
    yield process.start()
    process.stop()


def _job_name(client: httpx.Client, job_id: str) -> str:
    return str(client.get(f"/api/v1/jobs/{job_id}").json()["name"])


def _deliveries(client: httpx.Client, execution_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/executions/{execution_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _settled(client: httpx.Client, execution_id: str, count: int) -> list[dict[str, Any]]:
    """The execution's deliveries once ``count`` of them have stopped being pending."""
    def done() -> list[dict[str, Any]] | None:
        items = _deliveries(client, execution_id)
        finished = [item for item in items if item["status"] != "pending"]
        return items if len(finished) >= count else None
    found: list[dict[str, Any]] = wait_until(
        done, 15, lambda: f"deliveries still pending: {_deliveries(client, execution_id)}")
    return found


# --- summaries -------------------------------------------------------------------------------
def test_a_failed_execution_mails_one_summary_to_on_failure(
        make_account: AccountFactory, mailbox: tuple[Mailbox, int]) -> None:
    account = make_account()
    job_id = deploy_job(account, textwrap.dedent("""\
        def main(event):
            print("about to fail")
            raise ValueError("boom-on-purpose")
        """), settings={"notify": {"on_failure": ["ops@example.com"],
                                   "on_success": ["happy@example.com"]}})
    name = _job_name(account.owner, job_id)

    execution = wait_for(account.owner, invoke(account.owner, job_id))

    assert execution["status"] == "failed", execution
    [delivery] = _settled(account.owner, execution["id"], 1)
    assert delivery["kind"] == "email" and delivery["status"] == "sent", delivery
    [mail] = mailbox[0].matching(execution["id"])
    assert mail.to == ["ops@example.com"]
    assert mail.mail_from == SENDER
    assert mail.message["Subject"] == f"[batchyard] {name}: failed"
    text = _text_of(mail.message)
    for expected in (f"Job:        {name}", f"Execution:  {execution['id']}",
                     "Status:     failed", "Reason:     error", "boom-on-purpose",
                     "about to fail", f"{PUBLIC_URL}/api/v1/executions/{execution['id']}"):
        assert expected in text, text


def test_a_succeeded_execution_mails_on_success_only(
        make_account: AccountFactory, mailbox: tuple[Mailbox, int]) -> None:
    account = make_account()
    job_id = deploy_job(account, "def main():\n    print('fine')\n", settings={
        "notify": {"on_failure": ["ops@example.com"], "on_success": ["happy@example.com"]}})

    execution = wait_for(account.owner, invoke(account.owner, job_id))

    assert execution["status"] == "succeeded", execution
    _settled(account.owner, execution["id"], 1)
    [mail] = mailbox[0].matching(execution["id"])
    assert mail.to == ["happy@example.com"]
    assert "Status:     succeeded" in _text_of(mail.message)


# --- e-mails from job code ---------------------------------------------------------------------
def test_job_code_sends_three_emails_and_the_fourth_raises_too_many_requests(
        make_account: AccountFactory, mailbox: tuple[Mailbox, int]) -> None:
    account = make_account()
    tag = f"sdk-{uuid.uuid4().hex[:8]}"
    job_id = deploy_job(account, textwrap.dedent(f"""\
        import os
        from helper import LS, MXTooManyRequestsError

        def main(event):
            with open(os.path.join(os.environ["OUTPUT_DIR"], "report.csv"), "w") as f:
                f.write("a,b\\n1,2\\n")
            LS.email.send_email_notification("failure", "{tag} one " + "x" * 300,
                                             "plain body {tag}", attachments=["report.csv"])
            LS.email.send_email_notification("failure", "{tag} two",
                                             "<p>html body {tag}</p>", isHtml=True)
            LS.email.send_email_notification("failure", "{tag} three", "third {tag}")
            try:
                LS.email.send_email_notification("failure", "{tag} four", "fourth {tag}")
            except MXTooManyRequestsError as exc:
                print("refused:", exc)
        """), settings={"notify": {"on_failure": ["dev@example.com"]}})

    execution = wait_for(account.owner, invoke(account.owner, job_id))

    assert execution["status"] == "succeeded", execution
    messages = {str(m.message["Subject"]).split()[1]: m for m in mailbox[0].subjects(tag)}
    assert sorted(messages) == ["one", "three", "two"]
    first = messages["one"].message
    assert len(str(first["Subject"])) == 255
    assert messages["one"].to == ["dev@example.com"]
    [attachment] = list(first.iter_attachments())
    assert attachment.get_filename() == "report.csv"
    assert attachment.get_content() in ("a,b\n1,2\n", b"a,b\n1,2\n")
    html = messages["two"].message.get_body(preferencelist=("html",))
    assert html is not None and f"<p>html body {tag}</p>" in html.get_content()
    stdout = lines_of(read_logs(account.owner, execution["id"]), "stdout")
    assert any(line.startswith("refused:") and "At most 3" in line for line in stdout), stdout


def test_the_email_limit_counts_every_attempt_of_an_execution(
        make_account: AccountFactory, mailbox: tuple[Mailbox, int]) -> None:
    account = make_account()
    tag = f"retry-{uuid.uuid4().hex[:8]}"
    job_id = deploy_job(account, textwrap.dedent(f"""\
        from helper import LS, MXTooManyRequestsError

        def main(event):
            n = event["retry_attempt"]
            for i in range(2):
                try:
                    LS.email.send_email_notification("info", f"{tag} {{n}}-{{i}}", "body")
                    print("sent", n, i)
                except MXTooManyRequestsError as exc:
                    print("refused", n, i, exc)
            if n == 0:
                raise RuntimeError("fail the first attempt")
        """), settings={"retries": 1, "notify": {"on_success": ["dev@example.com"]}})

    execution = wait_for(account.owner, invoke(account.owner, job_id))

    assert execution["status"] == "succeeded", execution
    assert len(execution["attempts"]) == 2
    subjects = sorted(str(m.message["Subject"]) for m in mailbox[0].subjects(tag))
    assert subjects == [f"{tag} 0-0", f"{tag} 0-1", f"{tag} 1-0"]
    stdout = lines_of(read_logs(account.owner, execution["id"]), "stdout")
    assert any(line.startswith("refused 1 1") for line in stdout), stdout


def test_job_email_without_recipients_raises_a_clear_error(
        make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, textwrap.dedent("""\
        from helper import LS, MXException

        def main():
            try:
                LS.email.send_email_notification("failure", "s", "b")
            except MXException as exc:
                print("error:", exc)
        """), settings={"notify": {"on_success": ["only-success@example.com"]}})

    execution = wait_for(account.owner, invoke(account.owner, job_id))

    stdout = lines_of(read_logs(account.owner, execution["id"]), "stdout")
    assert any("notify.on_failure" in line for line in stdout), stdout


def test_an_attachment_outside_the_output_folder_is_refused(
        make_account: AccountFactory, mailbox: tuple[Mailbox, int]) -> None:
    account = make_account()
    tag = f"escape-{uuid.uuid4().hex[:8]}"
    job_id = deploy_job(account, textwrap.dedent(f"""\
        import os
        from helper import LS, MXInvalidDataException

        def main():
            os.symlink("/etc/passwd", os.path.join(os.environ["OUTPUT_DIR"], "link"))
            for name in ("../code/main.py", "/etc/passwd", "link"):
                try:
                    LS.email.send_email_notification("failure", "{tag}", "b",
                                                     attachments=[name])
                    print("sent", name)
                except MXInvalidDataException as exc:
                    print("refused", name)
        """), settings={"notify": {"on_failure": ["dev@example.com"]}})

    execution = wait_for(account.owner, invoke(account.owner, job_id))

    stdout = lines_of(read_logs(account.owner, execution["id"]), "stdout")
    assert stdout == ["refused ../code/main.py", "refused /etc/passwd", "refused link"], stdout
    assert mailbox[0].subjects(tag) == []


# --- webhooks --------------------------------------------------------------------------------
def test_webhook_receives_a_signed_json_post_when_the_execution_ends(
        make_account: AccountFactory, receiver: tuple[Receiver, str]) -> None:
    account = make_account()
    path = f"/hook-{uuid.uuid4().hex[:8]}"
    job_id = deploy_job(account, "def main():\n    pass\n", settings={
        "webhook": {"url": receiver[1] + path, "secret": SECRET}})
    shown = account.owner.get(f"/api/v1/jobs/{job_id}/settings")
    assert shown.json()["webhook"] == {"url": receiver[1] + path, "has_secret": True}
    assert SECRET not in shown.text
    assert SECRET not in account.owner.get("/api/v1/audit", params={"job_id": job_id}).text

    execution = wait_for(account.owner, invoke(account.owner, job_id))

    [delivery] = _settled(account.owner, execution["id"], 1)
    assert delivery["status"] == "sent", delivery
    [hook] = receiver[0].calls_to(path)
    expected = "sha256=" + hmac.new(SECRET.encode(), hook.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(hook.headers["x-batchyard-signature"], expected)
    assert hook.headers["x-batchyard-event"] == "execution.succeeded"
    assert hook.headers["x-batchyard-delivery"] == delivery["id"]
    assert hook.headers["content-type"] == "application/json"
    body = json.loads(hook.body)
    assert body["event"] == "execution.succeeded"
    assert body["delivery_id"] == delivery["id"]
    assert body["execution"]["id"] == execution["id"]
    assert body["execution"]["job_id"] == job_id
    assert body["execution"]["status"] == "succeeded"
    assert body["execution"]["url"] == f"{PUBLIC_URL}/api/v1/executions/{execution['id']}"


def test_webhook_answered_500_is_retried_with_the_same_delivery(
        make_account: AccountFactory, receiver: tuple[Receiver, str]) -> None:
    account = make_account()
    path = f"/flaky-{uuid.uuid4().hex[:8]}"
    receiver[0].script[path] = [500]
    job_id = deploy_job(account, "def main():\n    raise SystemExit(3)\n", settings={
        "webhook": {"url": receiver[1] + path}})

    execution = wait_for(account.owner, invoke(account.owner, job_id))

    assert execution["status"] == "failed", execution
    [delivery] = _settled(account.owner, execution["id"], 1)
    assert delivery["status"] == "sent" and delivery["attempts"] == 2, delivery
    first, second = receiver[0].calls_to(path)
    assert first.body == second.body
    assert first.headers["x-batchyard-delivery"] == second.headers["x-batchyard-delivery"]
    assert "x-batchyard-signature" not in first.headers  # no secret, no signature
    assert json.loads(second.body)["execution"]["status"] == "failed"


# --- a server without SMTP -------------------------------------------------------------------
def test_without_an_smtp_server_job_email_raises_and_summaries_are_not_sent(
        launch_server: ServerFactory, tmp_path: Path) -> None:
    plain = launch_server()
    with plain.client() as operator:
        account = create_account(operator)
    try:
        job_id = deploy_job(account, textwrap.dedent("""\
            from helper import LS, MXException

            def main():
                try:
                    LS.email.send_email_notification("failure", "s", "b")
                except MXException as exc:
                    print("error:", exc)
                raise RuntimeError("and fail")
            """), settings={"notify": {"on_failure": ["ops@example.com"]}})

        execution = wait_for(account.owner, invoke(account.owner, job_id))

        stdout = lines_of(read_logs(account.owner, execution["id"]), "stdout")
        assert any(line.startswith("error: E-mail is not configured on this server")
                   for line in stdout), stdout
        [delivery] = _settled(account.owner, execution["id"], 1)
        assert delivery["status"] == "failed", delivery
        assert "BATCHYARD_SMTP_HOST" in delivery["last_error"]
    finally:
        account.close()


# --- a mail server that refuses ------------------------------------------------------------
class RefusingMailbox:
    """Refuses every message, in words that name the operator's own mail hosts."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "554 5.7.1 rejected by filter-7.mail.corp.example (relay account ops-relay)"


def test_a_refusing_mail_server_is_not_described_to_tenants(tmp_path: Path) -> None:
    controller = Controller(RefusingMailbox(), hostname="127.0.0.1", port=free_port())
    controller.start()
    server = ServerProcess(tmp_path / "refused", env={
        "BATCHYARD_SMTP_HOST": "127.0.0.1", "BATCHYARD_SMTP_PORT": str(controller.port),
        "BATCHYARD_SMTP_TLS": "none", "BATCHYARD_SMTP_FROM": SENDER,
        "BATCHYARD_DELIVERY_MAX_TRIES": "1"})
    try:
        server.start()
        with server.client() as operator:
            account = create_account(operator)
        try:
            job_id = deploy_job(account, textwrap.dedent("""\
                from helper import LS, MXException

                def main():
                    try:
                        LS.email.send_email_notification("failure", "s", "b")
                    except MXException as exc:
                        print("error:", exc)
                    raise RuntimeError("and fail")
                """), settings={"notify": {"on_failure": ["ops@example.com"]}})

            execution = wait_for(account.owner, invoke(account.owner, job_id))

            [delivery] = _settled(account.owner, execution["id"], 1)
            seen = [delivery["last_error"], *lines_of(read_logs(account.owner,
                                                                execution["id"]), "stdout")]
        finally:
            account.close()
    finally:
        server.stop()
        controller.stop()
    assert delivery["status"] == "failed", delivery
    assert delivery["last_error"] == ("the mail server refused the message or could not be "
                                      "reached")
    assert any(line.startswith("error: ") and "could not be sent" in line
               for line in seen[1:]), seen
    for text in seen:
        assert "corp.example" not in text and "ops-relay" not in text, text
        assert str(controller.port) not in text, text
    # The operator's log has the server's own words.
    assert "filter-7.mail.corp.example" in server.output()
