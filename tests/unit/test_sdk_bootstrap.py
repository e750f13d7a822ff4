"""The job-side bootstrap and SDK, run as the platform runs them: a real child process.

Each test writes a ``main.py``, starts ``python -I -S _batchyard_boot.py`` with the
context on stdin and one end of a socket pair as the channel, and plays the
supervisor on the other end (recording records, answering database requests).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from batchyard.sdk import BOOTSTRAP, JOBPATH

PYTHON = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
TIMEOUT = 30

DbReply = Callable[[dict[str, Any]], dict[str, Any]]


class FakeSupervisor(threading.Thread):
    """The supervisor's end of the channel: records every line, answers db and e-mail
    requests."""

    def __init__(self, sock: socket.socket, db_reply: DbReply | None) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.db_reply = db_reply
        self.records: list[dict[str, Any]] = []

    def run(self) -> None:
        with self.sock, self.sock.makefile("rb") as lines:
            for line in lines:
                record = json.loads(line)
                self.records.append(record)
                if record.get("type") == "db" and self.db_reply is not None:
                    reply = json.dumps(self.db_reply(record)) + "\n"
                    self.sock.sendall(reply.encode())
                elif record.get("type") == "email":
                    # The real supervisor's mailer answers once the message is handed over.
                    self.sock.sendall(b'{"ok": true, "recipients": 1}\n')


@dataclass
class JobRun:
    returncode: int
    stdout: str
    stderr: str
    output_dir: Path
    records: list[dict[str, Any]] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("type") == kind]


RunJob = Callable[..., JobRun]


@pytest.fixture
def run_job(tmp_path: Path) -> RunJob:
    """Run ``source`` as main.py; keyword arguments override the context."""

    def run(
        source: str,
        *,
        event: dict[str, Any] | None = None,
        variables: dict[str, str] | None = None,
        database_access: bool = False,
        channel: bool = True,
        db_reply: DbReply | None = None,
        extra_files: dict[str, str] | None = None,
    ) -> JobRun:
        code = tmp_path / "code"
        code.mkdir()
        (code / "main.py").write_text(textwrap.dedent(source))
        for name, text in (extra_files or {}).items():
            (code / name).parent.mkdir(parents=True, exist_ok=True)
            (code / name).write_text(textwrap.dedent(text))
        output = tmp_path / "output"
        output.mkdir()
        payload = {
            "event": event if event is not None else make_event(),
            "variables": variables or {},
            "output_dir": str(output),
            "job_name": "nightly",
            "execution_id": "ex-1",
            "attempt": 0,
            "database_access": database_access,
            "email_limit": 3,
        }
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "LANG": "C.UTF-8",
            "OUTPUT_DIR": str(output),
            "TZ": "UTC",
        }
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        args = [PYTHON, "-I", "-S", str(BOOTSTRAP), "--channel-fd", str(fd)]
        supervisor = FakeSupervisor(ours, db_reply)
        supervisor.start()
        try:
            proc = subprocess.Popen(
                args,
                cwd=code,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=[fd] if channel else [],
            )
        finally:
            theirs.close()
        try:
            out, err = proc.communicate(json.dumps(payload).encode(), timeout=TIMEOUT)
        finally:
            proc.kill()
        supervisor.join(TIMEOUT)
        return JobRun(proc.returncode, out.decode(), err.decode(), output, supervisor.records)

    return run


def make_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "body": {"order": 42},
        "query_string_parameters": {"mode": "full"},
        "source": "api",
        "job_name": "nightly",
        "job_instance_id": "ex-1",
        "retry_attempt": 0,
    }
    event.update(overrides)
    return event


def test_jobpath_holds_the_bootstrap_and_the_sdk() -> None:
    assert BOOTSTRAP.is_file()
    assert (JOBPATH / "helper.py").is_file()
    assert (JOBPATH / "batchyard" / "sdk.py").is_file()


def test_main_with_event_receives_the_event(run_job: RunJob) -> None:
    result = run_job(
        """
        import json

        def main(event):
            print(json.dumps(event["body"]))
            print(event["source"], event["retry_attempt"], event["job_instance_id"])
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['{"order": 42}', "api 0 ex-1"]


def test_main_without_parameters_is_called_without_event(run_job: RunJob) -> None:
    result = run_job(
        """
        import sys

        def main():
            print("no args", sys.argv)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no args ['main.py']\n"


def test_result_record_carries_the_return_value(run_job: RunJob) -> None:
    result = run_job("def main(event):\n    return {'rows': 3, 'ok': True}\n")
    assert result.returncode == 0, result.stderr
    assert result.of_type("result") == [{"type": "result", "value": {"rows": 3, "ok": True}}]


def test_result_that_is_not_json_is_sent_as_a_truncated_repr(run_job: RunJob) -> None:
    result = run_job("def main():\n    return {'big': object(), 'pad': 'x' * 20000}\n")
    (record,) = result.of_type("result")
    assert record["value"].startswith("{'big': <object object at")
    assert len(record["value"]) == 10_000


def test_dunder_main_guard_does_not_run(run_job: RunJob) -> None:
    result = run_job(
        """
        def main():
            print("main ran", __name__)

        if __name__ == "__main__":
            print("guard ran")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "main ran main\n"


def test_helper_log_sends_a_structured_record(run_job: RunJob) -> None:
    result = run_job(
        """
        from helper import LS

        def main():
            LS.log.info("x", {"k": 1})
            LS.log.warn("odd", {"when": __import__("datetime").date(2024, 1, 2)})
        """
    )
    assert result.returncode == 0, result.stderr
    info, warn = result.of_type("log")
    assert (info["level"], info["message"], info["data"]) == ("info", "x", {"k": 1})
    assert isinstance(info["at"], float)
    assert (warn["level"], warn["data"]) == ("warn", {"when": "2024-01-02"})


def test_without_channel_logs_go_to_stderr(run_job: RunJob) -> None:
    result = run_job(
        """
        from batchyard.sdk import log

        def main():
            log.error("boom", {"k": 1})
            return 5
        """,
        channel=False,
    )
    assert result.returncode == 0, result.stderr
    assert 'ERROR boom {"k": 1}' in result.stderr
    assert result.records == []


def test_settings_return_variables(run_job: RunJob) -> None:
    result = run_job(
        """
        from helper import LS
        from batchyard.sdk import settings

        def main():
            print(LS.settings.TOKEN, settings["TOKEN"], settings.get("NOPE", "dflt"))
        """,
        variables={"TOKEN": "abc123", "REGION": "eu"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "abc123 abc123 dflt\n"


def test_missing_setting_names_the_key_and_the_available_ones(run_job: RunJob) -> None:
    result = run_job(
        """
        from helper import LS

        def main():
            try:
                LS.settings.MISSING
            except AttributeError as exc:
                print(exc)
        """,
        variables={"TOKEN": "abc123", "REGION": "eu"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "No setting named 'MISSING'; available settings: REGION, TOKEN\n"


def test_uncaught_exception_exits_1_with_traceback_and_error_record(run_job: RunJob) -> None:
    result = run_job(
        """
        def helper_function():
            raise ValueError("bad row 7")

        def main(event):
            helper_function()
        """
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):\n")
    assert "_batchyard_boot" not in result.stderr
    assert 'main.py", line 6, in main' in result.stderr
    assert result.stderr.endswith("ValueError: bad row 7\n")
    assert result.of_type("error") == [
        {"type": "error", "error_type": "ValueError", "message": "bad row 7"}
    ]
    assert result.of_type("result") == []


def test_exception_while_importing_main_exits_1(run_job: RunJob) -> None:
    result = run_job("import no_such_module_here\n\ndef main():\n    pass\n")
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in result.stderr
    assert result.of_type("error")[0]["error_type"] == "ModuleNotFoundError"


def test_syntax_error_exits_1_without_traceback_noise(run_job: RunJob) -> None:
    result = run_job("def main(:\n    pass\n")
    assert result.returncode == 1
    assert "SyntaxError" in result.stderr
    assert "_batchyard_boot" not in result.stderr


def test_missing_main_exits_2(run_job: RunJob) -> None:
    result = run_job("MAIN = 1\n")
    assert result.returncode == 2
    assert "does not define a callable main()" in result.stderr


@pytest.mark.parametrize(("call", "status"), [("3", 3), ("0", 0), ("None", 0)])
def test_system_exit_sets_the_exit_status(run_job: RunJob, call: str, status: int) -> None:
    result = run_job(f"import sys\n\ndef main():\n    sys.exit({call})\n")
    assert result.returncode == status, result.stderr
    assert result.of_type("error") == []


def test_keyboard_interrupt_exits_130(run_job: RunJob) -> None:
    result = run_job("def main():\n    raise KeyboardInterrupt\n")
    assert result.returncode == 130


def test_stdin_is_empty_for_job_code(run_job: RunJob) -> None:
    result = run_job("import sys\n\ndef main():\n    print(repr(sys.stdin.read()))\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "''\n"


def test_fourth_email_raises_too_many_requests(run_job: RunJob) -> None:
    result = run_job(
        """
        from helper import LS, MXTooManyRequestsError

        def main():
            for n in range(3):
                assert LS.email.send_email_notification("Info", f"s{n}", "b") is True
            try:
                LS.email.send_email_notification("Info", "s3", "b")
            except MXTooManyRequestsError as exc:
                print("refused:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused: ")
    assert [r["subject"] for r in result.of_type("email")] == ["s0", "s1", "s2"]


def test_email_subject_is_cut_at_255_characters(run_job: RunJob) -> None:
    result = run_job(
        """
        from helper import LS
        from pathlib import Path

        def main():
            LS.email.send_email_notification(
                "Error", "S" * 300, "<b>hi</b>", isHtml=True, attachments=[Path("a.pdf")]
            )
        """
    )
    assert result.returncode == 0, result.stderr
    (record,) = result.of_type("email")
    assert record["subject"] == "S" * 255
    assert record["is_html"] is True
    assert record["attachments"] == ["a.pdf"]
    assert (record["email_type"], record["body"]) == ("Error", "<b>hi</b>")


def test_db_without_access_raises_unauthorized(run_job: RunJob) -> None:
    result = run_job(
        """
        from helper import LS, MXUnauthorizedDBAccess

        def main():
            try:
                LS.db.execute_DB_query("select 1")
            except MXUnauthorizedDBAccess as exc:
                print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Database access is not enabled for this account's plan\n"
    assert result.of_type("db") == []


def test_db_with_access_asks_the_supervisor(run_job: RunJob) -> None:
    def answer(request: dict[str, Any]) -> dict[str, Any]:
        if request["target"] == "etl":
            return {"ok": False, "error": "relation does not exist"}
        return {"ok": True, "rows": [{"id": 1, "name": "Ada"}]}

    result = run_job(
        """
        from helper import LS, MXException

        def main():
            print(LS.db.execute_DB_query("select id, name from leads"))
            try:
                LS.db.execute_ETL_query("select * from nowhere", multi=True)
            except MXException as exc:
                print("etl:", exc)
        """,
        database_access=True,
        db_reply=answer,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[{'id': 1, 'name': 'Ada'}]\netl: relation does not exist\n"
    assert result.of_type("db") == [
        {"type": "db", "target": "main", "sql": "select id, name from leads", "multi": False},
        {"type": "db", "target": "etl", "sql": "select * from nowhere", "multi": True},
    ]


def test_files_written_to_output_dir_are_kept(run_job: RunJob) -> None:
    result = run_job(
        """
        import os
        from batchyard.sdk import output_dir

        def main():
            (output_dir() / "report.csv").write_text("a,b\\n")
            with open(os.path.join(os.environ["OUTPUT_DIR"], "env.txt"), "w") as f:
                f.write("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert (result.output_dir / "report.csv").read_text() == "a,b\n"
    assert (result.output_dir / "env.txt").read_text() == "ok"


def test_server_package_is_not_importable(run_job: RunJob) -> None:
    result = run_job(
        """
        import importlib

        def main():
            for name in ("sqlalchemy", "batchyard.errors", "batchyard.config"):
                try:
                    importlib.import_module(name)
                except ImportError:
                    print(name, "missing")
                else:
                    print(name, "IMPORTED")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == [
        "sqlalchemy missing",
        "batchyard.errors missing",
        "batchyard.config missing",
    ]


def test_code_folder_modules_are_importable(run_job: RunJob) -> None:
    result = run_job(
        "from lib.util import double\n\ndef main():\n    print(double(21))\n",
        extra_files={"lib/__init__.py": "", "lib/util.py": "def double(x):\n    return 2 * x\n"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "42\n"


def test_channel_is_not_inherited_by_grandchildren(run_job: RunJob) -> None:
    result = run_job(
        """
        import subprocess, sys
        from batchyard import sdk

        PROBE = (
            "import os, sys\\n"
            "try:\\n os.fstat(int(sys.argv[1]))\\n"
            "except OSError:\\n print('closed')"
        )

        def main():
            fd = str(sdk._state.channel.fd)
            subprocess.run([sys.executable, "-c", PROBE, fd], close_fds=False, check=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "closed\n"
