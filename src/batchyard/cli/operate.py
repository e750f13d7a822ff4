"""Operating jobs from the terminal: jobs, invoke (--follow), executions, logs,
artifacts, cancel, usage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from batchyard.cli import ui
from batchyard.cli.common import JsonOption, client, handled
from batchyard.cli.exits import JOB_FAILED, USAGE, fail

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "blocked", "missed"}


def _job_id(api: Any, job: str) -> str:
    """A job by id or by name."""
    from batchyard.client import ApiError

    try:
        return str(api.job(job)["id"])
    except ApiError as exc:
        if exc.status != 404:
            raise
        missing = exc
    found = api.find_job(job)
    if found is None:
        raise missing
    return str(found["id"])


@handled
def jobs(json_out: JsonOption = False) -> None:
    """The account's jobs: status, schedule, last execution, today's runs."""
    with client() as api:
        items = api.jobs()
    if json_out:
        ui.emit_json(items)
        return
    ui.table(["Name", "Id", "Status", "Schedule", "Last execution", "Today ✓/✗",
              "Run time today", "Modified"],
             [[item["name"], item["id"], ui.status_text(item["status"]),
               item["schedule_summary"],
               (ui.status_text(item["last_execution"]["status"])
                if item["last_execution"] else "-"),
               f"{item['today']['succeeded']}/{item['today']['failed']}",
               f"{item['today']['runtime_seconds']:.1f} s", item["modified_at"][:19]]
              for item in items])


def _body(given: str | None) -> Any:
    if given is None:
        return {}
    text = Path(given[1:]).read_text() if given.startswith("@") else given
    try:
        return json.loads(text)
    except ValueError as exc:
        fail(USAGE, f"--body: not valid JSON: {exc}")


def _follow(api: Any, execution_id: str, json_out: bool, after: int | None = None) -> str:
    status = "unknown"
    for event in api.follow_logs(execution_id, after=after):
        if event.line is not None:
            if json_out:
                print(json.dumps(event.line), flush=True)
            else:
                ui.log_line(dict(event.line))
        elif event.status is not None:
            status = event.status
    return status


def _exit_for(status: str) -> None:
    if status != "succeeded":
        raise typer.Exit(JOB_FAILED)


@handled
def invoke(job: Annotated[str, typer.Argument(help="The job's id or name.")],
           body: Annotated[str | None, typer.Option(
               help="The event body: JSON text, or @file.json.")] = None,
           follow: Annotated[bool, typer.Option(
               help="Stream the log until the execution ends; exit code by its status.")
           ] = False,
           json_out: JsonOption = False) -> None:
    """Invoke a published job (its event body from --body)."""
    payload = _body(body)
    with client() as api:
        queued = api.invoke(_job_id(api, job), payload)
        execution_id = queued["execution_id"]
        if not follow:
            (ui.emit_json(queued) if json_out
             else ui.say(f"{execution_id} {queued['status']}"))
            return
        if not json_out:
            ui.say(f"execution {execution_id} queued; following its log", "dim")
        status = _follow(api, execution_id, json_out)
        execution = api.execution(execution_id)
    if json_out:
        print(json.dumps({"execution_id": execution_id, "status": execution["status"],
                          "reason": execution.get("reason")}), flush=True)
    else:
        ui.say(f"{execution_id} {execution['status']}"
               + (f" ({execution.get('reason')})" if execution.get("reason") else "")
               + (f" after {execution['runtime_seconds']:.2f} s"
                  if execution.get("runtime_seconds") is not None else ""),
               "green" if execution["status"] == "succeeded" else "red")
    _exit_for(execution["status"] if execution["status"] in FINAL else status)


@handled
def executions(job: Annotated[str | None, typer.Argument(help="A job's id or name.")] = None,
               status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
               limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
               json_out: JsonOption = False) -> None:
    """Executions of a job (or of the account), newest first."""
    with client() as api:
        job_id = _job_id(api, job) if job else None
        items = api.executions(job_id, status, limit)
    if json_out:
        ui.emit_json(items)
        return
    ui.table(["Id", "Job", "Status", "Source", "Revision", "Created", "Run time", "Reason"],
             [[e["id"], e.get("job_name") or e["job_id"], ui.status_text(e["status"]),
               e["source"], str(e.get("revision") or "-"), e["created_at"][:19],
               f"{e['runtime_seconds']:.2f} s" if e.get("runtime_seconds") is not None
               else "-", e.get("reason") or ""] for e in items])


@handled
def logs(execution: Annotated[str, typer.Argument(help="The execution's id.")],
         follow: Annotated[bool, typer.Option(help="Keep following until it ends.")] = False,
         level: Annotated[str | None, typer.Option(help="Only this level and above.")] = None,
         json_out: JsonOption = False) -> None:
    """An execution's log (stdout, stderr and LS.log records)."""
    with client() as api:
        if follow:
            status = _follow(api, execution, json_out)
            if not json_out:
                ui.say(f"{execution} {status}", "green" if status == "succeeded" else "red")
            _exit_for(status)
            return
        items: list[Any] = []
        after = None
        while True:
            page = api.logs(execution, after=after, level=level)
            items.extend(page["items"])
            if not page["items"] or len(page["items"]) < 1000:
                break
            after = page["items"][-1]["seq"]
    if json_out:
        ui.emit_json({"items": items, "truncated": page.get("truncated", False)})
        return
    for item in items:
        ui.log_line(item)


@handled
def artifacts(execution: Annotated[str, typer.Argument(help="The execution's id.")],
              download: Annotated[Path | None, typer.Option(
                  help="Save every artifact into this folder.")] = None,
              json_out: JsonOption = False) -> None:
    """An execution's output files; --download DIR saves them."""
    import hashlib

    saved = []
    with client() as api:
        items = api.artifacts(execution)
        if download is not None:
            root = download.resolve()
            for item in items:
                target = (root / item["name"]).resolve()
                if not target.is_relative_to(root):
                    fail(USAGE, f"artifact name {item['name']!r} leaves {root}")
                content = api.download_artifact(execution, item["name"])
                if hashlib.sha256(content).hexdigest() != item["sha256"]:
                    fail(USAGE, f"{item['name']}: the download does not match its sha256")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                saved.append(str(target))
    if json_out:
        ui.emit_json({"items": items, "saved": saved})
        return
    ui.table(["Name", "Size", "SHA-256"],
             [[a["name"], str(a["size"]), a["sha256"][:16]] for a in items])
    for path in saved:
        ui.say(f"saved {path}")


@handled
def cancel(execution: Annotated[str, typer.Argument(help="The execution's id.")],
           json_out: JsonOption = False) -> None:
    """Cancel a queued or running execution."""
    with client() as api:
        answer = api.cancel(execution)
    (ui.emit_json(answer) if json_out
     else ui.say(f"{execution} {answer['status']}"
                 + (" (cancel requested)" if answer.get("cancel_requested") else "")))


@handled
def usage(date: Annotated[str | None, typer.Option(help="YYYY-MM-DD (account day).")] = None,
          json_out: JsonOption = False) -> None:
    """Today's use of the plan's limits, as bars."""
    with client() as api:
        answer = api.usage(date)
    if json_out:
        ui.emit_json(answer)
        return
    ui.say(f"{answer['date']} ({answer['timezone']})")
    ui.bar("jobs", answer["jobs"]["used"], answer["jobs"]["limit"])
    ui.bar("executions today", answer["executions"]["used"], answer["executions"]["limit"])
    runtime = answer["runtime_seconds"]
    ui.bar("run time (min)", round((runtime["used"] + runtime.get("reserved", 0)) / 60, 1),
           round(runtime["limit"] / 60, 1))
    for job in answer.get("per_job", []):
        ui.bar(f"  {job['name'][:22]}", job["executions"], job["limit"])
