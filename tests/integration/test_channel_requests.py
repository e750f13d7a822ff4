"""Requests over the job's channel, end to end below HTTP: a real job process under the real
Supervisor, the real e-mail handler against a real database and a real SMTP server (aiosmtpd),
and job code that floods the channel or writes lines longer than it takes."""

from __future__ import annotations

import email
import email.policy
import socket
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select
from test_supervisor import attempt, run

from batchyard.app import job_python
from batchyard.domain.attempts import ClaimedAttempt, LogRecord
from batchyard.domain.executions import AttemptOutcome
from batchyard.runtime.box.supervisor import CHANNEL_LINE_LIMIT, RuntimeLimits, Supervisor
from batchyard.runtime.channel.dispatcher import MAX_WAITING
from batchyard.runtime.channel.mailer import JobEmailHandler
from batchyard.runtime.outbound.smtp import SmtpConfig, SmtpMailer
from batchyard.services import invoke
from batchyard.services.context import Actor, Platform
from batchyard.services.queue import claim_next_execution
from batchyard.store.models import Account, Execution, Job

SENDER = "batchyard@notify.example.com"
ATTACHMENTS_MAX_BYTES = 10 * 1024 * 1024
LIMITS = RuntimeLimits(kill_grace_seconds=0.3, log_cap_bytes=8 * 1024 * 1024,
                       log_line_max_bytes=16 * 1024, artifact_cap_bytes=64 * 1024 * 1024,
                       artifact_max_files=10)


# --- the real SMTP server the handler talks to --------------------------------------------
@dataclass
class Mailbox:
    received: list[EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        if "REJECT" in str(message["Subject"]):
            return "554 5.7.1 refused on purpose"
        with self.lock:
            self.received.append(message)
        return "250 OK"

    def tagged(self, tag: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.received if str(m["Subject"]).startswith(tag)]


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture
def owner(make_account: Callable[..., Account], make_actor: Callable[..., Actor]) -> Actor:
    return make_actor(make_account())


@pytest.fixture
def mailing_supervisor(platform: Platform, tmp_path: Path,
                       mailbox: tuple[Mailbox, int]) -> Supervisor:
    """The server's supervisor: e-mail requests go to the real handler and SMTP server."""
    work = tmp_path / "work"
    work.mkdir()
    mailer = SmtpMailer(SmtpConfig(host="127.0.0.1", port=mailbox[1], tls="none", user=None,
                                   password=None, sender=SENDER, timeout=10.0))
    return Supervisor(job_python(None), work, LIMITS, requests={
        "email": JobEmailHandler(platform, mailer, work, ATTACHMENTS_MAX_BYTES)})


@pytest.fixture
def bare_supervisor(tmp_path: Path) -> Supervisor:
    """A supervisor without handlers: db and e-mail requests are answered "not available"."""
    return Supervisor(job_python(None), tmp_path, LIMITS)


def claim(platform: Platform, owner: Actor, make_published_job: Callable[..., Job],
          code_zip: Callable[..., bytes], main_py: str) -> ClaimedAttempt:
    job = make_published_job(owner, code=code_zip(textwrap.dedent(main_py)), settings={
        "notify": {"on_failure": ["ops@example.com"]}})
    invoke.invoke(platform, owner, job.id, {}, {})
    claimed = claim_next_execution(platform, "node-a:1", 60.0)
    assert claimed is not None
    return replace(claimed, deadline_seconds=60.0)


def emails_counted(platform: Platform, execution_id: str) -> int:
    with platform.db.read() as session:
        count = session.scalar(select(Execution.emails_sent).where(
            Execution.id == execution_id))
    assert count is not None
    return count


def stdout_of(logs: list[LogRecord]) -> list[str]:
    return [r.message for r in logs if r.stream == "stdout"]


class ThreadPeak:
    """Samples this process's thread count (Python's and the kernel's) while a block runs."""

    def __init__(self) -> None:
        self.python = self.kernel = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def kernel_threads() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise AssertionError("no Threads line in /proc/self/status")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.python = max(self.python, threading.active_count())
            self.kernel = max(self.kernel, self.kernel_threads())
            time.sleep(0.002)

    def __enter__(self) -> ThreadPeak:
        self._sampler.start()
        time.sleep(0.01)
        # The baseline includes the sampler itself.
        self.python_before, self.kernel_before = threading.active_count(), self.kernel_threads()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join()


# --- a job flooding the channel ------------------------------------------------------------------
FLOOD = 3000


def test_a_job_flooding_the_channel_with_email_requests_ends_normally_on_few_threads(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job],
        code_zip: Callable[..., bytes], mailing_supervisor: Supervisor,
        mailbox: tuple[Mailbox, int]) -> None:
    tag = f"flood-{uuid.uuid4().hex[:8]}"
    claimed = claim(platform, owner, make_published_job, code_zip, f"""
        import json, os
        from batchyard import sdk

        def main():
            with open(os.path.join(os.environ["OUTPUT_DIR"], "big.bin"), "wb") as f:
                f.write(b"x" * 2_000_000)
            line = json.dumps({{"type": "email", "email_type": "failure", "subject": "{tag}",
                               "body": "b", "attachments": ["big.bin"]}}).encode() + b"\\n"
            fd = sdk._state.channel.fd
            for _ in range({FLOOD}):
                os.write(fd, line)
            pending, replies = b"", []
            while len(replies) < {FLOOD}:
                pending += os.read(fd, 65536)
                *lines, pending = pending.split(b"\\n")
                replies += [json.loads(reply) for reply in lines]
            print("ok", sum(1 for r in replies if r["ok"]))
            print("in flight", sum(1 for r in replies if "in flight" in r.get("error", "")))
            print("codes", sorted({{r.get("code") for r in replies if not r["ok"]}}))
        """)

    with ThreadPeak() as peak:
        result, logs = run(mailing_supervisor, claimed)

    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    # The pump, the deadline timer and one request thread; never a thread per request.
    assert peak.python - peak.python_before <= 4, (peak.python_before, peak.python)
    assert peak.kernel - peak.kernel_before <= 4, (peak.kernel_before, peak.kernel)
    stdout = stdout_of(logs)
    assert stdout[0] == "ok 3"
    # The first request runs, MAX_WAITING more wait (or one fewer): the rest are refused at once.
    in_flight = int(stdout[1].split()[-1])
    assert FLOOD - MAX_WAITING - 1 <= in_flight <= FLOOD - MAX_WAITING, stdout
    assert stdout[2] == "codes ['too_many_requests']"
    assert len(mailbox[0].tagged(tag)) == 3
    assert emails_counted(platform, claimed.execution_id) == 3


def test_the_email_quota_is_taken_before_attachments_are_read_and_given_back_when_unsent(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job],
        code_zip: Callable[..., bytes], mailing_supervisor: Supervisor,
        mailbox: tuple[Mailbox, int]) -> None:
    tag = f"quota-{uuid.uuid4().hex[:8]}"
    claimed = claim(platform, owner, make_published_job, code_zip, f"""
        from batchyard import sdk
        from helper import LS, MXException, MXInvalidDataException

        def send(subject, **kwargs):
            try:
                LS.email.send_email_notification("failure", subject, "body", **kwargs)
                print("sent", subject)
            except MXInvalidDataException as exc:
                print("invalid", subject)
            except MXException as exc:
                print("failed", subject)

        def main():
            send("{tag} missing", attachments=["missing.csv"])
            send("{tag} REJECT")
            for n in range(3):
                send(f"{tag} {{n}}")
            # Past the limit, straight to the platform (the SDK would refuse it itself): the
            # quota answers, not the attachment that does not exist.
            reply = sdk._state.channel.request({{"type": "email", "email_type": "failure",
                "subject": "{tag} 4", "body": "b", "attachments": ["missing.csv"]}})
            print("fourth", reply["code"])
        """)

    result, logs = run(mailing_supervisor, claimed)

    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    assert stdout_of(logs) == [f"invalid {tag} missing", f"failed {tag} REJECT",
                               f"sent {tag} 0", f"sent {tag} 1", f"sent {tag} 2",
                               "fourth too_many_requests"]
    assert sorted(str(m["Subject"]) for m in mailbox[0].tagged(tag)) == [
        f"{tag} 0", f"{tag} 1", f"{tag} 2"]
    assert emails_counted(platform, claimed.execution_id) == 3


def test_a_non_ascii_email_body_near_the_body_limit_is_sent(
        platform: Platform, owner: Actor, make_published_job: Callable[..., Job],
        code_zip: Callable[..., bytes], mailing_supervisor: Supervisor,
        mailbox: tuple[Mailbox, int]) -> None:
    tag = f"accents-{uuid.uuid4().hex[:8]}"
    # 400,000 characters: 2.4 MB escaped as \\u00e9, 800 kB as UTF-8.
    claimed = claim(platform, owner, make_published_job, code_zip, f"""
        from helper import LS

        def main():
            LS.email.send_email_notification("failure", "{tag}", "é" * 400_000)
            print("sent")
        """)

    result, logs = run(mailing_supervisor, claimed)

    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    [message] = mailbox[0].tagged(tag)
    body = message.get_body(preferencelist=("plain",))
    assert body is not None and body.get_content().rstrip("\n") == "é" * 400_000


# --- lines longer than the channel takes -------------------------------------------------------
def test_an_sdk_query_over_the_channel_limit_raises_at_once_and_the_job_goes_on(
        bare_supervisor: Supervisor) -> None:
    claimed = replace(attempt(textwrap.dedent("""
        from helper import LS, MXException, MXInvalidDataException

        def main():
            try:
                LS.db.execute_DB_query("select '" + "x" * 1_100_000 + "'")
            except MXInvalidDataException as exc:
                print("refused:", exc)
            try:
                LS.db.execute_DB_query("select 1")
            except MXException as exc:
                print("next:", exc)
        """), deadline=60.0), database_access=True)
    started = time.monotonic()

    result, logs = run(bare_supervisor, claimed)

    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    assert time.monotonic() - started < 10  # its deadline is 60 s
    refused, following = stdout_of(logs)
    assert refused.startswith("refused: The query is too large to send")
    assert f"at most {CHANNEL_LINE_LIMIT} bytes" in refused
    assert following == "next: Database access is not available on this server."


def test_a_raw_over_long_request_gets_one_error_reply_and_the_job_goes_on(
        bare_supervisor: Supervisor) -> None:
    claimed = attempt(textwrap.dedent("""
        import json, os
        from batchyard import sdk
        from helper import LS, MXException

        def main():
            channel = sdk._state.channel
            # 3.5 times the limit: cut into four pieces, answered once.
            os.write(channel.fd, b'{"type": "db", "sql": "' + b"x" * 3_670_000 + b'"}\\n')
            print("reply:", json.loads(channel._read_line()))
            LS.log.info("y" * 2_000_000, {"big": "z" * 2_000_000})
            os.write(channel.fd, b'{"type": "log", "message": "' + b"w" * 1_500_000 + b'"}\\n')
            try:
                LS.email.send_email_notification("failure", "s", "b")
            except MXException as exc:
                print("next:", exc)
        """), deadline=60.0)

    result, logs = run(bare_supervisor, claimed)

    assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
    assert stdout_of(logs) == [
        "reply: {'ok': False, 'code': 'too_large', 'error': \"The request is larger than the "
        f"channel's limit of {CHANNEL_LINE_LIMIT} bytes\"}}",
        # The answer to this request, not a second reply to the over-long line.
        "next: E-mail is not available on this server."]
    # The SDK sends an over-long log record shortened; a raw one is dropped, and said so.
    [shortened] = [r for r in logs if r.message.startswith("yyyy")]
    assert shortened.message.endswith(
        f"[cut: the record was larger than the platform's channel takes ({CHANNEL_LINE_LIMIT} "
        "bytes)]")
    assert shortened.data is None
    assert any(r.message == "batchyard: a log record of the job larger than the channel's "
               f"limit of {CHANNEL_LINE_LIMIT} bytes was dropped" for r in logs)
