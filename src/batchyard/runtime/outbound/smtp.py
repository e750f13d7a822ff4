"""Sending e-mail: one small interface, the SMTP implementation and a fake beside it.

A connection per message: notifications are few (three per execution at most, plus
one summary), and a fresh connection never trips on a server that dropped an idle one.

The mail server is the operator's: its address and its own words (which may name hosts,
accounts or policies) go to the server's log only. A failure's message, which tenants
see (a delivery's ``last_error``, the SDK's reply), says no more than what happened.
"""

from __future__ import annotations

import logging
import mimetypes
import smtplib
import ssl
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol

from batchyard.config import Settings
from batchyard.domain.notifications import header_text

log = logging.getLogger("batchyard.mail")

_DEFAULT_PORTS = {"none": 25, "starttls": 587, "ssl": 465}
NOT_SENT = "the mail server refused the message or could not be reached"
RECIPIENTS_REFUSED = "the mail server refused every recipient"


class DeliveryFailure(Exception):
    """A notification could not be handed over; ``permanent`` ones are not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes


@dataclass(frozen=True)
class OutgoingEmail:
    to: tuple[str, ...]
    subject: str
    body: str
    html: bool = False
    attachments: tuple[Attachment, ...] = ()


class Mailer(Protocol):
    def send(self, email: OutgoingEmail) -> None:
        """Hand the message to the mail server, or raise DeliveryFailure."""


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    tls: str
    user: str | None
    password: str | None = field(repr=False)
    sender: str
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpConfig | None:
        """The configured server, or None when no host is set (e-mail is then refused)."""
        if not settings.smtp_host:
            return None
        return cls(host=settings.smtp_host,
                   port=settings.smtp_port or _DEFAULT_PORTS[settings.smtp_tls],
                   tls=settings.smtp_tls, user=settings.smtp_user,
                   password=settings.smtp_password.get_secret_value()
                   if settings.smtp_password else None,
                   sender=settings.smtp_from, timeout=settings.smtp_timeout_seconds)


def build_message(email: OutgoingEmail, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(email.to)
    message["Subject"] = header_text(email.subject)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(email.body, subtype="html" if email.html else "plain")
    for attachment in email.attachments:
        kind, _ = mimetypes.guess_type(attachment.filename)
        maintype, _, subtype = (kind or "application/octet-stream").partition("/")
        message.add_attachment(attachment.content, maintype=maintype, subtype=subtype,
                               filename=attachment.filename)
    return message


class SmtpMailer:
    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    def send(self, email: OutgoingEmail) -> None:
        message = build_message(email, self.config.sender)
        try:
            with self._connect() as client:
                if self.config.user:
                    client.login(self.config.user, self.config.password or "")
                client.send_message(message, from_addr=self.config.sender,
                                    to_addrs=list(email.to))
        except smtplib.SMTPResponseException as exc:
            # 5xx: the server will say the same next time (bad address, too large).
            detail = exc.smtp_error.decode("utf-8", "replace") \
                if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            self._log(f"answered {exc.smtp_code} {detail}")
            raise DeliveryFailure(NOT_SENT, permanent=exc.smtp_code >= 500) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            self._log(f"refused every recipient: {exc.recipients}")
            raise DeliveryFailure(RECIPIENTS_REFUSED, permanent=True) from exc
        except (smtplib.SMTPException, OSError) as exc:
            self._log(f"could not be reached: {type(exc).__name__}: {exc}")
            raise DeliveryFailure(NOT_SENT) from exc

    def _log(self, what: str) -> None:
        log.warning("mail server %s:%d %s", self.config.host, self.config.port, what)

    def _connect(self) -> smtplib.SMTP:
        config = self.config
        if config.tls == "ssl":
            return smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout,
                                    context=ssl.create_default_context())
        client = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
        if config.tls == "starttls":
            try:
                client.starttls(context=ssl.create_default_context())
            except BaseException:
                client.close()
                raise
        return client


@dataclass
class RecordingMailer:
    """The fake: keeps what it was given; ``fail_with`` makes every send fail."""

    sent: list[OutgoingEmail] = field(default_factory=list)
    fail_with: DeliveryFailure | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, email: OutgoingEmail) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        with self._lock:
            self.sent.append(email)
