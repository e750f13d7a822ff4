"""Published revisions, read through caches.

A revision and its code version never change once written, so every process
may keep them in memory: the hot paths (invoke, fire, claim, finish) then skip
queries. What admission and the scheduler need (settings, schedule) is small and
kept apart from the code blob, which only a claim needs: the scheduler firing
ten thousand jobs never transfers a zip. The code cache is bounded by bytes held,
the revision cache by entries.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Text, bindparam, cast, select
from sqlalchemy.orm import Session

from batchyard.domain.jobs import JobSettings, settings_from_dict
from batchyard.domain.schedules import Schedule
from batchyard.store.models import CodeVersion, Revision

RevisionKey = tuple[str, str, int]  # (account id, job id, revision number)
CodeKey = tuple[str, str, int]  # (account id, job id, code version)


@dataclass(frozen=True)
class PublishedRevision:
    account_id: str
    job_id: str
    number: int
    settings: JobSettings
    schedule: dict[str, Any]
    variables: tuple[dict[str, Any], ...]
    code_version: int
    # Parsed once per revision: the scheduler steps it for every fire.
    parsed_schedule: Schedule


@dataclass(frozen=True)
class PublishedCode:
    content: bytes
    main_parameters: int
    requirements: str | None


_CODE = select(CodeVersion.content, CodeVersion.main_parameters, CodeVersion.requirements) \
    .where(CodeVersion.account_id == bindparam("aid"), CodeVersion.job_id == bindparam("jid"),
           CodeVersion.version == bindparam("version"))


# Settings and schedules as stored text: decoded once per distinct text, not per revision
# (most jobs of a fleet share their settings and a handful of schedules).
_REVISIONS = select(Revision.account_id, Revision.job_id, Revision.number,
                    Revision.code_version, cast(Revision.settings, Text).label("settings"),
                    cast(Revision.schedule, Text).label("schedule"),
                    cast(Revision.variables, Text).label("variables"))

_T = TypeVar("_T")


class _Interned(Generic[_T]):
    """Values decoded from stored JSON text, shared by every revision with that text."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max_entries = max_entries
        self._values: dict[str, _T] = {}

    def get(self, text: str) -> _T | None:
        return self._values.get(text)

    def put(self, text: str, value: _T) -> None:
        if len(self._values) >= self._max_entries:
            self._values.clear()  # a fleet of all-distinct settings: start over, stay bounded
        self._values[text] = value


class RevisionCache:
    def __init__(self, max_code_bytes: int = 64 * 1024 * 1024,
                 max_revisions: int = 200_000) -> None:
        self._max_code_bytes = max_code_bytes
        self._max_revisions = max_revisions
        self._code_held = 0
        self._revisions: OrderedDict[RevisionKey, PublishedRevision] = OrderedDict()
        self._codes: OrderedDict[CodeKey, PublishedCode] = OrderedDict()
        self._lock = threading.Lock()
        self._settings: _Interned[JobSettings] = _Interned()
        self._schedules: _Interned[tuple[dict[str, Any], Schedule]] = _Interned()

    def get(self, session: Session, account_id: str, job_id: str,
            number: int) -> PublishedRevision:
        key = (account_id, job_id, number)
        with self._lock:
            cached = self._revisions.get(key)
            if cached is not None:
                self._revisions.move_to_end(key)
                return cached
        return self.load(session, [key])[key]

    def load(self, session: Session, keys: list[RevisionKey]) -> \
            dict[RevisionKey, PublishedRevision]:
        """The (account, job, number) revisions, those not cached yet in one query.

        The scheduler calls this for a whole batch of due jobs at once.
        """
        found: dict[RevisionKey, PublishedRevision] = {}
        with self._lock:
            for key in keys:
                cached = self._revisions.get(key)
                if cached is not None:
                    self._revisions.move_to_end(key)
                    found[key] = cached
        missing = sorted({key for key in keys if key not in found})
        if not missing:
            return found
        # Plain column rows, not ORM objects: the scheduler loads thousands at a time.
        # Two plain IN lists, not a row-value IN: PostgreSQL turns (a, b) IN (...) into a
        # filter of OR clauses tested against every row (350 ms for 500 pairs); the extra
        # rows two lists may match are dropped by the exact lookup below.
        rows = {(row.account_id, row.job_id, row.number): row for row in session.execute(
            _REVISIONS.where(
                Revision.account_id.in_(sorted({account for account, _, _ in missing})),
                Revision.job_id.in_(sorted({job_id for _, job_id, _ in missing})),
                Revision.number.in_(sorted({number for _, _, number in missing}))))}
        loaded: list[tuple[RevisionKey, PublishedRevision]] = []
        for key in missing:
            # Keys carry the account: a revision of another tenant is never returned.
            row = rows[key]
            settings = self._settings.get(row.settings)
            if settings is None:
                settings = settings_from_dict(json.loads(row.settings))
                self._settings.put(row.settings, settings)
            schedule = self._schedules.get(row.schedule)
            if schedule is None:
                data = json.loads(row.schedule) or {"type": "none"}
                schedule = (data, Schedule.from_dict(data))
                self._schedules.put(row.schedule, schedule)
            revision = PublishedRevision(
                account_id=key[0], job_id=key[1], number=key[2], settings=settings,
                schedule=dict(schedule[0]),
                variables=tuple(dict(item) for item in json.loads(row.variables)),
                code_version=row.code_version, parsed_schedule=schedule[1])
            found[key] = revision
            loaded.append((key, revision))
        with self._lock:
            for key, revision in loaded:
                self._revisions.setdefault(key, revision)
            while len(self._revisions) > self._max_revisions:
                self._revisions.popitem(last=False)
        return found

    def code(self, session: Session, revision: PublishedRevision) -> PublishedCode:
        """The code version a revision runs: what a claim hands to the supervisor."""
        key = (revision.account_id, revision.job_id, revision.code_version)
        with self._lock:
            cached = self._codes.get(key)
            if cached is not None:
                self._codes.move_to_end(key)
                return cached
        row = session.execute(_CODE, {"aid": key[0], "jid": key[1], "version": key[2]}).one()
        code = PublishedCode(row.content, row.main_parameters, row.requirements)
        with self._lock:
            if key not in self._codes:
                self._codes[key] = code
                self._code_held += len(code.content)
            while self._code_held > self._max_code_bytes and len(self._codes) > 1:
                _, evicted = self._codes.popitem(last=False)
                self._code_held -= len(evicted.content)
        return code
