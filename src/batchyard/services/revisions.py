"""Published revisions, read through a cache.

A revision and its code version never change once written, so every process
may keep them in memory: the hot paths (invoke, claim, finish) then skip two
queries and the code blob's transfer. The cache is bounded by bytes held.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from batchyard.domain.jobs import JobSettings, settings_from_dict
from batchyard.store.models import CodeVersion, Revision


@dataclass(frozen=True)
class PublishedRevision:
    account_id: str
    job_id: str
    number: int
    settings: JobSettings
    schedule: dict[str, Any]
    variables: tuple[dict[str, Any], ...]
    code_version: int
    code: bytes
    main_parameters: int
    requirements: str | None


class RevisionCache:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._max_bytes = max_bytes
        self._held = 0
        self._items: OrderedDict[tuple[str, str, int], PublishedRevision] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session: Session, account_id: str, job_id: str,
            number: int) -> PublishedRevision:
        key = (account_id, job_id, number)
        with self._lock:
            cached = self._items.get(key)
            if cached is not None:
                self._items.move_to_end(key)
                return cached
        return self.load(session, [key])[key]

    def load(self, session: Session, keys: list[tuple[str, str, int]]) -> \
            dict[tuple[str, str, int], PublishedRevision]:
        """Load the (account, job, number) revisions not cached yet, two queries in all.

        The scheduler calls this for a whole batch of due jobs at once.
        """
        found: dict[tuple[str, str, int], PublishedRevision] = {}
        with self._lock:
            for key in keys:
                cached = self._items.get(key)
                if cached is not None:
                    self._items.move_to_end(key)
                    found[key] = cached
        missing = sorted({key for key in keys if key not in found})
        if not missing:
            return found
        pairs = [(job_id, number) for _, job_id, number in missing]
        # Plain column rows, not ORM objects: the scheduler loads thousands at a time.
        revisions = {(row.account_id, row.job_id, row.number): row for row in session.execute(
            select(Revision.account_id, Revision.job_id, Revision.number,
                   Revision.code_version, Revision.settings, Revision.schedule,
                   Revision.variables)
            .where(tuple_(Revision.job_id, Revision.number).in_(pairs)))}
        code_keys = [(row.job_id, row.code_version) for row in revisions.values()]
        codes = {(row.account_id, row.job_id, row.version): row for row in session.execute(
            select(CodeVersion.account_id, CodeVersion.job_id, CodeVersion.version,
                   CodeVersion.content, CodeVersion.main_parameters, CodeVersion.requirements)
            .where(tuple_(CodeVersion.job_id, CodeVersion.version).in_(code_keys)))}
        for key in missing:
            # Keys carry the account: a revision of another tenant is never returned.
            revision = revisions[key]
            code = codes[(key[0], key[1], revision.code_version)]
            loaded = PublishedRevision(
                account_id=key[0], job_id=key[1], number=key[2],
                settings=settings_from_dict(revision.settings),
                schedule=dict(revision.schedule),
                variables=tuple(dict(item) for item in revision.variables),
                code_version=code.version, code=code.content,
                main_parameters=code.main_parameters, requirements=code.requirements)
            found[key] = loaded
            with self._lock:
                if key not in self._items:
                    self._items[key] = loaded
                    self._held += len(loaded.code)
        with self._lock:
            while self._held > self._max_bytes and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                self._held -= len(evicted.code)
        return found
