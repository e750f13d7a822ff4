"""A job project on disk: ``batchyard.toml`` (batchyard's layout) or the vendor's
``lsbatch`` layout (``src/main.py``, ``batch_details.json``, ``settings.json``), read
into one ``Project`` that every kit command uses.

Every mistake is reported with its file and line before anything is uploaded.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchyard.cli.exits import USAGE, fail

CONFIG = "batchyard.toml"
SECRETS = ".secrets.toml"
LSBATCH_DETAILS = "batch_details.json"
LSBATCH_SETTINGS = "settings.json"
SETTING_KEYS = {"timeout_minutes": (int, float), "retries": (int,),
                "concurrency": (str,), "misfire_grace_minutes": (int, float),
                "notify": (dict,)}
_JOB_KEYS = {"name", "description", "code"}
_TOP_KEYS = {"job", "settings", "schedule", "variables"}


@dataclass(frozen=True)
class LocalVariable:
    key: str
    value: str
    secret: bool


@dataclass(frozen=True)
class Project:
    root: Path
    kind: str  # "batchyard" or "lsbatch"
    code_dir: Path
    name: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] | None = None
    variables: tuple[LocalVariable, ...] = ()
    # Secret variables whose value is nowhere (environment, .secrets.toml): run and deploy
    # refuse until it is given.
    missing_secrets: tuple[str, ...] = ()
    # The job id written back by deploy (lsbatch: batch_details.json "Id").
    job_id: str | None = None

    @property
    def event_path(self) -> Path:
        return self.root / "event.json"

    @property
    def state_dir(self) -> Path:
        return self.root / ".batchyard"

    def require_secrets(self) -> None:
        if self.missing_secrets:
            names = ", ".join(self.missing_secrets)
            fail(USAGE, f"{self.root / CONFIG}: no value for the secret variable(s) {names}: "
                        f"set them in the environment or in {SECRETS}")


def find_root(start: Path | None = None) -> Path:
    """The project folder: the nearest folder (this one or above) holding batchyard.toml
    or the vendor's batch_details.json / src/main.py."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG).is_file() or (folder / LSBATCH_DETAILS).is_file() \
                or (folder / "src" / "main.py").is_file():
            return folder
    fail(USAGE, f"{here}: not a batchyard project (no {CONFIG}, {LSBATCH_DETAILS} or "
                "src/main.py here or above); create one with `batchyard init NAME`")


def load(root: Path | None = None) -> Project:
    root = root or find_root()
    if (root / CONFIG).is_file():
        return _load_batchyard(root)
    return _load_lsbatch(root)


def _line_of(text: str, key: str, section: str | None = None) -> int:
    """The line that sets ``key`` (inside ``[section]`` when given): where to point."""
    current: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"\[\s*([^\]]+?)\s*\]", stripped)
        if header:
            current = header.group(1)
            if section is not None and key == "" and current == section:
                return number
            continue
        if (section is None or current == section) and re.match(
                rf'["\']?{re.escape(key)}["\']?\s*=', stripped):
            return number
    return 1


def _bad(path: Path, line: int, message: str) -> None:
    fail(USAGE, f"{path}:{line}: {message}")


def _load_batchyard(root: Path) -> Project:
    path = root / CONFIG
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        fail(USAGE, f"{path}:{line.group(1) if line else 1}: {exc}")
    for key in data:
        if key not in _TOP_KEYS:
            _bad(path, _line_of(text, "", key) if isinstance(data[key], dict)
                 else _line_of(text, key), f"unknown table or key {key!r} (known: "
                 f"{', '.join(sorted(_TOP_KEYS))})")
    job = data.get("job")
    if not isinstance(job, dict):
        _bad(path, 1, "a [job] table with the job's name is required")
        raise AssertionError
    for key in job:
        if key not in _JOB_KEYS:
            _bad(path, _line_of(text, key, "job"), f"unknown key {key!r} in [job] "
                 f"(known: {', '.join(sorted(_JOB_KEYS))})")
    name = job.get("name")
    from batchyard.domain.jobs import validate_description, validate_name
    from batchyard.errors import InvalidInput

    try:
        validate_name(name)
        validate_description(job.get("description", ""))
    except InvalidInput as exc:
        field_name = exc.extra.get("field", "name")
        _bad(path, _line_of(text, str(field_name), "job"), exc.message)
    code = job.get("code", ".")
    if not isinstance(code, str) or Path(code).is_absolute() or ".." in Path(code).parts:
        _bad(path, _line_of(text, "code", "job"), "code must be a folder inside the project")
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        _bad(path, _line_of(text, "settings"), "settings must be a table")
    for key, value in settings.items():
        kinds = SETTING_KEYS.get(key)
        if kinds is None:
            _bad(path, _line_of(text, key, "settings"), f"unknown setting {key!r} (known: "
                 f"{', '.join(sorted(SETTING_KEYS))})")
        elif not isinstance(value, kinds) or isinstance(value, bool):
            _bad(path, _line_of(text, key, "settings"),
                 f"{key} must be a {' or '.join(k.__name__ for k in kinds)}, "
                 f"not {type(value).__name__}")
    schedule = data.get("schedule")
    if schedule is not None:
        from batchyard.domain.schedules import validate_schedule

        try:
            validate_schedule(schedule, "UTC")
        except InvalidInput as exc:
            field_name = str(exc.extra.get("field") or "type").split(".")[-1]
            _bad(path, _line_of(text, field_name, "schedule"), f"schedule: {exc.message}")
    variables, missing = _variables(root, path, text, data.get("variables", {}))
    return Project(root, "batchyard", (root / code).resolve(), str(name),
                   str(job.get("description", "")), dict(settings), schedule,
                   tuple(variables), tuple(missing), _stored_job_id(root))


def _variables(root: Path, path: Path, text: str,
               table: object) -> tuple[list[LocalVariable], list[str]]:
    if not isinstance(table, dict):
        _bad(path, _line_of(text, "variables"), "variables must be a table")
        raise AssertionError
    secrets = _read_secrets(root)
    found: list[LocalVariable] = []
    missing: list[str] = []
    for key, value in table.items():
        line = _line_of(text, key, "variables")
        if not key.isidentifier():
            _bad(path, line, f"variable name {key!r} must be a Python identifier")
        if isinstance(value, dict):
            if value.get("secret") is not True or set(value) - {"secret", "env"}:
                _bad(path, line, f"{key}: a table value must be {{ secret = true }} "
                                 "(optionally with env = \"NAME\")")
            env = str(value.get("env") or key)
            plain = os.environ.get(env, secrets.get(key))
            if plain is None:
                missing.append(key)
                continue
            found.append(LocalVariable(key, str(plain), True))
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            found.append(LocalVariable(key, str(value), False))
        else:
            _bad(path, line, f"{key}: a variable's value must be text or a number, or "
                             "{ secret = true }")
    return found, missing


def _read_secrets(root: Path) -> dict[str, str]:
    path = root / SECRETS
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        fail(USAGE, f"{path}: {exc}")
    return {str(k): str(v) for k, v in data.items()}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        line = getattr(exc, "lineno", 1)
        fail(USAGE, f"{path}:{line}: not valid JSON: {exc}")


def _load_lsbatch(root: Path) -> Project:
    details = _read_json(root / LSBATCH_DETAILS) or {}
    if not isinstance(details, dict):
        fail(USAGE, f"{root / LSBATCH_DETAILS}:1: must hold a JSON object")
    name = str(details.get("Name") or "").strip() or root.name
    from batchyard.domain.jobs import validate_name
    from batchyard.errors import InvalidInput

    try:
        validate_name(name)
    except InvalidInput as exc:
        fail(USAGE, f"{root / LSBATCH_DETAILS}:1: Name {name!r}: {exc.message}")
    settings = _read_json(root / LSBATCH_SETTINGS) or {}
    if not isinstance(settings, dict):
        fail(USAGE, f"{root / LSBATCH_SETTINGS}:1: must hold a JSON object of key/values")
    variables = tuple(LocalVariable(str(k), v if isinstance(v, str) else json.dumps(v), False)
                      for k, v in settings.items())
    job_id = str(details.get("Id") or "").strip() or None
    return Project(root, "lsbatch", root / "src", name, str(details.get("Description") or ""),
                   {}, None, variables, (), job_id)


def _stored_job_id(root: Path) -> str | None:
    state = _read_json(root / ".batchyard" / "state.json")
    return str(state["job_id"]) if isinstance(state, dict) and state.get("job_id") else None


def write_lsbatch_id(project: Project, job_id: str) -> None:
    """What the vendor's kit does: the job id goes back into batch_details.json."""
    path = project.root / LSBATCH_DETAILS
    details = _read_json(path) or {}
    if details.get("Id") != job_id:
        details["Id"] = job_id
        path.write_text(json.dumps(details, indent=4) + "\n", encoding="utf-8")


def read_event(project: Project, given: str | None) -> dict[str, Any]:
    """The event main(event) gets locally: --event FILE, else event.json, else empty."""
    path = Path(given) if given else project.event_path
    data = _read_json(path) if path.exists() or given else None
    if given and data is None:
        fail(USAGE, f"{path}: no such file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        fail(USAGE, f"{path}:1: the event must be a JSON object")
    return data
