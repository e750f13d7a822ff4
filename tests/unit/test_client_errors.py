"""The client keeps the server's error code and message; the CLI maps statuses to its
documented exit codes."""

from __future__ import annotations

import httpx
import pytest

from batchyard.cli.exits import (
    JOB_FAILED,
    LIMIT,
    NOT_FOUND,
    OK,
    UNREACHABLE,
    USAGE,
    code_for_status,
)
from batchyard.client import ApiError
from batchyard.client.client import _raise_for_error


def test_the_servers_error_shape_is_kept_whole() -> None:
    response = httpx.Response(429, json={"error": {
        "code": "job_invocations_exceeded", "message": "This job was invoked 10 times today.",
        "retry_after": 3600}})
    with pytest.raises(ApiError) as caught:
        _raise_for_error(response)
    error = caught.value
    assert (error.status, error.code, error.message) == (
        429, "job_invocations_exceeded", "This job was invoked 10 times today.")
    assert error.details == {"retry_after": 3600}
    assert str(error) == "job_invocations_exceeded: This job was invoked 10 times today."


def test_an_answer_without_the_shape_still_says_what_came() -> None:
    with pytest.raises(ApiError) as caught:
        _raise_for_error(httpx.Response(502, text="Bad gateway from the proxy"))
    assert caught.value.code == "http_502"
    assert caught.value.message == "Bad gateway from the proxy"
    _raise_for_error(httpx.Response(204))


@pytest.mark.parametrize(("status", "code"), [
    (400, USAGE), (409, USAGE), (422, USAGE), (401, NOT_FOUND), (403, NOT_FOUND),
    (404, NOT_FOUND), (413, LIMIT), (429, LIMIT), (500, UNREACHABLE), (503, UNREACHABLE)])
def test_statuses_map_to_the_documented_exit_codes(status: int, code: int) -> None:
    assert code_for_status(status) == code
    assert (OK, JOB_FAILED) == (0, 1)
