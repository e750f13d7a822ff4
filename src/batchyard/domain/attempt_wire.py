"""The attempt values as JSON, for the remote worker protocol (/api/v1/worker/*).

A claim travels without its code: the worker fetches the zip by its SHA-256 once and
keeps it. Artifacts travel base64-encoded inside the finish (bounded by the server).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict
from dataclasses import fields as dataclass_fields
from datetime import datetime
from typing import Any

from batchyard.domain.attempts import (
    AttemptResult,
    ClaimedAttempt,
    LogBatch,
    LogRecord,
    OutputFile,
)
from batchyard.domain.executions import AttemptOutcome


def code_digest(code: bytes) -> str:
    return hashlib.sha256(code).hexdigest()


def claim_to_wire(attempt: ClaimedAttempt) -> dict[str, Any]:
    data = asdict(attempt)
    del data["code"]
    data["secret_values"] = list(attempt.secret_values)
    data["code_sha256"] = code_digest(attempt.code)
    return data


_CLAIM_FIELDS = frozenset(f.name for f in dataclass_fields(ClaimedAttempt))


def claim_from_wire(data: dict[str, Any], code: bytes) -> ClaimedAttempt:
    # Fields this version does not know (a newer control plane's hints) are left out: a
    # claim that could not be decoded would leave its attempt to lapse into worker_lost.
    fields = {k: v for k, v in data.items() if k in _CLAIM_FIELDS and k != "code"}
    fields["secret_values"] = tuple(fields["secret_values"])
    return ClaimedAttempt(code=code, **fields)


def records_to_wire(records: tuple[LogRecord, ...] | list[LogRecord]) -> list[dict[str, Any]]:
    return [{"at": r.at.isoformat(), "stream": r.stream, "message": r.message,
             "level": r.level, "data": r.data} for r in records]


def records_from_wire(items: list[dict[str, Any]]) -> tuple[LogRecord, ...]:
    return tuple(LogRecord(datetime.fromisoformat(i["at"]), str(i["stream"]),
                           str(i["message"]), i.get("level"), i.get("data")) for i in items)


def batch_to_wire(batch: LogBatch) -> dict[str, Any]:
    return {"records": records_to_wire(batch.records), "first_seq": batch.first_seq,
            "used_bytes": batch.used_bytes, "truncated": batch.truncated}


def batch_from_wire(data: dict[str, Any]) -> LogBatch:
    return LogBatch(records_from_wire(data["records"]), int(data["first_seq"]),
                    int(data["used_bytes"]), bool(data["truncated"]))


def result_to_wire(result: AttemptResult) -> dict[str, Any]:
    return {"outcome": result.outcome.value, "runtime_seconds": result.runtime_seconds,
            "exit_code": result.exit_code, "error": result.error,
            "ended_at": result.ended_at.isoformat(), "final_failure": result.final_failure,
            "logs": batch_to_wire(result.logs) if result.logs is not None else None,
            "artifacts": [{"name": a.name, "sha256": a.sha256,
                           "content": base64.b64encode(a.content).decode()}
                          for a in result.artifacts]}


def result_from_wire(data: dict[str, Any]) -> AttemptResult:
    """ValueError when an artifact's content does not match its digest."""
    artifacts = []
    for item in data["artifacts"]:
        content = base64.b64decode(item["content"], validate=True)
        if hashlib.sha256(content).hexdigest() != item["sha256"]:
            raise ValueError(f"artifact {item['name']!r} does not match its sha256")
        artifacts.append(OutputFile(str(item["name"]), content, item["sha256"]))
    result = AttemptResult(
        AttemptOutcome(data["outcome"]), float(data["runtime_seconds"]), data["exit_code"],
        data["error"], datetime.fromisoformat(data["ended_at"]), tuple(artifacts),
        batch_from_wire(data["logs"]) if data["logs"] is not None else None,
        data["final_failure"])
    if result.ended_at.tzinfo is None:
        raise ValueError("ended_at must carry its time zone")
    return result
