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

from sqlalchemy import select
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
        revision = session.scalars(select(Revision).where(
            Revision.account_id == account_id, Revision.job_id == job_id,
            Revision.number == number)).one()
        code = session.scalars(select(CodeVersion).where(
            CodeVersion.account_id == account_id, CodeVersion.job_id == job_id,
            CodeVersion.version == revision.code_version)).one()
        loaded = PublishedRevision(
            account_id=account_id, job_id=job_id, number=number,
            settings=settings_from_dict(revision.settings), schedule=dict(revision.schedule),
            variables=tuple(dict(item) for item in revision.variables),
            code_version=code.version, code=code.content,
            main_parameters=code.main_parameters, requirements=code.requirements)
        with self._lock:
            if key not in self._items:
                self._items[key] = loaded
                self._held += len(loaded.code)
                while self._held > self._max_bytes and len(self._items) > 1:
                    _, evicted = self._items.popitem(last=False)
                    self._held -= len(evicted.code)
        return loaded
