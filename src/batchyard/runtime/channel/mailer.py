"""The answer to ``LS.email.send_email_notification``: the job asks, the server sends.

The job holds no SMTP credentials and picks no recipients: it names a type, and the
job's ``notify`` lists (of the revision that runs) say who receives it. The count
per execution lives in the database, so retries share the limit; an e-mail takes its
place in the count before its attachments are read, and gives it back when it is not
sent (a refused attachment, a mail server that refuses it). Attachments are
files of the running attempt's own output folder, opened one path component at a
time without following links, so a job cannot mail out a file of the server's.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from batchyard.domain.attempts import ClaimedAttempt
from batchyard.domain.notifications import EMAILS_PER_EXECUTION, header_text
from batchyard.runtime.channel.dispatcher import Reply
from batchyard.runtime.outbound.smtp import Attachment, DeliveryFailure, Mailer, OutgoingEmail
from batchyard.services import notifications
from batchyard.services.context import Platform

log = logging.getLogger("batchyard.mail")

NOT_CONFIGURED = ("E-mail is not configured on this server (no BATCHYARD_SMTP_HOST): "
                  "the notification was not sent.")
MAX_ATTACHMENTS = 10
MAX_BODY_CHARS = 1024 * 1024


class AttachmentRefused(Exception):
    """An attachment that does not name a readable file of the output folder."""


class JobEmailHandler:
    """The ``"email"`` request handler registered with the supervisor."""

    def __init__(self, platform: Platform, mailer: Mailer | None, work_root: Path,
                 attachments_max_bytes: int, limit: int = EMAILS_PER_EXECUTION) -> None:
        self.platform = platform
        self.mailer = mailer
        self.work_root = work_root
        self.attachments_max_bytes = attachments_max_bytes
        self.limit = limit

    def __call__(self, attempt: ClaimedAttempt, record: Mapping[str, Any]) -> Reply:
        if self.mailer is None:
            log.warning("e-mail of execution %s not sent: no SMTP server is configured",
                        attempt.execution_id)
            return _refused("not_configured", NOT_CONFIGURED)
        subject, body = record.get("subject"), record.get("body")
        names = record.get("attachments") or []
        if not isinstance(subject, str) or not isinstance(body, str) \
                or not isinstance(names, list):
            return _refused("invalid", "subject and body must be strings, attachments a list")
        if len(body) > MAX_BODY_CHARS:
            return _refused("invalid", f"the body is longer than {MAX_BODY_CHARS} characters")
        try:
            to = notifications.job_email_recipients(
                self.platform, attempt.account_id, attempt.job_id, attempt.revision,
                record.get("email_type", ""))
            # Taken before any attachment is read: a job past its limit costs no file reads.
            notifications.take_job_email(self.platform, attempt.account_id,
                                         attempt.execution_id, self.limit)
        except notifications.EmailRefused as exc:
            return _refused(exc.code, exc.message)
        sent = False
        try:
            files = self._attachments(attempt, names)
            self.mailer.send(OutgoingEmail(to=to, subject=header_text(subject), body=body,
                                           html=bool(record.get("is_html")),
                                           attachments=files))
            sent = True
        except AttachmentRefused as exc:
            return _refused("invalid", str(exc))
        except DeliveryFailure as exc:
            return _refused("send_failed", f"The e-mail could not be sent: {exc}")
        finally:
            if not sent:
                # Not sent, so not counted: the job may try again.
                notifications.give_back_job_email(self.platform, attempt.account_id,
                                                  attempt.execution_id)
        return {"ok": True, "recipients": len(to), "attachments": len(files)}

    def _attachments(self, attempt: ClaimedAttempt, names: list[Any]) -> \
            tuple[Attachment, ...]:
        if not names:
            return ()
        if len(names) > MAX_ATTACHMENTS:
            raise AttachmentRefused(f"at most {MAX_ATTACHMENTS} attachments per e-mail")
        output = running_output_folder(self.work_root, attempt.execution_id, attempt.number)
        if output is None:
            raise AttachmentRefused("the attempt's output folder is gone")
        files: list[Attachment] = []
        total = 0
        for name in names:
            content = read_output_file(output, name, self.attachments_max_bytes - total)
            total += len(content)
            files.append(Attachment(PurePosixPath(str(name)).name, content))
        return tuple(files)


def _refused(code: str, message: str) -> Reply:
    return {"ok": False, "code": code, "error": message}


def running_output_folder(work_root: Path, execution_id: str, number: int) -> Path | None:
    """The output folder of a running attempt (runtime/box/workspace.py names its folder
    ``<execution>-<attempt>-<random>``; exactly one exists while it runs)."""
    for folder in work_root.glob(f"{execution_id}-{number}-*"):
        output = folder / "output"
        if output.is_dir() and not output.is_symlink():
            return output
    return None


def read_output_file(output: Path, name: object, max_bytes: int) -> bytes:
    """The content of ``name`` inside ``output``, never through a link, at most ``max_bytes``.

    ``name`` is relative to the output folder, or an absolute path inside it (the job
    sees the folder at the same path as the server).
    """
    if not isinstance(name, str) or not name or "\0" in name or len(name) > 1000:
        raise AttachmentRefused(f"attachment {name!r} is not a file name")
    path = PurePosixPath(name)
    if path.is_absolute():
        if not path.is_relative_to(output):
            raise AttachmentRefused(f"attachment {name!r} is not in the output folder")
        path = path.relative_to(output)
    parts = path.parts
    if not parts or any(part in ("..", ".") for part in parts):
        raise AttachmentRefused(f"attachment {name!r} must name a file in the output folder")
    folder = os.open(output, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            os.close(folder)
            folder = inner
        # O_NONBLOCK: a FIFO planted by the job must not hang this thread.
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError as exc:
        raise AttachmentRefused(f"attachment {name!r} cannot be read from the output folder "
                                f"(missing, or a link): {exc.strerror}") from exc
    finally:
        os.close(folder)
    info = os.fstat(fd)
    # A second hard link could be a file the job may not read itself.
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise AttachmentRefused(f"attachment {name!r} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        content = handle.read(max_bytes + 1)
    if len(content) > max_bytes:
        raise AttachmentRefused("the attachments are larger than the server allows")
    return content
