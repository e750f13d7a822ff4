"""What ``batchyard run`` answers to a job's channel requests instead of the server.

E-mails are printed, not sent. ``LS.db`` queries go to a URL given with ``--db``
(localdb.py), else to the project's ``query.json`` answers (the vendor's kit: exact SQL
text → CSV file), else they are refused as for an account without database access.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchyard.runtime.channel.dispatcher import LOG_NOTE, Reply

if TYPE_CHECKING:
    from batchyard.domain.attempts import ClaimedAttempt

QUERY_ANSWERS = "query.json"


class PrintedEmail:
    """The "email" handler: shows the message the server would send."""

    def __init__(self, show: Callable[[str], None], notify: Mapping[str, Any]) -> None:
        self._show = show
        self._notify = notify

    def __call__(self, attempt: ClaimedAttempt, record: Mapping[str, Any]) -> Reply:
        kind = str(record.get("email_type", ""))
        failure = kind.lower() in {"failure", "failed", "error", "fatal", "critical", "alert",
                                   "warn", "warning"}
        success = kind.lower() in {"success", "succeeded", "ok", "info", "report"}
        lists = ["on_failure"] if failure else ["on_success"] if success \
            else ["on_failure", "on_success"]
        recipients = sorted({address for name in lists
                             for address in self._notify.get(name, []) or []})
        attachments = record.get("attachments") or []
        self._show(f"e-mail (not sent: local run) [{kind}] to "
                   f"{', '.join(recipients) or '(the ' + ' and '.join(lists) + ' list)'}\n"
                   f"  subject: {record.get('subject', '')}\n"
                   + "".join(f"  | {line}\n" for line in str(record.get("body", ""))
                             .splitlines())
                   + (f"  attachments: {', '.join(map(str, attachments))}\n"
                      if attachments else ""))
        return {"ok": True, "recipients": recipients}


class QueryAnswers:
    """The vendor kit's stand-in database: ``query.json`` maps SQL text to a CSV file."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._path = root / QUERY_ANSWERS

    def __call__(self, attempt: ClaimedAttempt, record: Mapping[str, Any]) -> Reply:
        sql = str(record.get("sql", ""))
        try:
            answers = json.loads(self._path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:
            return {"ok": False, "error": f"{self._path}: {exc}"}
        name = answers.get(sql) if isinstance(answers, dict) else None
        if name is None:
            known = "; ".join(list(answers)[:5]) if isinstance(answers, dict) else ""
            return {"ok": False, "error": f"{QUERY_ANSWERS} has no answer for this exact "
                                          f"query: {sql!r} (it knows: {known or 'none'})"}
        try:
            rows = _read_csv(self._root / str(name))
        except OSError as exc:
            return {"ok": False, "error": f"{QUERY_ANSWERS}: {name}: {exc}"}
        note = (f"query on {record.get('target')}: {len(rows)} rows from {name} "
                f"({QUERY_ANSWERS})", "info")
        if record.get("multi"):
            return {"ok": True, "results": [rows], LOG_NOTE: note}
        return {"ok": True, "rows": rows, LOG_NOTE: note}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return [dict(row) for row in csv.DictReader(handle)]
