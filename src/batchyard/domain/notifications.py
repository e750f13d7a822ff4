"""What notifications say and to whom: e-mail audiences, summaries, webhook bodies.

Pure rules, no I/O: the outbox (services/notifications.py) stores what these
functions need, the delivery loop composes and sends. Composition happens at send
time from stored facts, so a retry sends the same bytes as the first try.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from batchyard.domain.jobs import Notify

SUBJECT_LIMIT = 255
# SDK e-mails per execution, across its retries (SPEC §5).
EMAILS_PER_EXECUTION = 3
LOG_TAIL_LINES = 20
LOG_TAIL_LINE_CHARS = 500
SIGNATURE_HEADER = "X-Batchyard-Signature"
EVENT_HEADER = "X-Batchyard-Event"
DELIVERY_HEADER = "X-Batchyard-Delivery"


class Audience(StrEnum):
    """Which of the job's ``notify`` lists an e-mail goes to."""

    FAILURE = "failure"
    SUCCESS = "success"
    BOTH = "both"


# The vendor's SDK passes a free-form ``type``; old jobs use level-like words
# ("error", "info") as often as outcome words ("failure", "success").
_FAILURE_TYPES = frozenset({"failure", "failed", "fail", "error", "fatal", "critical",
                            "alert", "warn", "warning"})
_SUCCESS_TYPES = frozenset({"success", "succeeded", "ok", "info", "report"})

# Executions that ran and ended: summaries and webhooks are about these. Blocked
# and missed executions never ran (the invoker got the reason at once, the
# scheduler records misses in bulk), so they notify nobody.
_FAILURE_STATUSES = frozenset({"failed", "timed_out"})
_SUCCESS_STATUSES = frozenset({"succeeded"})
WEBHOOK_STATUSES = frozenset({"succeeded", "failed", "timed_out", "cancelled"})


def audience_of(email_type: object) -> Audience:
    """An SDK e-mail's audience from its ``type``: failure words, success words, else both."""
    word = str(email_type).strip().lower()
    if word in _FAILURE_TYPES:
        return Audience.FAILURE
    if word in _SUCCESS_TYPES:
        return Audience.SUCCESS
    return Audience.BOTH


def recipients(audience: Audience, notify: Notify) -> tuple[str, ...]:
    """The addresses of ``audience``, each once, in the order the settings list them."""
    lists: list[Iterable[str]] = []
    if audience in (Audience.FAILURE, Audience.BOTH):
        lists.append(notify.on_failure)
    if audience in (Audience.SUCCESS, Audience.BOTH):
        lists.append(notify.on_success)
    seen: dict[str, None] = {}
    for addresses in lists:
        for address in addresses:
            seen.setdefault(address.lower(), None)
    return tuple(seen)


def summary_audience(status: str) -> Audience | None:
    """Who hears of an execution that ended in ``status`` (None: nobody by e-mail).

    A cancel is a person's own act: it reaches webhooks, not inboxes.
    """
    if status in _FAILURE_STATUSES:
        return Audience.FAILURE
    if status in _SUCCESS_STATUSES:
        return Audience.SUCCESS
    return None


def header_text(value: str, limit: int = SUBJECT_LIMIT) -> str:
    """One header line: line breaks would let job code forge headers, so they become spaces."""
    return " ".join(value.splitlines())[:limit]


@dataclass(frozen=True)
class ExecutionSummary:
    """The facts of an ended execution, as stored in the outbox (times as ISO text)."""

    execution_id: str
    job_id: str
    job_name: str
    status: str
    reason: str | None
    message: str | None
    source: str
    attempts: int
    created_at: str
    started_at: str | None
    ended_at: str | None
    runtime_seconds: float
    log_tail: tuple[str, ...] = ()
    # The last attempt's CPU time and peak memory (None: not measured; older outbox rows).
    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["log_tail"] = list(self.log_tail)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExecutionSummary:
        values: dict[str, Any] = {name: data.get(name) for name in cls.__dataclass_fields__}
        values["log_tail"] = tuple(str(line) for line in data.get("log_tail") or ())
        return cls(**values)


def log_tail(messages: Iterable[str]) -> tuple[str, ...]:
    """The last lines worth mailing: one line each, none longer than a screen."""
    lines = [" ".join(str(message).splitlines())[:LOG_TAIL_LINE_CHARS] for message in messages]
    return tuple(lines[-LOG_TAIL_LINES:])


def execution_link(public_url: str, execution_id: str) -> str:
    return f"{public_url.rstrip('/')}/api/v1/executions/{execution_id}"


def summary_subject(summary: ExecutionSummary) -> str:
    reason = f" ({summary.reason})" if summary.reason and summary.reason != "error" else ""
    return header_text(f"[batchyard] {summary.job_name}: {summary.status}{reason}")


def summary_text(summary: ExecutionSummary, public_url: str) -> str:
    """The plain-text body of a summary e-mail."""
    lines = [
        f"Job:        {summary.job_name}",
        f"Execution:  {summary.execution_id}",
        f"Status:     {summary.status}",
        f"Reason:     {summary.reason or '-'}",
    ]
    if summary.message:
        lines.append(f"Error:      {summary.message}")
    lines += [
        f"Source:     {summary.source}",
        f"Attempts:   {summary.attempts}",
        f"Started:    {summary.started_at or '-'}",
        f"Ended:      {summary.ended_at or '-'}",
        f"Run time:   {summary.runtime_seconds:.3f} s",
        *resource_lines(summary),
        f"Details:    {execution_link(public_url, summary.execution_id)}",
        "",
    ]
    if summary.log_tail:
        lines.append(f"Last {len(summary.log_tail)} log lines:")
        lines += [f"  {line}" for line in summary.log_tail]
    else:
        lines.append("The execution wrote no log lines.")
    return "\n".join(lines) + "\n"


def resource_lines(summary: ExecutionSummary) -> list[str]:
    """The last attempt's CPU time and peak memory, when they were measured."""
    lines = []
    if summary.cpu_seconds is not None:
        lines.append(f"CPU time:   {summary.cpu_seconds:.3f} s (last attempt)")
    if summary.peak_memory_bytes is not None:
        lines.append(f"Peak memory: {summary.peak_memory_bytes / (1024 * 1024):.1f} MiB "
                     "(last attempt, largest process)")
    return lines


def webhook_event(status: str) -> str:
    return f"execution.{status}"


def webhook_body(summary: ExecutionSummary, delivery_id: str, public_url: str) -> bytes:
    """The JSON a webhook receives: stable key order, so every retry sends the same bytes."""
    # The webhook's body is a published contract: the resource figures stay in the e-mail.
    execution = {key: value for key, value in summary.as_dict().items()
                 if key not in ("log_tail", "cpu_seconds", "peak_memory_bytes")}
    execution["id"] = execution.pop("execution_id")
    execution["url"] = execution_link(public_url, summary.execution_id)
    payload = {"event": webhook_event(summary.status), "delivery_id": delivery_id,
               "execution": execution}
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the raw body, as receivers recompute it."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def retry_delay(tries: int, base_seconds: float, cap_seconds: float = 3600.0) -> float:
    """Exponential backoff after the ``tries``-th failed try: base, 2 base, 4 base, ..."""
    return float(min(cap_seconds, base_seconds * 2 ** max(0, tries - 1)))
