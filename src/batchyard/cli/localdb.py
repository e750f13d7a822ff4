"""``batchyard run --db main=URL``: the job's queries on the developer's own database,
through the server's broker (runtime/channel/dbbroker.py), so values, limits, timeouts and errors
are the platform's. Imported only when ``--db`` is given: the broker loads SQLAlchemy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from batchyard.domain.attempts import ClaimedAttempt
from batchyard.runtime.channel.dbbroker import DatabaseBroker
from batchyard.runtime.channel.dbrun import QueryLimits
from batchyard.runtime.channel.dispatcher import Reply
from batchyard.services.context import Platform

LOCAL_QUERY_LIMITS = QueryLimits(statement_timeout_seconds=300.0, connect_timeout_seconds=10.0,
                                 max_rows=100_000, max_reply_bytes=32 * 1024 * 1024)


class LocalDatabases(DatabaseBroker):
    """The server's broker, with URLs from the command line instead of the account."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        # No platform: the URLs are the developer's own, given to this process.
        super().__init__(cast(Platform, None), LOCAL_QUERY_LIMITS)
        self._urls = dict(urls)

    def __call__(self, attempt: ClaimedAttempt, record: Mapping[str, Any]) -> Reply:
        target, sql, multi = record.get("target"), record.get("sql"), record.get("multi")
        if not isinstance(sql, str) or not isinstance(multi, bool):
            return {"ok": False, "error": "A query needs SQL text and multi true or false."}
        url = self._urls.get(str(target))
        if url is None:
            return {"ok": False, "error": f"No {target} database for this local run: give "
                                          f"one with --db {target}=URL"}
        return self._query(attempt, str(target), url, sql, multi)
