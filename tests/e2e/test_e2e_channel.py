"""The job's channel to a real server: a flood of requests and lines longer than it takes.

An aiosmtpd server catches the e-mails; the server's own thread count is read from /proc
while a job floods its channel.
"""

from __future__ import annotations

import email
import email.policy
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from e2e_support import (
    AccountFactory,
    ServerProcess,
    deploy_job,
    free_port,
    invoke,
    lines_of,
    read_logs,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

LIMIT = 1024 * 1024  # the supervisor's CHANNEL_LINE_LIMIT


@dataclass
class Mailbox:
    received: list[EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.received.append(message)
        return "250 OK"

    def tagged(self, tag: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.received if str(m["Subject"]).startswith(tag)]


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           mailbox: tuple[Mailbox, int]) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("e2e-channel"), env={
        "BATCHYARD_SMTP_HOST": "127.0.0.1", "BATCHYARD_SMTP_PORT": str(mailbox[1]),
        "BATCHYARD_SMTP_TLS": "none", "BATCHYARD_SMTP_FROM": "batchyard@example.com"})
    yield process.start()
    process.stop()


def server_threads(server: ServerProcess) -> int:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_a_job_flooding_its_channel_ends_normally_and_the_server_keeps_few_threads(
        server: ServerProcess, make_account: AccountFactory,
        mailbox: tuple[Mailbox, int]) -> None:
    account = make_account()
    tag = f"flood-{uuid.uuid4().hex[:8]}"
    job_id = deploy_job(account, textwrap.dedent(f"""\
        import json, os, time
        from batchyard import sdk

        def main(event):
            with open(os.path.join(os.environ["OUTPUT_DIR"], "big.bin"), "wb") as f:
                f.write(b"x" * 2_000_000)
            line = json.dumps({{"type": "email", "email_type": "failure", "subject": "{tag}",
                               "body": "b", "attachments": ["big.bin"]}}).encode() + b"\\n"
            for _ in range(event["body"]["count"]):
                os.write(sdk._state.channel.fd, line)
            time.sleep(event["body"]["sleep"])  # the server works through them meanwhile
            print("flooded")
        """), settings={"notify": {"on_failure": ["ops@example.com"]}})
    # Warm up: the HTTP thread pool grows to what polling an execution takes.
    wait_for(account.owner, invoke(account.owner, job_id, {"sleep": 0, "count": 0}))
    before = server_threads(server)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server_threads(server))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        execution = wait_for(account.owner, invoke(account.owner, job_id,
                                                            {"sleep": 3, "count": 3000}))
    finally:
        done.set()
        sampler.join()

    assert execution["status"] == "succeeded", execution
    assert lines_of(read_logs(account.owner, execution["id"]), "stdout") == ["flooded"]
    # A thread per request would be thousands; polling may grow the HTTP pool a little.
    assert peak[0] - before <= 20, (before, peak[0])
    assert len(mailbox[0].tagged(tag)) == 3


def test_lines_longer_than_the_channel_takes_are_refused_and_the_job_goes_on(
        make_account: AccountFactory, mailbox: tuple[Mailbox, int]) -> None:
    account = make_account(plan={"database_access": True})
    tag = f"long-{uuid.uuid4().hex[:8]}"
    job_id = deploy_job(account, textwrap.dedent(f"""\
        import json, os
        from batchyard import sdk
        from helper import LS, MXInvalidDataException

        def main():
            channel = sdk._state.channel
            os.write(channel.fd, b'{{"type": "db", "sql": "' + b"x" * 2_500_000 + b'"}}\\n')
            print("raw:", json.loads(channel._read_line())["error"])
            try:
                LS.db.execute_DB_query("select '" + "x" * 1_100_000 + "'")
            except MXInvalidDataException as exc:
                print("sdk:", exc)
            LS.email.send_email_notification("failure", "{tag}", "é" * 400_000)
            print("sent")
        """), settings={"notify": {"on_failure": ["ops@example.com"]}})
    started = time.monotonic()

    execution = wait_for(account.owner, invoke(account.owner, job_id))

    assert execution["status"] == "succeeded", execution
    assert time.monotonic() - started < 60
    raw, sdk, sent = lines_of(read_logs(account.owner, execution["id"]), "stdout")
    assert raw == f"raw: The request is larger than the channel's limit of {LIMIT} bytes"
    assert sdk.startswith("sdk: The query is too large to send: it is ")
    assert sdk.endswith(f"the platform's channel takes at most {LIMIT} bytes")
    assert sent == "sent"
    [message] = mailbox[0].tagged(tag)
    body = message.get_body(preferencelist=("plain",))
    assert body is not None and body.get_content().rstrip("\n") == "é" * 400_000
