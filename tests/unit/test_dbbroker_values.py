"""The database broker's pure parts: row values as JSON, caps, scrubbing, SQL splitting."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from uuid import UUID

import pymysql
import pytest

from batchyard.errors import InvalidInput
from batchyard.runtime.channel.dbbroker import credentials_in, describe_error, scrub
from batchyard.runtime.channel.dbrun import split_sqlite, trim_mysql
from batchyard.runtime.channel.dbvalues import (
    ReplyTooLarge,
    RowBudget,
    to_json_value,
    unique_columns,
)
from batchyard.services.databases import driver_url

PASSWORD = "pa:ss@w/rd?&#%é"


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), (True, True), (7, 7), (1.25, 1.25), ("text", "text"),
    (Decimal("42"), 42), (Decimal("1E+3"), 1000), (Decimal("1.50"), 1.5),
    (Decimal("-0.1"), -0.1), (Decimal("12345678901234567890"), 12345678901234567890),
    (datetime(2025, 3, 10, 12, 30, 5, tzinfo=UTC), "2025-03-10T12:30:05+00:00"),
    (datetime(2025, 3, 10, 12, 30, tzinfo=timezone(timedelta(hours=2))),
     "2025-03-10T12:30:00+02:00"),
    (datetime(2025, 3, 10, 12, 30), "2025-03-10T12:30:00"),
    (date(2025, 3, 10), "2025-03-10"), (time(8, 30), "08:30:00"),
    (timedelta(hours=8, minutes=30), 30600.0),
    (b"\x00\xffhi", "AP9oaQ=="), (memoryview(b"ab"), "YWI="),
    (UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
    (ipaddress.ip_address("10.0.0.1"), "10.0.0.1"),
    ({"a": [Decimal("2"), date(2025, 1, 2)], 3: None}, {"a": [2, "2025-01-02"], "3": None}),
    ((1, b"x"), [1, "eA=="]),
])
def test_driver_values_become_json_values(value: object, expected: object) -> None:
    converted = to_json_value(value)
    assert converted == expected
    assert type(converted) is type(expected)
    json.dumps(converted)


def test_decimal_without_a_finite_value_stays_json_readable() -> None:
    assert str(to_json_value(Decimal("NaN"))) == "nan"
    assert to_json_value(Decimal("Infinity")) == float("inf")


def test_repeated_column_names_are_suffixed_instead_of_collapsing() -> None:
    assert unique_columns(["id", "name", "id", "id", "id_2"]) == [
        "id", "name", "id_2", "id_3", "id_2_2"]


def test_row_budget_refuses_the_row_past_the_cap() -> None:
    budget = RowBudget(max_rows=2, max_bytes=10_000)
    assert budget.row(["a"], [1]) == {"a": 1}
    budget.row(["a"], [2])
    with pytest.raises(ReplyTooLarge, match="more than 2 rows"):
        budget.row(["a"], [3])


def test_row_budget_refuses_rows_past_the_byte_cap() -> None:
    budget = RowBudget(max_rows=1000, max_bytes=100)
    budget.row(["text"], ["x" * 40])
    with pytest.raises(ReplyTooLarge, match="exceed 100 bytes"):
        budget.row(["text"], ["x" * 80])


def test_every_written_form_of_the_password_is_scrubbed() -> None:
    from urllib.parse import quote

    url = f"mysql://etl:{quote(PASSWORD, safe='')}@db.example.com:3306/warehouse"
    secrets = credentials_in(url)
    message = (f"raw {PASSWORD} encoded {quote(PASSWORD, safe='')} repr {PASSWORD!r} "
               f"url {url} host db.example.com")
    scrubbed = scrub(message, secrets)
    assert PASSWORD not in scrubbed
    assert quote(PASSWORD, safe="") not in scrubbed
    assert "pa:ss" not in scrubbed
    assert "host db.example.com" in scrubbed


def test_password_given_as_a_query_parameter_is_scrubbed() -> None:
    url = "postgresql://db.example.com/warehouse?user=etl&password=Hunter2-query"
    assert scrub("auth failed: Hunter2-query", credentials_in(url)) == "auth failed: ***"


def test_password_of_a_url_sqlalchemy_cannot_parse_is_still_scrubbed() -> None:
    url = "postgresql://etl:Unparsable-Secret@db.example.com:notaport/warehouse"
    message = f"invalid literal for int() with base 10: 'notaport' in {url}"
    scrubbed = scrub(message, credentials_in(url))
    assert "Unparsable-Secret" not in scrubbed


def test_mysql_errors_read_as_message_and_code() -> None:
    error = pymysql.err.OperationalError(1045, "Access denied for user 'etl'@'localhost'")
    assert describe_error(error) == \
        "Access denied for user 'etl'@'localhost' (MySQL error 1045)"


def test_unsupported_database_urls_are_refused_without_echoing_them() -> None:
    with pytest.raises(InvalidInput) as refused:
        driver_url("oracle://etl:Oracle-Secret@db/x")
    assert "Oracle-Secret" not in refused.value.message
    with pytest.raises(InvalidInput) as mangled:
        driver_url("etl:Mangled-Secret@db/x://")
    assert "Mangled-Secret" not in mangled.value.message


def test_urls_run_on_the_drivers_installed_here() -> None:
    assert driver_url("postgres://u@h/d").drivername == "postgresql+psycopg"
    assert driver_url("postgresql+psycopg2://u@h/d").drivername == "postgresql+psycopg"
    assert driver_url("mysql://u@h/d").drivername == "mysql+pymysql"
    assert driver_url("mariadb://u@h/d").drivername == "mariadb+pymysql"
    assert driver_url("sqlite:////tmp/x.db").drivername == "sqlite+pysqlite"


def test_sqlite_sql_splits_where_sqlite_ends_a_statement() -> None:
    sql = ("create trigger t after insert on x begin select 1; select 2; end;\n"
           "select ';' as s; -- done\n/* nothing */;")
    assert split_sqlite(sql) == [
        "create trigger t after insert on x begin select 1; select 2; end;",
        "\nselect ';' as s;"]
    assert split_sqlite("select 1") == ["select 1"]


@pytest.mark.parametrize(("sql", "trimmed"), [
    ("select 1; -- done", "select 1"),
    ("select 1;\n# done\n/* and this */ ;", "select 1"),
    ("select 'a; -- b'; -- c", "select 'a; -- b'"),
    ("select 5--1", "select 5--1"),
    ("select 'it''s', \"q\\\"\"; ", "select 'it''s', \"q\\\"\""),
    ("select 1; /*!40101 set @x = 1 */", "select 1; /*!40101 set @x = 1 */"),
])
def test_mysql_sql_loses_only_what_follows_its_last_statement(sql: str, trimmed: str) -> None:
    assert trim_mysql(sql) == trimmed
