"""Jobs: names, statuses, settings and variables, validated against the plan."""

from __future__ import annotations

import itertools
import keyword
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from batchyard.domain.alerts import Alerts, alerts_from_dict, validate_alerts
from batchyard.domain.plans import Plan
from batchyard.errors import Conflict, InvalidInput, NotPublishable

# \Z, not $: "$" also matches before a trailing newline ("abc\n", "a@b.c\n").
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _-]*\Z")
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+\Z")
MAX_DESCRIPTION = 1000
MAX_VARIABLES = 200
MAX_VARIABLE_VALUE = 64 * 1024
MAX_WEBHOOK_URL = 2000
MAX_WEBHOOK_SECRET = 256


class JobStatus(StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"
    UNPUBLISHED = "unpublished"


class Concurrency(StrEnum):
    FORBID = "forbid"
    ALLOW = "allow"


def validate_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidInput("name must be a string", field="name")
    if not 3 <= len(name) <= 100:
        raise InvalidInput("name must be 3 to 100 characters long", field="name")
    if not NAME_PATTERN.match(name):
        raise InvalidInput(
            "name may hold letters, digits, spaces, '_' and '-', and must start "
            "with a letter or digit", field="name")
    return name


def validate_description(description: object) -> str:
    if not isinstance(description, str):
        raise InvalidInput("description must be a string", field="description")
    if len(description) > MAX_DESCRIPTION:
        raise InvalidInput(f"description must be at most {MAX_DESCRIPTION} characters",
                           field="description")
    return description


def next_status_on_publish(status: JobStatus, has_code: bool, has_schedule: bool) -> JobStatus:
    if not has_code:
        raise NotPublishable("Upload a code version before publishing.")
    if not has_schedule:
        raise NotPublishable(
            'Set a schedule (or {"type": "none"} for ad hoc runs) before publishing.')
    return JobStatus.PUBLISHED


def next_status_on_unpublish(status: JobStatus) -> JobStatus:
    if status is not JobStatus.PUBLISHED:
        raise Conflict(f"Only a published job can be unpublished; this one is {status.value}.")
    return JobStatus.UNPUBLISHED


@dataclass(frozen=True)
class Notify:
    on_failure: tuple[str, ...] = ()
    on_success: tuple[str, ...] = ()


@dataclass(frozen=True)
class Webhook:
    url: str
    # The sealed (encrypted) secret, never the secret itself: settings are stored,
    # snapshotted into revisions and audited as they are.
    secret: str | None = None


@dataclass(frozen=True)
class JobSettings:
    timeout_minutes: float = 60
    retries: int = 0
    concurrency: Concurrency = Concurrency.FORBID
    misfire_grace_minutes: float = 60
    notify: Notify = field(default_factory=Notify)
    webhook: Webhook | None = None
    # Quiet-schedule and duration alerts (domain/alerts.py); None: none.
    alerts: Alerts | None = None
    # Labels a worker must advertise (all of them) to run this job, e.g. ("gpu",).
    worker_labels: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["concurrency"] = self.concurrency.value
        data["worker_labels"] = list(self.worker_labels)
        data["notify"] = {"on_failure": list(self.notify.on_failure),
                          "on_success": list(self.notify.on_success)}
        data["webhook"] = None if self.webhook is None else {
            "url": self.webhook.url, "secret": self.webhook.secret}
        data["alerts"] = None if self.alerts is None else self.alerts.as_dict()
        return data

    def public_dict(self) -> dict[str, Any]:
        """What users may see (answers, audit): the webhook's secret only as ``has_secret``."""
        data = self.as_dict()
        if self.webhook is not None:
            data["webhook"] = {"url": self.webhook.url,
                               "has_secret": self.webhook.secret is not None}
        return data

    @property
    def timeout_seconds(self) -> float:
        return self.timeout_minutes * 60


def settings_from_dict(data: dict[str, Any] | None) -> JobSettings:
    data = dict(data or {})
    notify = data.pop("notify", None) or {}
    webhook = data.pop("webhook", None)
    alerts = alerts_from_dict(data.pop("alerts", None))
    known = {k: v for k, v in data.items()
             if k in {"timeout_minutes", "retries", "concurrency", "misfire_grace_minutes",
                      "worker_labels"}}
    if "worker_labels" in known:
        known["worker_labels"] = tuple(known["worker_labels"])
    if "concurrency" in known:
        known["concurrency"] = Concurrency(known["concurrency"])
    return replace(JobSettings(), **known,
                   notify=Notify(tuple(notify.get("on_failure", ())),
                                 tuple(notify.get("on_success", ()))),
                   webhook=Webhook(str(webhook["url"]), webhook.get("secret"))
                   if isinstance(webhook, dict) and webhook.get("url") else None,
                   alerts=alerts)


MAX_WORKER_LABELS = 6
WORKER_LABEL = re.compile(r"^[a-z0-9][a-z0-9._=-]{0,39}$")


def validate_worker_labels(value: object, name: str = "worker_labels") -> tuple[str, ...]:
    """Labels such as ``gpu`` or ``region=eu``: sorted, without repeats."""
    if not isinstance(value, list) or len(value) > MAX_WORKER_LABELS:
        raise InvalidInput(f"{name} must be a list of at most {MAX_WORKER_LABELS} labels",
                           field=name)
    for item in value:
        if not isinstance(item, str) or not WORKER_LABEL.match(item):
            raise InvalidInput(f"{name}: {item!r} is not a label (lower-case letters, digits "
                               "and . _ = -, at most 40)", field=name)
    return tuple(sorted(set(value)))


def label_sets(labels: tuple[str, ...]) -> list[str]:
    """Every set of labels a worker with ``labels`` satisfies, each as the sorted,
    comma-joined text an execution stores ('' for none): a job runs on a worker when its
    labels are one of them."""
    chosen = sorted(set(labels))[:MAX_WORKER_LABELS]
    return [",".join(combo) for size in range(len(chosen) + 1)
            for combo in itertools.combinations(chosen, size)]


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{name} must be a number", field=name)
    return float(value)


def _emails(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > 20:
        raise InvalidInput(f"{name} must be a list of at most 20 e-mail addresses", field=name)
    for item in value:
        if not isinstance(item, str) or len(item) > 254 or not EMAIL_PATTERN.match(item):
            raise InvalidInput(f"{name}: {item!r} is not an e-mail address", field=name)
    return tuple(value)


def validate_webhook_url(value: object) -> str:
    """An absolute http(s) URL without credentials (those belong in the secret)."""
    field_name = "webhook.url"
    if not isinstance(value, str) or not value or len(value) > MAX_WEBHOOK_URL:
        raise InvalidInput(f"{field_name} must be a URL of at most {MAX_WEBHOOK_URL} characters",
                           field=field_name)
    if any(char.isspace() for char in value):
        raise InvalidInput(f"{field_name} must not contain spaces", field=field_name)
    try:
        parts = urlsplit(value)
        if parts.port == 0:  # reading .port also checks it is a number below 65536
            raise ValueError("port 0")
    except ValueError as exc:
        raise InvalidInput(f"{field_name} is not a valid URL: {exc}", field=field_name) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{field_name} must be an http:// or https:// URL with a host",
                           field=field_name)
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(f"{field_name} must not hold credentials; use webhook.secret to "
                           "authenticate deliveries", field=field_name)
    return value


def _refuse_to_seal(_secret: str) -> str:
    raise InvalidInput("webhook secrets cannot be stored here", field="webhook.secret")


def _webhook(value: object, current: Webhook | None, seal: Callable[[str], str]) -> Webhook:
    if not isinstance(value, dict):
        raise InvalidInput("webhook must be an object {url, secret?} or null", field="webhook")
    unknown = set(value) - {"url", "secret"}
    if unknown:
        raise InvalidInput(f"webhook: unknown field(s) {sorted(unknown)}", field="webhook")
    url = validate_webhook_url(value.get("url"))
    if "secret" not in value:
        # Write-only: a client that never saw the secret can change the URL and keep it.
        return Webhook(url, current.secret if current is not None else None)
    secret = value["secret"]
    if secret is None or secret == "":
        return Webhook(url, None)
    if not isinstance(secret, str) or len(secret) > MAX_WEBHOOK_SECRET:
        raise InvalidInput(f"webhook.secret must be a string of at most {MAX_WEBHOOK_SECRET} "
                           "characters", field="webhook.secret")
    return Webhook(url, seal(secret))


def apply_settings_changes(current: JobSettings, changes: dict[str, Any],
                           plan: Plan, seal: Callable[[str], str] = _refuse_to_seal
                           ) -> JobSettings:
    """Validate a partial settings change against the plan and return the new settings.

    ``seal`` encrypts a new webhook secret (the domain holds no key). An explicit
    ``webhook: null`` removes the webhook; other null values leave a setting as it is.
    """
    updates: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "webhook":
            updates[key] = None if value is None else _webhook(value, current.webhook, seal)
            continue
        if key == "alerts":  # null removes them, like the webhook
            updates[key] = validate_alerts(value)
            continue
        if value is None:
            continue
        if key == "timeout_minutes":
            minutes = _number(value, key)
            if not 0 < minutes <= plan.max_execution_timeout_minutes:
                raise InvalidInput(
                    f"timeout_minutes must be more than 0 and at most "
                    f"{plan.max_execution_timeout_minutes:g} (the plan's maximum)", field=key)
            updates[key] = minutes
        elif key == "retries":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput("retries must be a whole number", field=key)
            if not 0 <= value <= plan.max_retries:
                raise InvalidInput(f"retries must be between 0 and {plan.max_retries} "
                                   "(the plan's maximum)", field=key)
            updates[key] = value
        elif key == "concurrency":
            if value not in ("forbid", "allow"):
                raise InvalidInput("concurrency must be 'forbid' or 'allow'", field=key)
            updates[key] = Concurrency(value)
        elif key == "misfire_grace_minutes":
            minutes = _number(value, key)
            if not 0 <= minutes <= 7 * 24 * 60:
                raise InvalidInput("misfire_grace_minutes must be between 0 and 10080",
                                   field=key)
            updates[key] = minutes
        elif key == "worker_labels":
            updates[key] = validate_worker_labels(value, key)
        elif key == "notify":
            if not isinstance(value, dict):
                raise InvalidInput("notify must be an object", field=key)
            unknown = set(value) - {"on_failure", "on_success"}
            if unknown:
                raise InvalidInput(f"notify: unknown field(s) {sorted(unknown)}", field=key)
            updates[key] = Notify(
                _emails(value.get("on_failure", list(current.notify.on_failure)),
                        "notify.on_failure"),
                _emails(value.get("on_success", list(current.notify.on_success)),
                        "notify.on_success"))
        else:
            raise InvalidInput(f"Unknown setting {key!r}", field=key)
    return replace(current, **updates)


@dataclass(frozen=True)
class Variable:
    key: str
    value: str
    secret: bool = False


def validate_variables(items: object) -> tuple[Variable, ...]:
    if not isinstance(items, list):
        raise InvalidInput("variables must be a list", field="variables")
    if len(items) > MAX_VARIABLES:
        raise InvalidInput(f"at most {MAX_VARIABLES} variables", field="variables")
    seen: set[str] = set()
    result = []
    for index, item in enumerate(items):
        where = f"variables[{index}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be an object", field=where)
        key, value, secret = item.get("key"), item.get("value"), item.get("secret", False)
        if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key):
            raise InvalidInput(f"{where}.key must be a Python identifier, got {key!r}",
                               field=f"{where}.key")
        if key.startswith("_"):
            raise InvalidInput(f"{where}.key must not start with '_'", field=f"{where}.key")
        if key in seen:
            raise InvalidInput(f"variable {key!r} is given twice", field=f"{where}.key")
        if not isinstance(value, str):
            raise InvalidInput(f"{where}.value must be a string", field=f"{where}.value")
        if len(value) > MAX_VARIABLE_VALUE:
            raise InvalidInput(f"{where}.value is longer than {MAX_VARIABLE_VALUE} characters",
                               field=f"{where}.value")
        if not isinstance(secret, bool):
            raise InvalidInput(f"{where}.secret must be true or false", field=f"{where}.secret")
        unknown = set(item) - {"key", "value", "secret"}
        if unknown:
            raise InvalidInput(f"{where}: unknown field(s) {sorted(unknown)}", field=where)
        seen.add(key)
        result.append(Variable(key, value, secret))
    return tuple(result)
