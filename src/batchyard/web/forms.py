"""Turning the console's form fields into the services' inputs."""

from __future__ import annotations

import re
from typing import Any

from starlette.datastructures import FormData

from batchyard.errors import InvalidInput


def text(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else default


def schedule(form: FormData | Any) -> dict[str, Any]:
    kind = text(form, "type", "none")
    data: dict[str, Any] = {"type": kind}
    zone = text(form, "timezone")
    if zone:
        data["timezone"] = zone
    if kind in ("daily", "weekly", "monthly"):
        data["times"] = [t for t in re.split(r"[\s,]+", text(form, "times")) if t]
    if kind == "weekly":
        data["days_of_week"] = [d for d in form.getlist("days_of_week") if isinstance(d, str)]
    if kind == "monthly":
        days: list[Any] = []
        for part in re.split(r"[\s,]+", text(form, "days_of_month")):
            if part:
                days.append(int(part) if part.isdigit() else part)
        data["days_of_month"] = days
    if kind == "cron":
        data["cron"] = text(form, "cron")
    return data


def settings(form: FormData) -> dict[str, Any]:
    def number(name: str) -> float:
        raw = text(form, name)
        try:
            return float(raw) if "." in raw else int(raw)
        except ValueError as exc:
            raise InvalidInput(f"{name} must be a number", field=name) from exc

    def emails(name: str) -> list[str]:
        return [e for e in re.split(r"[\s,]+", text(form, name)) if e]

    return {"timeout_minutes": number("timeout_minutes"), "retries": number("retries"),
            "concurrency": text(form, "concurrency", "forbid"),
            "misfire_grace_minutes": number("misfire_grace_minutes"),
            "notify": {"on_failure": emails("on_failure"), "on_success": emails("on_success")}}


def variables(form: FormData) -> list[dict[str, Any]]:
    """Rows ``key.N``, ``value.N``, ``secret.N``, ``delete.N``; a secret row with an empty
    value keeps its stored value (None)."""
    items: list[dict[str, Any]] = []
    indexes = sorted({int(name.split(".", 1)[1]) for name in form
                      if name.startswith("key.") and name.split(".", 1)[1].isdigit()})
    for index in indexes:
        key = text(form, f"key.{index}")
        if not key or form.get(f"delete.{index}") == "on":
            continue
        secret = form.get(f"secret.{index}") == "on"
        value = form.get(f"value.{index}")
        value = value if isinstance(value, str) else ""
        was_secret = form.get(f"was_secret.{index}") == "on"
        items.append({"key": key, "secret": secret,
                      "value": None if secret and was_secret and value == "" else value})
    return items
