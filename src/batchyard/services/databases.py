"""An account's own databases (SPEC 6): which URL a job's query may use, if any.

The URLs carry credentials, so they are decrypted here, in the server, only at the
moment a query runs; the job never sees them. The plan is read at that same moment:
the job's own context could be faked, and an operator who turns ``database_access``
off stops the very next query of a job that is already running.
"""

from __future__ import annotations

import re

from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

from batchyard.domain.plans import plan_from_dict
from batchyard.errors import Forbidden, InvalidInput
from batchyard.services.context import Platform
from batchyard.store import scoped

TARGETS = ("main", "etl")
# The driver each supported backend runs with.
_DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql",
            "sqlite": "pysqlite"}
_ALIASES = {"postgres": "postgresql"}
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}")


class DatabaseAccessDenied(Forbidden):
    """Database access is not enabled for this account's plan."""

    code = "database_access_denied"


def database_url(platform: Platform, account_id: str, target: str) -> str | None:
    """The account's URL for ``target`` (``main`` or ``etl``), or None when none is set.

    Raises DatabaseAccessDenied when the account's current plan does not allow
    database access: the caller must not connect anywhere then.
    """
    if target not in TARGETS:
        raise InvalidInput(f"Unknown database {target!r}; use 'main' or 'etl'.", field="target")
    with platform.db.read() as session:
        account = scoped.account(session, account_id)
        allowed = plan_from_dict(account.plan).database_access
        token = account.db_main if target == "main" else account.db_etl
    if not allowed:
        raise DatabaseAccessDenied()
    return platform.secrets.decrypt(token) if token else None


def driver_url(url: str, field: str = "databases") -> URL:
    """``url`` as SQLAlchemy runs it: PostgreSQL on psycopg 3, MySQL/MariaDB on PyMySQL.

    The error names the scheme only: the URL itself holds the password.
    """
    scheme = url.partition("://")[0] if "://" in url else ""
    backend = scheme.split("+", 1)[0].lower()
    backend = _ALIASES.get(backend, backend)
    if backend not in _DRIVERS:
        # Named only when it looks like a scheme: a mangled URL may hold the password there.
        named = repr(scheme) if _SCHEME.fullmatch(scheme) else "in this URL"
        raise InvalidInput(f"Unsupported database {named}: use postgresql://, mysql://, "
                           "mariadb:// or sqlite:// URLs.", field=field)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise InvalidInput(f"The {backend}:// URL cannot be parsed.", field=field) from None
    # Always the driver installed here: a URL naming another one (psycopg2) still works.
    return parsed.set(drivername=f"{backend}+{_DRIVERS[backend]}")
