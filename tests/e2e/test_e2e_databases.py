"""Database access (SPEC 6) through a real server: jobs query their account's PostgreSQL
(``main``) and MariaDB/MySQL (``etl``) databases through the broker, never holding the
credentials; without ``plan.database_access`` nothing connects.

Each test makes its own database user with a random password (and its own database), so
"the password appears nowhere" is checked against a secret that really is in the URL.
Needs BATCHYARD_TEST_POSTGRES_URL and BATCHYARD_TEST_MYSQL_URL (skipped otherwise).
"""

from __future__ import annotations

import json
import os
import secrets
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pymysql
import pytest
from e2e_support import (
    Account,
    AccountFactory,
    ServerProcess,
    deploy_job,
    get_execution,
    invoke,
    lines_of,
    read_logs,
    wait_for,
    wait_until,
)
from sqlalchemy import make_url

pytestmark = [pytest.mark.timeout(60), pytest.mark.postgres, pytest.mark.mysql]

POSTGRES_ENV = "BATCHYARD_TEST_POSTGRES_URL"
MYSQL_ENV = "BATCHYARD_TEST_MYSQL_URL"


@dataclass
class DedicatedDatabase:
    """A database and a user of its own, made for one test; ``url`` carries the password."""

    url: str
    name: str
    user: str
    password: str


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"set {name} to run jobs against a real database")
    return value


@pytest.fixture
def postgres_db() -> Iterator[DedicatedDatabase]:
    base = make_url(_env(POSTGRES_ENV))
    tag = secrets.token_hex(5)
    name = user = f"batchyard_dbtest_{tag}"
    password = f"PgPw-{secrets.token_urlsafe(18)}"
    admin_url = base.render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"create role {user} login password '{password}'")
        admin.execute(f"create database {name} owner {user}")
    with psycopg.connect(base.set(database=name).render_as_string(hide_password=False),
                         autocommit=True) as seed:
        seed.execute(f"set role {user}")
        seed.execute("create table leads (id int primary key, name text, amount numeric(10,2),"
                     " created date)")
        seed.execute("insert into leads values (1, 'Ada', 12.50, '2025-03-10'), "
                     "(2, 'Grace', 7.00, '2025-03-11')")
    url = base.set(username=user, password=password, database=name)
    try:
        yield DedicatedDatabase(url.render_as_string(hide_password=False), name, user, password)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            # FORCE: the server under test keeps pooled connections open.
            admin.execute(f"drop database if exists {name} with (force)")
            admin.execute(f"drop role if exists {user}")


def _mysql(url: Any, database: str | None = None) -> pymysql.Connection[Any]:
    return pymysql.connect(host=url.host or "127.0.0.1", port=url.port or 3306,
                           user=url.username or "root", password=url.password or "",
                           database=database, autocommit=True)


@pytest.fixture
def mysql_db() -> Iterator[DedicatedDatabase]:
    base = make_url(_env(MYSQL_ENV))
    tag = secrets.token_hex(5)
    name = user = f"batchyard_dbtest_{tag}"
    password = f"MyPw-{secrets.token_urlsafe(18)}"
    with _mysql(base) as admin, admin.cursor() as cursor:
        # Per-user connection counters (information_schema.USER_STATISTICS).
        cursor.execute("select @@global.userstat")
        userstat = cursor.fetchone()[0]  # type: ignore[index]
        cursor.execute("set global userstat = 1")
        cursor.execute(f"create database `{name}`")
        cursor.execute(f"create user '{user}'@'%' identified by '{password}'")
        cursor.execute(f"grant all on `{name}`.* to '{user}'@'%'")
        cursor.execute(f"create table `{name}`.stock (sku varchar(20) primary key, qty int, "
                       "price decimal(8,2))")
        cursor.execute(f"insert into `{name}`.stock values ('A-1', 3, 9.99), ('B-2', 0, 120)")
    url = base.set(username=user, password=password, database=name)
    try:
        yield DedicatedDatabase(url.render_as_string(hide_password=False), name, user, password)
    finally:
        with _mysql(base) as admin, admin.cursor() as cursor:
            cursor.execute(f"drop user if exists '{user}'@'%'")
            cursor.execute(f"drop database if exists `{name}`")
            cursor.execute(f"set global userstat = {int(userstat)}")


def postgres_sessions(db: DedicatedDatabase) -> tuple[int, int]:
    """Sessions ever opened on the test's database, and the user's open connections now."""
    with psycopg.connect(_env(POSTGRES_ENV), autocommit=True) as admin:
        admin.execute("select pg_stat_clear_snapshot()")
        sessions = admin.execute("select sessions from pg_stat_database where datname = %s",
                                 (db.name,)).fetchone()
        open_now = admin.execute("select count(*) from pg_stat_activity where usename = %s",
                                 (db.user,)).fetchone()
    assert sessions is not None and open_now is not None
    return int(sessions[0] or 0), int(open_now[0])


def mysql_connections(db: DedicatedDatabase) -> int:
    """Connections ever made (or refused) as the test's user, per USER_STATISTICS."""
    with _mysql(make_url(_env(MYSQL_ENV))) as admin, admin.cursor() as cursor:
        cursor.execute("select total_connections + denied_connections from "
                       "information_schema.user_statistics where user = %s", (db.user,))
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def configure(operator: httpx.Client, account: Account, main: str, etl: str) -> None:
    response = operator.patch(f"/api/v1/admin/accounts/{account.id}",
                              json={"databases": {"main": main, "etl": etl}})
    assert response.status_code == 200, response.text


def api_answers(operator: httpx.Client, account: Account, execution_id: str) -> str:
    """Every API answer that could mention the account's databases or the execution."""
    paths = [f"/api/v1/executions/{execution_id}", f"/api/v1/executions/{execution_id}/logs",
             f"/api/v1/executions/{execution_id}/artifacts", "/api/v1/me", "/api/v1/audit"]
    answers = [operator.get(f"/api/v1/admin/accounts/{account.id}").text]
    answers += [account.owner.get(path).text for path in paths]
    return "\n".join(answers)


QUERY_JOB = textwrap.dedent("""\
    import json
    import os
    from pathlib import Path

    from helper import LS

    def readable(path):
        try:
            return path.read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            return f"unreadable: {exc.strerror}"

    def main():
        leads = LS.db.execute_DB_query("select id, name, amount, created from leads order by id")
        stock = LS.db.execute_ETL_query("select sku, qty, price from stock order by sku")
        counts = LS.db.execute_DB_query(
            "select count(*) as n from leads; select max(name) as last from leads", multi=True)
        print("leads:", json.dumps(leads))
        # Everything this process can see of its surroundings, for the test to search.
        seen = {"environ": dict(os.environ)}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() or proc.name == "self":
                seen[f"{proc}/environ"] = readable(proc / "environ")
                seen[f"{proc}/cmdline"] = readable(proc / "cmdline")
        for root in {Path.cwd(), Path(os.environ["HOME"]), Path(os.environ["TMPDIR"])}:
            for path in root.rglob("*"):
                if path.is_file():
                    seen[str(path)] = readable(path)
        (Path(os.environ["OUTPUT_DIR"]) / "result.json").write_text(json.dumps(
            {"leads": leads, "stock": stock, "counts": counts, "seen": seen}))
    """)


def test_job_queries_main_and_etl_through_the_broker_and_never_sees_the_password(
        server: ServerProcess, operator: httpx.Client, make_account: AccountFactory,
        postgres_db: DedicatedDatabase, mysql_db: DedicatedDatabase) -> None:
    account = make_account(plan={"database_access": True})
    configure(operator, account, postgres_db.url, mysql_db.url)
    job_id = deploy_job(account, QUERY_JOB)
    sessions_before, _ = postgres_sessions(postgres_db)
    connections_before = mysql_connections(mysql_db)

    execution = wait_for(account.owner, invoke(account.owner, job_id), timeout=30)

    logs = read_logs(account.owner, execution["id"])
    assert execution["status"] == "succeeded", (execution, logs)
    download = account.owner.get(f"/api/v1/executions/{execution['id']}/artifacts/result.json")
    assert download.status_code == 200, download.text
    result = download.json()
    # pandas is not importable in the job: rows are lists of dicts.
    assert result["leads"] == [
        {"id": 1, "name": "Ada", "amount": 12.5, "created": "2025-03-10"},
        {"id": 2, "name": "Grace", "amount": 7.0, "created": "2025-03-11"}]
    assert result["stock"] == [{"sku": "A-1", "qty": 3, "price": 9.99},
                               {"sku": "B-2", "qty": 0, "price": 120.0}]
    assert result["counts"] == [[{"n": 2}], [{"last": "Grace"}]]
    assert f"leads: {json.dumps(result['leads'])}" in lines_of(logs, "stdout")
    notes = [item["message"] for item in logs if item["message"].startswith("query on ")]
    assert [note.split(" in ")[0] for note in notes] == [
        "query on main: 2 rows", "query on etl: 2 rows", "query on main: 2 statements, 2 rows"]
    # The queries really reached both databases, as the test's users.
    assert wait_until(lambda: postgres_sessions(postgres_db)[0] > sessions_before, 15,
                      "PostgreSQL never counted a session of the broker")
    assert mysql_connections(mysql_db) > connections_before
    # The job saw its environment, /proc and its folders: no password anywhere.
    seen = json.dumps(result["seen"])
    assert "OUTPUT_DIR" in result["seen"]["environ"]
    # Under bubblewrap the job may not even read its own /proc/self/environ.
    own_environ = result["seen"]["/proc/self/environ"]
    assert "OUTPUT_DIR" in own_environ or own_environ.startswith("unreadable"), own_environ
    assert any(key.endswith("main.py") for key in result["seen"])
    for db in (postgres_db, mysql_db):
        assert db.password not in seen
        assert db.password not in json.dumps(logs)
        assert db.password not in api_answers(operator, account, execution["id"])
        assert db.password not in server.output()
    shown = operator.get(f"/api/v1/admin/accounts/{account.id}").json()["databases"]
    assert shown == {"main": f"postgresql://{make_url(postgres_db.url).host}:"
                             f"{make_url(postgres_db.url).port}",
                     "etl": f"mysql://{make_url(mysql_db.url).host}:"
                            f"{make_url(mysql_db.url).port}"}


UNAUTHORIZED_JOB = textwrap.dedent("""\
    import json

    import batchyard.sdk
    from helper import LS, MXUnauthorizedDBAccess

    def attempt(call, sql):
        try:
            call(sql)
            return "ran"
        except MXUnauthorizedDBAccess as exc:
            return f"unauthorized: {exc}"

    def main():
        outcomes = [attempt(LS.db.execute_DB_query, "select 1"),
                    attempt(LS.db.execute_ETL_query, "select 1")]
        # A job faking its context: the server still refuses.
        batchyard.sdk._state.context.database_access = True
        outcomes += [attempt(LS.db.execute_DB_query, "select 1"),
                     attempt(LS.db.execute_ETL_query, "select 1")]
        print(json.dumps(outcomes))
    """)


def test_without_database_access_the_job_is_refused_and_nothing_connects(
        operator: httpx.Client, make_account: AccountFactory,
        postgres_db: DedicatedDatabase, mysql_db: DedicatedDatabase) -> None:
    account = make_account(plan={"database_access": False})
    configure(operator, account, postgres_db.url, mysql_db.url)
    job_id = deploy_job(account, UNAUTHORIZED_JOB)
    sessions_before, _ = postgres_sessions(postgres_db)
    connections_before = mysql_connections(mysql_db)

    execution = wait_for(account.owner, invoke(account.owner, job_id), timeout=30)

    logs = read_logs(account.owner, execution["id"])
    assert execution["status"] == "succeeded", (execution, logs)
    refused = "unauthorized: Database access is not enabled for this account's plan"
    assert json.loads(lines_of(logs, "stdout")[0]) == [refused] * 4
    assert [item["message"] for item in logs if item["message"].startswith("query on ")] == [
        "query on main refused: database access is not enabled for this account's plan",
        "query on etl refused: database access is not enabled for this account's plan"]
    # Stats are flushed within a second of a session; give a stray one time to show.
    time.sleep(2)
    assert postgres_sessions(postgres_db) == (sessions_before, 0)
    assert mysql_connections(mysql_db) == connections_before == 0
    assert get_execution(account.owner, execution["id"])["attempts"][0]["error"] is None
