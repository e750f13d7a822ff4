"""The local kit: ``init``, ``run``, ``pack``, ``deploy`` (``save``, ``publish``),
``install`` and ``uninstall``; each also accepts the vendor's lsbatch layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from batchyard.cli import ui
from batchyard.cli.common import JsonOption, client, handled
from batchyard.cli.exits import JOB_FAILED, USAGE, fail


@handled
def init(name: Annotated[str, typer.Argument(help="The job's name (and its folder).")],
         json_out: JsonOption = False) -> None:
    """Create a project folder: main.py, batchyard.toml, event.json, a test, .gitignore."""
    from batchyard.cli.scaffold import create
    from batchyard.domain.jobs import validate_name
    from batchyard.errors import InvalidInput

    try:
        validate_name(name)
    except InvalidInput as exc:
        fail(USAGE, f"{name!r}: {exc.message}")
    root = Path.cwd() / name
    if root.exists():
        fail(USAGE, f"{root} already exists")
    files = create(root, name)
    if json_out:
        ui.emit_json({"project": str(root), "files": files})
        return
    ui.say(f"Created {root}:")
    for file in files:
        ui.say(f"  {file}")
    ui.say(f"Next: cd {name} && batchyard run")


def _parse_pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(USAGE, f"{what} {item!r}: expected KEY=VALUE")
        pairs[key] = value
    return pairs


@handled
def run(event: Annotated[str | None, typer.Option(
            help="The event main(event) gets (default: event.json).")] = None,
        var: Annotated[list[str] | None, typer.Option(
            help="Set a variable, KEY=VALUE (repeatable; wins over batchyard.toml).")] = None,
        timeout: Annotated[float | None, typer.Option(
            help="Minutes before the job is killed (default: its timeout_minutes).")] = None,
        sandbox: Annotated[bool, typer.Option(
            help="Run under the server's sandbox (bubblewrap where available).")] = False,
        db: Annotated[list[str] | None, typer.Option(
            help="A database for LS.db, main=URL or etl=URL (else query.json answers).")
        ] = None,
        json_out: JsonOption = False) -> None:
    """Run the job here, through the server's own runtime, SDK and (--sandbox) sandbox.

    LS.log lines show live; outputs land in ./output (replacing the last run's);
    e-mails are printed; exit 0 when main returns, 1 when the job fails.
    """
    from batchyard.cli import packing
    from batchyard.cli import project as projects
    from batchyard.cli.localrun import run_locally

    project = projects.load()
    overrides = _parse_pairs(var or [], "--var")
    databases = _parse_pairs(db or [], "--db")
    for target in databases:
        if target not in ("main", "etl"):
            fail(USAGE, f"--db {target}=...: the databases are main and etl")
    missing = [name for name in project.missing_secrets if name not in overrides]
    if missing:
        project.require_secrets()
    variables = {v.key: v.value for v in project.variables}
    variables.update(overrides)
    secret_values = tuple(v.value for v in project.variables if v.secret and v.value)
    package = packing.build(project)
    minutes = timeout if timeout is not None else float(
        project.settings.get("timeout_minutes", 60))
    if minutes <= 0:
        fail(USAGE, "--timeout must be more than 0 minutes")
    show = (lambda item: None) if json_out else ui.log_line
    result = run_locally(project, package, variables, secret_values,
                         projects.read_event(project, event), minutes, databases, sandbox,
                         show, ui.say)
    if json_out:
        ui.emit_json({"status": result.status, "error": result.error,
                      "runtime_seconds": result.runtime_seconds,
                      "outputs": list(result.outputs), "logs": list(result.records)})
    else:
        for name in result.outputs:
            ui.say(f"output: {project.root / 'output' / name}")
        ui.say(f"{result.status}" + (f": {result.error}" if result.error else "")
               + f" ({result.runtime_seconds:.2f} s)",
               "green" if result.status == "succeeded" else "red")
    if result.status != "succeeded":
        raise typer.Exit(JOB_FAILED)


@handled
def pack(json_out: JsonOption = False) -> None:
    """Build deliverables/code.zip, validated as the server validates an upload."""
    from batchyard.cli import packing
    from batchyard.cli import project as projects
    from batchyard.cli.profiles import maybe_resolve

    project = projects.load()
    limit = None
    plan_note = "the default plan's limit"
    profile = maybe_resolve()
    if profile is not None:
        from batchyard.client import ApiError, Client, Unreachable

        try:
            with Client(profile.url, profile.key, timeout=5) as api:
                limit = int(api.me()["account"]["plan"]["max_code_size_bytes"])
                plan_note = f"the plan of profile {profile.name}"
        except (ApiError, Unreachable, KeyError, ValueError):
            pass
    package = packing.build(project, limit)
    target = project.root / "deliverables" / "code.zip"
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(package.data)
    size_limit = limit or packing.DEFAULT_CODE_LIMIT
    if json_out:
        ui.emit_json({"zip": str(target), "size": len(package.data), "limit": size_limit,
                      "sha256": package.sha256, "files": [
                          {"name": n, "size": s} for n, s in package.files],
                      "left_out": list(package.left_out)})
        return
    for name, size in package.files:
        ui.say(f"  {size:>9}  {name}")
    for skipped in package.left_out:
        ui.say(f"  left out: {skipped}", "yellow")
    ui.say(f"{target}: {len(package.data)} bytes ({len(package.files)} files; "
           f"{size_limit} allowed by {plan_note})")


def _deploy(publish: bool, json_out: bool) -> None:
    from batchyard.cli import project as projects
    from batchyard.cli.deploy import Counter, Report, deploy

    project = projects.load()
    project.require_secrets()
    report = Report()
    progress_bar: Any = None
    task: Any = None

    def progress(sent: int, total: int) -> None:
        nonlocal progress_bar, task
        if json_out:
            return
        if progress_bar is None:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            progress_bar = Progress(TextColumn("uploading"), BarColumn(), DownloadColumn(),
                                    transient=True)
            progress_bar.start()
            task = progress_bar.add_task("upload", total=total)
        progress_bar.update(task, completed=sent)

    def show(report: Report) -> None:
        """The differences, printed before the new revision is made."""
        if json_out:
            return
        if not report.changes:
            ui.say(f"{project.name}: no change; nothing written [{report.reads} reads]")
        else:
            ui.say(f"{project.name} ({report.job_id}):")
            for change in report.changes:
                ui.say(f"  {change}")
            for kind, names in report.code_files.items():
                sign = {"added": "+", "removed": "-"}.get(kind, "~")
                for name in names:
                    ui.say(f"    {sign} {name}")
        for pending in report.pending:
            ui.say(f"  not yet published, changed on the server: {pending}", "yellow")
        if report.next_runs:
            ui.say("next runs: " + ", ".join(report.next_runs))

    try:
        with client(Counter(report)) as api:
            deploy(api, project, report, publish, show, progress)
    finally:
        if progress_bar is not None:
            progress_bar.stop()
    if json_out:
        ui.emit_json(report.as_dict())
    elif report.published is not None:
        ui.say(f"published revision {report.published}", "green")
    elif not publish and report.changes:
        ui.say("not published: `batchyard deploy --publish` (or `batchyard publish`) "
               "makes it run")


@handled
def deploy_command(publish: Annotated[bool, typer.Option(
                       help="Publish the result as a new revision (admins only).")] = False,
                   json_out: JsonOption = False) -> None:
    """Create or update the job from this project, writing only what changed."""
    _deploy(publish, json_out)


@handled
def save(json_out: JsonOption = False) -> None:
    """The vendor's `save`: deploy without publishing."""
    _deploy(False, json_out)


@handled
def publish(json_out: JsonOption = False) -> None:
    """The vendor's `publish`: deploy (if anything changed) and publish."""
    _deploy(True, json_out)


def _requirements(project_root: Path, code_dir: Path) -> Path:
    return code_dir / "requirements.txt"


@handled
def install(package: Annotated[str, typer.Argument(help="e.g. requests==2.32.3")],
            json_out: JsonOption = False) -> None:
    """Add a line to requirements.txt (installed by `run` and by the server)."""
    from batchyard.cli import project as projects
    from batchyard.domain.requirements import parse_requirements
    from batchyard.errors import InvalidCode

    project = projects.load()
    try:
        parse_requirements(package)
    except InvalidCode as exc:
        fail(USAGE, f"{package!r}: {exc.message}")
    path = _requirements(project.root, project.code_dir)
    lines = _without(path, package)
    lines.append(package)
    path.write_text("\n".join(lines) + "\n")
    (ui.emit_json({"requirements": str(path), "added": package}) if json_out
     else ui.say(f"{path}: {package} added"))


@handled
def uninstall(package: Annotated[str, typer.Argument(help="The package's name.")],
              json_out: JsonOption = False) -> None:
    """Remove a package's line from requirements.txt."""
    from batchyard.cli import project as projects

    project = projects.load()
    path = _requirements(project.root, project.code_dir)
    before = path.read_text().splitlines() if path.exists() else []
    lines = _without(path, package)
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    removed = len(before) - len(lines)
    (ui.emit_json({"requirements": str(path), "removed": removed}) if json_out
     else ui.say(f"{path}: {package} {'removed' if removed else 'was not listed'}"))


def _without(path: Path, package: str) -> list[str]:
    import re

    name = re.split(r"[\s\[<>=!~;@]", package.strip(), maxsplit=1)[0].lower().replace("_", "-")
    lines = path.read_text().splitlines() if path.exists() else []
    return [line for line in lines
            if re.split(r"[\s\[<>=!~;@]", line.strip(), maxsplit=1)[0].lower()
            .replace("_", "-") != name or not name]
