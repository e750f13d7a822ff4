"""Parity: one job run with ``batchyard run`` and on the server gives the same LS.log
records, the same outputs, and the same failure for an exception and for a timeout."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from devkit_support import Kit, user_records
from e2e_support import AccountFactory, ServerProcess, get_execution

pytestmark = pytest.mark.timeout(180)

MAIN_PY = textwrap.dedent("""\
    import os
    import time

    from helper import LS


    def main(event):
        mode = event["body"].get("mode")
        LS.log.debug("mode", {"mode": mode, "source": event["source"]})
        LS.log.info("settings", {"greeting": LS.settings.GREETING, "n": [1, 2.5, None]})
        out = os.environ["OUTPUT_DIR"]
        os.makedirs(os.path.join(out, "sub"), exist_ok=True)
        with open(os.path.join(out, "sub", "data.csv"), "w") as handle:
            handle.write("a,b\\n1,2\\n")
        with open(os.path.join(out, "result.bin"), "wb") as handle:
            handle.write(bytes(range(256)))
        LS.log.warn("careful")
        if mode == "raise":
            LS.log.error("about to fail")
            raise ValueError("boom in the job")
        if mode == "sleep":
            LS.log.info("sleeping")
            time.sleep(60)
        LS.log.fatal("done, fatally named", {"ok": True})
    """)

CONFIG = textwrap.dedent("""\
    [job]
    name = "{name}"

    [settings]
    timeout_minutes = 0.05

    [schedule]
    type = "none"

    [variables]
    GREETING = "hi there"
    """)


def _outcome(records: list[dict[str, Any]]) -> list[tuple[Any, Any, Any]]:
    return user_records(records)


def _server_run(kit: Kit, root: Path, name: str, mode: str | None,
                client: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    done = kit("invoke", name, "--body", json.dumps({"mode": mode}), "--follow", "--json",
               cwd=root)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    execution = get_execution(client, lines[-1]["execution_id"])
    assert done.returncode == (0 if execution["status"] == "succeeded" else 1), done.stderr
    return lines[:-1], execution


def test_local_and_server_runs_agree(tmp_path: Path, server: ServerProcess,
                                     make_account: AccountFactory) -> None:
    account = make_account()
    kit = Kit.make(tmp_path)
    kit.login(server.base_url, account.keys["owner"], cwd=tmp_path)
    name = f"parity-{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    root.mkdir()
    (root / "main.py").write_text(MAIN_PY)
    (root / "batchyard.toml").write_text(CONFIG.replace("{name}", name))
    kit.json("deploy", "--publish", cwd=root)
    downloads = tmp_path / "downloads"

    for mode, status in ((None, "succeeded"), ("raise", "failed"), ("sleep", "timed_out")):
        event = root / "event.json"
        event.write_text(json.dumps({"body": {"mode": mode}}))
        local = kit.json("run", cwd=root, expect=0 if status == "succeeded" else 1)
        remote_logs, execution = _server_run(kit, root, name, mode, account.owner)
        assert local["status"] == execution["status"] == status, (local, execution)
        assert _outcome(local["logs"]) == _outcome(remote_logs), mode
        attempt = execution["attempts"][-1]
        assert local["error"] == attempt["error"], (local["error"], attempt)
        if mode == "raise":
            assert local["error"] == "ValueError: boom in the job"
            local_stderr = [i["message"] for i in local["logs"] if i["stream"] == "stderr"]
            remote_stderr = [i["message"] for i in remote_logs if i["stream"] == "stderr"]
            assert local_stderr[-1] == remote_stderr[-1] == "ValueError: boom in the job"
            assert local_stderr[0] == remote_stderr[0] == "Traceback (most recent call last):"
        if mode == "sleep":
            assert "killed at its deadline of 3 s" in local["error"]
        target = downloads / str(mode)
        kit.json("artifacts", execution["id"], "--download", str(target), cwd=root)
        local_files = {p.relative_to(root / "output").as_posix(): p.read_bytes()
                       for p in (root / "output").rglob("*") if p.is_file()}
        remote_files = {p.relative_to(target).as_posix(): p.read_bytes()
                        for p in target.rglob("*") if p.is_file()}
        assert local_files == remote_files and set(local_files) == {"sub/data.csv",
                                                                    "result.bin"}
