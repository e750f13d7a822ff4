"""``batchyard run`` on its own: the sandbox, requirements in a cached environment,
--var / --event / --timeout, printed e-mails, and a failure's traceback and exit code."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from devkit_support import Kit, user_records

pytestmark = pytest.mark.timeout(180)

MAIN_PY = textwrap.dedent("""\
    import os

    from helper import LS


    def main(event):
        LS.log.info("who", {"uid_is_root": os.getuid() == 0, "greeting": LS.settings.GREETING,
                            "body": event["body"]})
        with open(os.path.join(os.environ["OUTPUT_DIR"], "out.txt"), "w") as handle:
            handle.write("written")
        if event["body"].get("mail"):
            LS.email.send_email_notification("success", "Nightly report", "All good.\\nBye.")
        if event["body"].get("fail"):
            raise RuntimeError("the job gave up")
        if event["body"].get("sleep"):
            import time
            time.sleep(30)
    """)


@functools.cache
def _pypi_unreachable() -> str | None:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/six/", timeout=10) as answer:
            answer.read(1)
    except OSError as exc:
        return f"PyPI is not reachable from this machine: {exc}"
    return None


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "local-job"
    root.mkdir()
    (root / "main.py").write_text(MAIN_PY)
    (root / "batchyard.toml").write_text(textwrap.dedent("""\
        [job]
        name = "local-job"

        [settings]
        notify = { on_success = ["ops@example.com"] }

        [variables]
        GREETING = "from the toml"
        """))
    return root


def test_run_options_emails_and_failures(tmp_path: Path) -> None:
    root = _project(tmp_path)
    kit = Kit.make(tmp_path)
    (tmp_path / "event.json").write_text(json.dumps({"body": {"mail": True}}))
    done = kit("run", "--var", "GREETING=from the command line", "--event",
               str(tmp_path / "event.json"), cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "from the command line" in done.stdout
    # The e-mail is shown, not sent, with the recipients the server would pick.
    assert "e-mail (not sent: local run) [success] to ops@example.com" in done.stdout
    assert "subject: Nightly report" in done.stdout and "| Bye." in done.stdout
    assert (root / "output" / "out.txt").read_text() == "written"

    (root / "event.json").write_text(json.dumps({"body": {"fail": True}}))
    failed = kit("run", cwd=root)
    assert failed.returncode == 1
    assert "Traceback (most recent call last):" in failed.stdout
    assert "RuntimeError: the job gave up" in failed.stdout

    (root / "event.json").write_text(json.dumps({"body": {"sleep": True}}))
    timed = kit.json("run", "--timeout", "0.02", cwd=root, expect=1)
    assert timed["status"] == "timed_out" and "deadline of 1.2 s" in timed["error"]
    assert timed["runtime_seconds"] < 10


def test_run_in_the_servers_sandbox(tmp_path: Path) -> None:
    root = _project(tmp_path)
    kit = Kit.make(tmp_path)
    result = kit.json("run", "--sandbox", cwd=root)
    assert result["status"] == "succeeded", result
    header = result["logs"][0]["message"]
    # The server's own detection: bubblewrap where it runs, else the rlimits launcher.
    assert "isolation: bubblewrap" in header or "isolation: rlimits" in header, header
    plain = kit.json("run", cwd=root)
    assert "isolation: unconfined" in plain["logs"][0]["message"]
    assert user_records(result["logs"])[0][2]["greeting"] == "from the toml"
    assert (root / "output" / "out.txt").read_text() == "written"


def test_requirements_install_once_into_a_cached_environment(tmp_path: Path) -> None:
    reason = _pypi_unreachable()
    if reason:
        pytest.skip(reason)
    root = _project(tmp_path)
    (root / "requirements.txt").write_text("six==1.17.0\n")
    (root / "main.py").write_text(
        "import six\nfrom helper import LS\n\n\ndef main():\n"
        "    LS.log.info('six', {'version': six.__version__})\n")
    kit = Kit.make(tmp_path)
    first = kit.json("run", cwd=root)
    assert first["status"] == "succeeded", first
    messages = [item["message"] for item in first["logs"]]
    assert any(m.startswith("pip: ") for m in messages)
    assert any(m.startswith("batchyard: requirements: installed") for m in messages)
    assert user_records(first["logs"])[-1] == ("info", "six", {"version": "1.17.0"})
    again = kit.json("run", cwd=root)
    assert any(item["message"].startswith("batchyard: requirements: cached environment")
               for item in again["logs"])
    assert (Path(kit.env["XDG_CACHE_HOME"]) / "batchyard" / "envs").is_dir()


SERVER_STACK = ("sqlalchemy", "fastapi", "uvicorn", "alembic", "pydantic", "httpx",
                "batchyard.services", "batchyard.store", "batchyard.runtime", "batchyard.api",
                "batchyard.app", "batchyard.config")


def _modules_after(source: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", f"{source}\nimport json, sys\n"
                           "print(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_help_loads_no_server_stack_and_the_client_none_of_the_server() -> None:
    helped = _modules_after("import sys\nfrom batchyard.cli.main import app\n"
                            "sys.argv = ['batchyard', '--help']\n"
                            "try:\n    app()\nexcept SystemExit:\n    pass")
    assert not {m for m in helped if m.startswith(SERVER_STACK)}
    client = _modules_after("import batchyard.client")
    assert not {m for m in client if m.startswith(("batchyard.services", "batchyard.store",
                                                   "batchyard.runtime", "batchyard.api",
                                                   "batchyard.domain", "batchyard.cli."))}


def test_run_queries_a_database_given_with_db(tmp_path: Path) -> None:
    import sqlite3

    database = tmp_path / "local.sqlite3"
    with sqlite3.connect(database) as connection:
        connection.execute("create table users (name text, visits integer)")
        connection.execute("insert into users values ('ada', 3), ('bob', 5)")
    root = _project(tmp_path)
    (root / "main.py").write_text(
        "from helper import LS\n\n\ndef main():\n"
        "    rows = LS.db.execute_DB_query('select name, visits from users order by name')\n"
        "    LS.log.info('users', {'rows': rows})\n"
        "    LS.db.execute_ETL_query('select 1')\n")
    kit = Kit.make(tmp_path)
    result = kit.json("run", "--db", f"main=sqlite:///{database}", cwd=root, expect=1)
    records = user_records(result["logs"])
    assert records[0][1].startswith("query on main: 2 rows in ")
    assert records[1] == ("info", "users", {"rows": [{"name": "ada", "visits": 3},
                                                     {"name": "bob", "visits": 5}]})
    # Only main was given: the etl query fails the job with the kit's own words.
    assert "No etl database for this local run" in result["error"]
    assert kit("run", "--db", "other=sqlite:///x", cwd=root).returncode == 2
