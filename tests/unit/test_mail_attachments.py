"""Job e-mail attachments come from the output folder only; messages are built as sent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchyard.runtime.channel.mailer import (
    AttachmentRefused,
    read_output_file,
    running_output_folder,
)
from batchyard.runtime.outbound.smtp import Attachment, OutgoingEmail, build_message

CAP = 1024


@pytest.fixture
def output(tmp_path: Path) -> Path:
    folder = tmp_path / "exe_1-1-abcd" / "output"
    (folder / "sub").mkdir(parents=True)
    (folder / "report.csv").write_text("a,b\n")
    (folder / "sub" / "inner.txt").write_text("inner")
    (tmp_path / "secret.txt").write_text("server secret")
    return folder


def test_names_relative_to_the_output_folder_or_absolute_inside_it_are_read(
        output: Path) -> None:
    assert read_output_file(output, "report.csv", CAP) == b"a,b\n"
    assert read_output_file(output, "sub/inner.txt", CAP) == b"inner"
    assert read_output_file(output, str(output / "sub" / "inner.txt"), CAP) == b"inner"


@pytest.mark.parametrize("name", ["../../secret.txt", "/etc/passwd", "sub/../report.csv",
                                  "", ".", "missing.txt", "sub", "a\0b", 42])
def test_names_outside_the_folder_or_not_naming_a_file_are_refused(output: Path,
                                                                   name: object) -> None:
    with pytest.raises(AttachmentRefused):
        read_output_file(output, name, CAP)


def test_links_are_never_followed(output: Path, tmp_path: Path) -> None:
    (output / "link").symlink_to(tmp_path / "secret.txt")
    (output / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    os.link(tmp_path / "secret.txt", output / "hard")

    for name in ("link", "dirlink/secret.txt", "hard"):
        with pytest.raises(AttachmentRefused):
            read_output_file(output, name, CAP)


def test_a_fifo_is_refused_without_blocking(output: Path) -> None:
    os.mkfifo(output / "pipe")

    with pytest.raises(AttachmentRefused):
        read_output_file(output, "pipe", CAP)


def test_attachments_over_the_size_cap_are_refused(output: Path) -> None:
    (output / "big.bin").write_bytes(b"x" * (CAP + 1))

    with pytest.raises(AttachmentRefused):
        read_output_file(output, "big.bin", CAP)


def test_the_running_attempts_output_folder_is_found_by_execution_and_attempt(
        output: Path) -> None:
    work_root = output.parent.parent

    assert running_output_folder(work_root, "exe_1", 1) == output
    assert running_output_folder(work_root, "exe_1", 2) is None
    assert running_output_folder(work_root, "exe_2", 1) is None


def test_the_message_carries_sender_recipients_html_and_attachments() -> None:
    message = build_message(OutgoingEmail(
        to=("a@example.com", "b@example.com"), subject="Report\nBcc: x@evil.example",
        body="<p>hi</p>", html=True, attachments=(Attachment("r.csv", b"a,b\n"),)),
        "batchyard@example.com")

    assert message["From"] == "batchyard@example.com"
    assert message["To"] == "a@example.com, b@example.com"
    assert message["Subject"] == "Report Bcc: x@evil.example"
    assert message["Bcc"] is None
    body = message.get_body(preferencelist=("html",))
    assert body is not None and "<p>hi</p>" in body.get_content()
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "r.csv"
    assert attachment.get_content_type() == "text/csv"
