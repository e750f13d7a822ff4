"""The database broker against real databases: SQLite always, PostgreSQL and MariaDB/MySQL
when BATCHYARD_TEST_POSTGRES_URL / BATCHYARD_TEST_MYSQL_URL are set.

The broker is called as the supervisor calls it (attempt, request record); the account's
URL is stored through the operator's use case, encrypted, like in production.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import make_url

from batchyard.domain.attempts import ClaimedAttempt
from batchyard.domain.clock import FixedClock
from batchyard.errors import InvalidInput
from batchyard.runtime.channel.dbbroker import DatabaseBroker, EnginePools
from batchyard.runtime.channel.dbrun import QueryLimits
from batchyard.runtime.channel.dispatcher import LOG_NOTE, RequestDispatcher
from batchyard.services import accounts
from batchyard.services.context import Platform
from batchyard.services.secrets import SecretBox
from batchyard.store.db import Database
from batchyard.store.models import Account

POSTGRES_ENV = "BATCHYARD_TEST_POSTGRES_URL"
MYSQL_ENV = "BATCHYARD_TEST_MYSQL_URL"
LIMITS = QueryLimits(statement_timeout_seconds=1.0, connect_timeout_seconds=5.0,
                     max_rows=1000, max_reply_bytes=1024 * 1024)
SEED = ["create table leads (id integer primary key, name varchar(50), amount decimal(10,2), "
        "created date)",
        "insert into leads values (1, 'Ada', 12.50, '2025-03-10'), "
        "(2, 'Grace', 7.00, '2025-03-11')"]
SLOW = {"sqlite": "with recursive c(x) as (select 1 union all select x + 1 from c) "
                  "select count(*) from c",
        "postgresql": "select pg_sleep(5)", "mysql": "select sleep(5)"}


@dataclass
class Target:
    """One account database: its URL and an admin's way in, to seed and to check."""

    kind: str
    url: str
    execute: Callable[[str], list[tuple[Any, ...]]]


def _sqlite_target(tmp_path: Path) -> Iterator[Target]:
    path = tmp_path / "account.sqlite3"

    def execute(sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(path) as connection:
            return connection.execute(sql).fetchall()

    yield Target("sqlite", f"sqlite:///{path}", execute)


def _postgres_target() -> Iterator[Target]:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"set {POSTGRES_ENV} to query a PostgreSQL account database")
    schema = f"bt_{secrets.token_hex(5)}"
    admin = psycopg.connect(base, autocommit=True)
    admin.execute(f'create schema "{schema}"')
    admin.execute(f'set search_path = "{schema}"')

    def execute(sql: str) -> list[tuple[Any, ...]]:
        cursor = admin.execute(sql)
        return cursor.fetchall() if cursor.description else []

    try:
        yield Target("postgresql", f"{base}?options=-csearch_path%3D{schema}", execute)
    finally:
        admin.execute(f'drop schema "{schema}" cascade')
        admin.close()


def _mysql_admin(url: str, database: str | None = None) -> pymysql.Connection[Any]:
    parsed = make_url(url)
    return pymysql.connect(host=parsed.host or "127.0.0.1", port=parsed.port or 3306,
                           user=parsed.username or "root", password=parsed.password or "",
                           database=database, autocommit=True)


def _mysql_target() -> Iterator[Target]:
    base = os.environ.get(MYSQL_ENV)
    if not base:
        pytest.skip(f"set {MYSQL_ENV} to query a MySQL/MariaDB account database")
    database = f"bt_{secrets.token_hex(5)}"
    with _mysql_admin(base) as admin, admin.cursor() as cursor:
        cursor.execute(f"create database `{database}`")
    admin_db = _mysql_admin(base, database)

    def execute(sql: str) -> list[tuple[Any, ...]]:
        with admin_db.cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall())

    try:
        yield Target("mysql", make_url(base).set(database=database)
                     .render_as_string(hide_password=False), execute)
    finally:
        execute(f"drop database `{database}`")
        admin_db.close()


def _seeded(kind: str, tmp_path: Path) -> Iterator[Target]:
    makers = {"sqlite": lambda: _sqlite_target(tmp_path), "postgresql": _postgres_target,
              "mysql": _mysql_target}
    made = makers[kind]()
    found = next(made)
    for statement in SEED:
        found.execute(statement)
    yield found
    next(made, None)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres),
                        pytest.param("mysql", marks=pytest.mark.mysql)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    yield from _seeded(request.param, tmp_path)


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres),
                        pytest.param("mysql", marks=pytest.mark.mysql)])
def server_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A database server: its timeout is a session setting the job's SQL can change."""
    yield from _seeded(request.param, tmp_path)


@pytest.fixture
def platform(sqlite_template: Path, tmp_path: Path, clock: FixedClock) -> Iterator[Platform]:
    """The platform's own store on SQLite only: the account databases are under test here."""
    path = tmp_path / "batchyard.sqlite3"
    shutil.copyfile(sqlite_template, path)
    db = Database(f"sqlite:///{path}")
    yield Platform(db=db, clock=clock, secrets=SecretBox(Fernet.generate_key()))
    db.dispose()


@pytest.fixture
def broker(platform: Platform) -> Iterator[DatabaseBroker]:
    made = DatabaseBroker(platform, LIMITS)
    yield made
    made.close()


def attempt_of(account: Account, database_access: bool = True) -> ClaimedAttempt:
    return ClaimedAttempt(
        execution_id="exe_dbtest", account_id=account.id, job_id="job_dbtest",
        job_name="dbtest", number=1, worker="w", revision=1, code=b"", main_parameters=0,
        requirements=None, variables={}, secret_values=(), deadline_seconds=60,
        timeout_seconds=60, params={}, source="api", database_access=database_access,
        log_seq=0, log_bytes=0, log_truncated=False)


def account_with(platform: Platform, make_account: Callable[..., Account], *,
                 access: bool = True, **urls: str) -> Account:
    account = make_account(plan={"database_access": access})
    accounts.update_account(platform, account.id, {"databases": urls})
    return account


def ask(broker: DatabaseBroker, account: Account, sql: str, *, multi: bool = False,
        target: str = "main", database_access: bool = True) -> dict[str, Any]:
    return broker(attempt_of(account, database_access),
                  {"type": "db", "target": target, "sql": sql, "multi": multi})


def lead_count(target: Target) -> int:
    return int(target.execute("select count(*) from leads")[0][0])


def test_select_answers_rows_as_dicts_of_json_values_and_notes_the_count(
        broker: DatabaseBroker, platform: Platform, make_account: Callable[..., Account],
        target: Target) -> None:
    account = account_with(platform, make_account, main=target.url)

    reply = ask(broker, account, "select id, name, amount, created from leads order by id")

    message, level = reply.pop(LOG_NOTE)
    assert reply == {"ok": True, "rows": [
        {"id": 1, "name": "Ada", "amount": 12.5, "created": "2025-03-10"},
        {"id": 2, "name": "Grace", "amount": 7.0, "created": "2025-03-11"}]}
    assert message.startswith("query on main: 2 rows in ") and message.endswith(" ms")
    assert level == "info"


def test_multi_answers_one_row_list_per_statement_in_one_transaction(
        broker: DatabaseBroker, platform: Platform, make_account: Callable[..., Account],
        target: Target) -> None:
    account = account_with(platform, make_account, etl=target.url)

    reply = ask(broker, account, "insert into leads values (3, 'Linus', 1.5, '2025-03-12');"
                "\nselect count(*) as n from leads;\nselect name from leads where id = 3;"
                " -- done", multi=True, target="etl")

    assert reply["ok"], reply
    assert reply["results"] == [[], [{"n": 3}], [{"name": "Linus"}]]
    assert lead_count(target) == 3


def test_several_statements_without_multi_are_refused_and_leave_no_trace(
        broker: DatabaseBroker, platform: Platform, make_account: Callable[..., Account],
        target: Target) -> None:
    account = account_with(platform, make_account, main=target.url)

    reply = ask(broker, account,
                "insert into leads values (9, 'Nope', 0, '2025-01-01'); select 1")

    assert reply["ok"] is False
    assert "multi=True" in reply["error"]
    assert lead_count(target) == 2


def test_a_failing_statement_rolls_back_the_whole_request(
        broker: DatabaseBroker, platform: Platform, make_account: Callable[..., Account],
        target: Target) -> None:
    account = account_with(platform, make_account, main=target.url)

    reply = ask(broker, account, "insert into leads values (4, 'Tmp', 0, '2025-01-01');"
                "select * from no_such_table", multi=True)

    assert reply["ok"] is False
    assert "no_such_table" in reply["error"]
    assert reply[LOG_NOTE][1] == "warn"
    assert lead_count(target) == 2
    # The broker's next query on the same account works (the failed connection was dropped).
    assert ask(broker, account, "select count(*) as n from leads")["rows"] == [{"n": 2}]


def test_rows_past_the_cap_are_refused_with_a_clear_error(
        platform: Platform, make_account: Callable[..., Account], target: Target) -> None:
    account = account_with(platform, make_account, main=target.url)
    capped = DatabaseBroker(platform, QueryLimits(1.0, 5.0, max_rows=1,
                                                  max_reply_bytes=1024 * 1024))
    try:
        reply = ask(capped, account, "select * from leads")
        assert reply["ok"] is False
        assert "more than 1 rows" in reply["error"]
        assert ask(capped, account, "select name from leads where id = 1")["rows"] == [
            {"name": "Ada"}]
    finally:
        capped.close()


def test_a_statement_past_the_timeout_is_stopped(
        broker: DatabaseBroker, platform: Platform, make_account: Callable[..., Account],
        target: Target) -> None:
    account = account_with(platform, make_account, main=target.url)

    started = time.monotonic()
    reply = ask(broker, account, SLOW[target.kind])

    assert reply["ok"] is False, reply
    assert "time" in reply["error"].lower()
    assert time.monotonic() - started < 4


# The job's own SQL turns the server's timeout off first, then sleeps for 30 s.
UNBOUNDED = {"postgresql": "set statement_timeout = 0; select pg_sleep(30)",
             "mysql": "set session max_statement_time = 0; select sleep(30)"}
# Still running on the server? (The pattern does not match this query's own text.)
STILL_SLEEPING = {
    "postgresql": "select count(*) from pg_stat_activity where query like '%pg_sl' || "
                  "'eep(30)%' and pid <> pg_backend_pid()",
    "mysql": "select count(*) from information_schema.processlist "
             "where info like concat('%sl', 'eep(30)%')"}
SESSION = {"postgresql": "select current_setting('statement_timeout') as timeout, "
                         "pg_backend_pid() as session",
           "mysql": "select @@session.max_statement_time as timeout, "
                    "connection_id() as session"}


def wait_until_not_sleeping(target: Target) -> int:
    """How many copies of the sleep the server still runs, after at most 5 s."""
    until = time.monotonic() + 5
    while (left := int(target.execute(STILL_SLEEPING[target.kind])[0][0])) \
            and time.monotonic() < until:
        time.sleep(0.1)
    return left


def test_a_job_that_turns_the_servers_timeout_off_is_still_stopped_at_the_timeout(
        broker: DatabaseBroker, platform: Platform, make_account: Callable[..., Account],
        server_target: Target) -> None:
    account = account_with(platform, make_account, main=server_target.url)

    started = time.monotonic()
    reply = ask(broker, account, UNBOUNDED[server_target.kind], multi=True)
    took = time.monotonic() - started

    assert reply["ok"] is False, reply
    assert reply["error"] == ("The query ran longer than the statement timeout of 1 s and "
                              "was cancelled.")
    # The timeout (1 s) plus the guard's slack (1 s), and the cancel's round trip.
    assert 1.9 < took < 4, took
    assert wait_until_not_sleeping(server_target) == 0
    # The request was rolled back and its connection dropped; the next one works.
    assert ask(broker, account, "select count(*) as n from leads")["rows"] == [{"n": 2}]


def test_a_session_setting_of_one_request_does_not_reach_the_next_on_the_same_connection(
        broker: DatabaseBroker, platform: Platform, make_account: Callable[..., Account],
        server_target: Target) -> None:
    account = account_with(platform, make_account, main=server_target.url)
    turned_off = {"postgresql": "set statement_timeout = 0; set search_path = public",
                  "mysql": "set session max_statement_time = 0; set autocommit = 1"}

    before = ask(broker, account, SESSION[server_target.kind])["rows"][0]
    assert ask(broker, account, turned_off[server_target.kind], multi=True)["ok"]
    after = ask(broker, account, SESSION[server_target.kind])["rows"][0]

    assert after["session"] == before["session"]  # the pooled connection was reused
    assert after["timeout"] == before["timeout"]
    assert str(after["timeout"]) in ("1s", "1.0", "1")
    # The URL's search_path is back (leads is in the test's own schema), and on MySQL a
    # failing request is still rolled back whole (autocommit is off again).
    assert ask(broker, account, "select count(*) as n from leads")["rows"] == [{"n": 2}]
    failed = ask(broker, account, "insert into leads values (5, 'Tmp', 0, '2025-01-01');"
                 "select * from no_such_table", multi=True)
    assert failed["ok"] is False
    assert lead_count(server_target) == 2
    # And the timeout holds again without the guard's help: the server's own message.
    slow = ask(broker, account, SLOW[server_target.kind])
    assert slow["ok"] is False and "cancelled." not in slow["error"], slow


def test_the_end_of_its_attempt_cancels_a_running_query(
        platform: Platform, make_account: Callable[..., Account], target: Target) -> None:
    account = account_with(platform, make_account, main=target.url)
    patient = DatabaseBroker(platform, QueryLimits(60.0, 5.0, max_rows=1000,
                                                   max_reply_bytes=1024 * 1024))
    sql = UNBOUNDED.get(target.kind, SLOW["sqlite"])
    replies: list[dict[str, Any]] = []
    try:
        asking = threading.Thread(target=lambda: replies.append(
            ask(patient, account, sql, multi=True)))
        asking.start()
        until = time.monotonic() + 5
        while not patient.cancel_attempt(attempt_of(account)) and time.monotonic() < until:
            time.sleep(0.05)
        started = time.monotonic()
        asking.join(10)
        assert time.monotonic() - started < 3
        assert replies and replies[0]["ok"] is False
        assert replies[0]["error"] == "The query was cancelled: its attempt ended."
        if target.kind != "sqlite":
            assert wait_until_not_sleeping(target) == 0
        # Another attempt of the same account is not affected.
        retry = dataclasses.replace(attempt_of(account), number=2)
        assert patient(retry, {"type": "db", "target": "main", "multi": False,
                               "sql": "select count(*) as n from leads"})["rows"] == [{"n": 2}]
    finally:
        patient.close()


def test_closing_an_attempts_requests_cancels_the_query_it_still_runs(
        platform: Platform, make_account: Callable[..., Account], target: Target) -> None:
    account = account_with(platform, make_account, main=target.url)
    patient = DatabaseBroker(platform, QueryLimits(60.0, 5.0, max_rows=1000,
                                                   max_reply_bytes=1024 * 1024))
    sent: list[bytes] = []
    dispatcher = RequestDispatcher({"db": patient}, attempt_of(account), sent.append)
    try:
        dispatcher.submit({"type": "db", "target": "main", "multi": True,
                           "sql": UNBOUNDED.get(target.kind, SLOW["sqlite"])})
        time.sleep(1.0)  # the query is running on the server now
        started = time.monotonic()
        dispatcher.close(timeout=30)  # the attempt ended (deadline, cancel, shutdown)
        assert time.monotonic() - started < 5
        assert len(sent) == 1 and b"its attempt ended" in sent[0]
        if target.kind != "sqlite":
            assert wait_until_not_sleeping(target) == 0
    finally:
        patient.close()


def test_a_plan_without_database_access_connects_nowhere_whatever_the_job_claims(
        broker: DatabaseBroker, platform: Platform, make_account: Callable[..., Account],
        tmp_path: Path) -> None:
    # SQLite creates its file on connect: a file that never appears was never opened.
    never = tmp_path / "never.sqlite3"
    denied = account_with(platform, make_account, access=False, main=f"sqlite:///{never}")
    revoked_since_claim = account_with(platform, make_account, access=True,
                                       main=f"sqlite:///{never}")

    faked = ask(broker, denied, "select 1", database_access=True)
    not_claimed = ask(broker, revoked_since_claim, "select 1", database_access=False)

    for reply in (faked, not_claimed):
        assert reply["ok"] is False and reply["unauthorized"] is True
        assert reply["error"] == "Database access is not enabled for this account's plan"
    assert not never.exists()
    assert len(broker.pools) == 0


def test_an_account_without_a_url_for_the_target_gets_a_clear_error(
        broker: DatabaseBroker, platform: Platform, make_account: Callable[..., Account],
        tmp_path: Path) -> None:
    account = account_with(platform, make_account, main=f"sqlite:///{tmp_path / 'm.db'}")

    reply = ask(broker, account, "select 1", target="etl")

    assert reply == {"ok": False, "error": "This account has no etl database: the operator "
                                           "sets one (databases.etl)."}


def test_a_malformed_request_is_answered_without_a_query(
        broker: DatabaseBroker, platform: Platform, make_account: Callable[..., Account],
        tmp_path: Path) -> None:
    account = account_with(platform, make_account, main=f"sqlite:///{tmp_path / 'm.db'}")
    for record in ({"target": "other", "sql": "select 1", "multi": False},
                   {"target": "main", "sql": "  ", "multi": False},
                   {"target": "main", "sql": "select 1", "multi": "yes"}):
        reply = broker(attempt_of(account), {"type": "db", **record})
        assert reply["ok"] is False and "target of 'main' or 'etl'" in reply["error"]
    assert len(broker.pools) == 0


def test_a_changed_url_replaces_the_pooled_engine(
        broker: DatabaseBroker, platform: Platform, make_account: Callable[..., Account],
        tmp_path: Path) -> None:
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    for path, name in ((first, "first"), (second, "second")):
        with sqlite3.connect(path) as connection:
            connection.execute(f"create table which as select '{name}' as name")
    account = account_with(platform, make_account, main=f"sqlite:///{first}")
    assert ask(broker, account, "select name from which")["rows"] == [{"name": "first"}]

    accounts.update_account(platform, account.id, {"databases": {"main": f"sqlite:///{second}"}})

    assert ask(broker, account, "select name from which")["rows"] == [{"name": "second"}]
    assert len(broker.pools) == 1


def test_idle_and_surplus_engines_are_disposed() -> None:
    now = [0.0]
    pools = EnginePools(LIMITS, clock=lambda: now[0], max_engines=2, idle_seconds=300)
    try:
        pools.engine("acc_a", "main", "sqlite:///a.db")
        now[0] = 200
        pools.engine("acc_b", "main", "sqlite:///b.db")
        now[0] = 301
        pools.engine("acc_c", "main", "sqlite:///c.db")
        assert len(pools) == 2  # acc_a idle for 301 s
        pools.engine("acc_d", "main", "sqlite:///d.db")
        assert len(pools) == 2  # acc_b the least recently used beyond the cap
    finally:
        pools.close()


def _password_named_database(kind: str, password: str) -> Iterator[str]:
    """A URL whose password is also the name of a database that does not exist: the
    driver's own error then quotes the password (as a database name)."""
    if kind == "postgresql":
        base = os.environ.get(POSTGRES_ENV)
        if not base:
            pytest.skip(f"set {POSTGRES_ENV} to check PostgreSQL's error messages")
        yield make_url(base).set(password=password, database=password) \
            .render_as_string(hide_password=False)
        return
    base = os.environ.get(MYSQL_ENV)
    if not base:
        pytest.skip(f"set {MYSQL_ENV} to check MySQL/MariaDB's error messages")
    user = f"bt_{secrets.token_hex(4)}"
    with _mysql_admin(base) as admin, admin.cursor() as cursor:
        cursor.execute(f"create user '{user}'@'%' identified by '{password}'")
    try:
        yield make_url(base).set(username=user, password=password, database=password) \
            .render_as_string(hide_password=False)
    finally:
        with _mysql_admin(base) as admin, admin.cursor() as cursor:
            cursor.execute(f"drop user '{user}'@'%'")


@pytest.mark.parametrize("kind", [pytest.param("postgresql", marks=pytest.mark.postgres),
                                  pytest.param("mysql", marks=pytest.mark.mysql)])
def test_driver_errors_never_show_the_password(
        broker: DatabaseBroker, platform: Platform, make_account: Callable[..., Account],
        kind: str, caplog: pytest.LogCaptureFixture) -> None:
    password = f"Pw_{secrets.token_hex(8)}"
    made = _password_named_database(kind, password)
    url = next(made)
    try:
        account = account_with(platform, make_account, main=url)
        reply = ask(broker, account, "select 1")
    finally:
        broker.close()
        next(made, None)

    assert reply["ok"] is False
    assert "***" in reply["error"], reply["error"]
    assert password not in repr(reply)
    assert password not in caplog.text


def test_a_sqlite_job_cannot_open_other_files_of_the_server(
        broker: DatabaseBroker, platform: Platform, make_account: Callable[..., Account],
        tmp_path: Path) -> None:
    account = account_with(platform, make_account, main=f"sqlite:///{tmp_path / 'm.db'}")
    store = tmp_path / "batchyard.sqlite3"  # the platform's own store, beside it

    attached = ask(broker, account, f"attach database '{store}' as store")
    copied = ask(broker, account, f"vacuum into '{tmp_path / 'copy.db'}'")

    assert attached["ok"] is False and "not authorized" in attached["error"]
    assert copied["ok"] is False
    assert not (tmp_path / "copy.db").exists()


def test_the_operator_cannot_store_an_unsupported_database_url(
        platform: Platform, make_account: Callable[..., Account]) -> None:
    account = make_account()

    with pytest.raises(InvalidInput) as refused:
        accounts.update_account(platform, account.id, {
            "databases": {"etl": "oracle://etl:Oracle-Secret@db.example.com/x"}})

    assert refused.value.extra["field"] == "databases.etl"
    assert "Oracle-Secret" not in refused.value.message


def test_a_query_of_an_attempt_that_already_ended_never_starts(
        platform: Platform, make_account: Callable[..., Account], target: Target) -> None:
    account = account_with(platform, make_account, main=target.url)
    broker = DatabaseBroker(platform, LIMITS)
    try:
        # The attempt ended while its request was still looking up the account's URL.
        broker.cancel_attempt(attempt_of(account))
        started = time.monotonic()
        reply = ask(broker, account, UNBOUNDED.get(target.kind, SLOW["sqlite"]), multi=True)
        assert reply == {"ok": False, "error": "The query was cancelled: its attempt ended."}
        assert time.monotonic() - started < 1
    finally:
        broker.close()
