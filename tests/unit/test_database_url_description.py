"""What API answers show of an account's database URL: driver and host, nothing secret."""

from __future__ import annotations

import pytest

from batchyard.services.accounts import describe_database_url


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:s3cret@db.example.com:5433/sales", "postgresql://db.example.com:5433"),
    ("postgresql://app@db.example.com?password=s3cret&sslmode=require",
     "postgresql://db.example.com"),
    ("mysql+pymysql://root:s3cret@10.0.0.5/etl?charset=utf8mb4", "mysql+pymysql://10.0.0.5"),
    ("postgresql://app:p%40ss%2Fs3cret@db/x", "postgresql://db"),
    ("sqlite:////srv/s3cret/app.db", "sqlite://"),
    ("not a url with s3cret", "(unparsable URL)"),
])
def test_only_driver_host_and_port_are_shown(url: str, shown: str) -> None:
    described = describe_database_url(url)
    assert described == shown
    assert "s3cret" not in described
