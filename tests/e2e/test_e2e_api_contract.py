"""The API keeps its own contract: schemathesis fuzzes every operation of the OpenAPI
document against a real server, as an account and as the operator, and finds nothing.

Bounded for the suite: a fixed seed, 15 examples per operation, one worker; the
account's plan is one no fuzzed call can exhaust (a 429 would hide what follows).
A failure prints schemathesis's report, with a ``curl`` line for each case.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import OPERATOR_TOKEN, AccountFactory, ServerProcess

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance",
          "negative_data_rejection")
SEED = "20261203"
EXAMPLES = "15"
UNEXHAUSTIBLE = {"max_jobs": 1_000_000, "max_executions_per_day": 1_000_000_000,
                 "max_invocations_per_job_per_day": 1_000_000_000,
                 "daily_runtime_budget_minutes": 10_000_000}


def schemathesis(server: ServerProcess, token: str, tmp_path: Path,
                 *selection: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "st"), "run",
               f"{server.base_url}/api/v1/openapi.json", "--checks", ",".join(CHECKS),
               "--max-examples", EXAMPLES, "--seed", SEED, "--workers", "1",
               "--phases", "examples,coverage,fuzzing", "--request-timeout", "30",
               "--header", f"Authorization: Bearer {token}", "--warnings", "off",
               "--report-dir", str(tmp_path / "report"), *selection]
    return subprocess.run(command, capture_output=True, text=True, timeout=280, cwd=tmp_path,
                          stdin=subprocess.DEVNULL)


def test_the_account_api_matches_its_contract(server: ServerProcess,
                                              make_account: AccountFactory,
                                              tmp_path: Path) -> None:
    account = make_account(plan=UNEXHAUSTIBLE)
    result = schemathesis(server, account.keys["owner"], tmp_path,
                          "--exclude-path-regex", "^/api/v1/admin/")
    assert result.returncode == 0, result.stdout[-30000:] + result.stderr[-5000:]
    assert "No issues found" in result.stdout or " passed" in result.stdout, result.stdout


def test_the_operator_api_matches_its_contract(server: ServerProcess, tmp_path: Path) -> None:
    result = schemathesis(server, OPERATOR_TOKEN, tmp_path, "--include-tag", "operator")
    assert result.returncode == 0, result.stdout[-30000:] + result.stderr[-5000:]


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/executions/{execution_id}"])
def test_every_operation_declares_its_errors_with_the_error_schema(
        server: ServerProcess, path: str) -> None:
    with server.client() as client:
        document = client.get("/api/v1/openapi.json").json()
    for method, operation in document["paths"][path].items():
        errors = {status: answer for status, answer in operation["responses"].items()
                  if status.startswith(("4", "5"))}
        assert {"401", "422"} <= set(errors), (method, path, sorted(errors))
        for answer in errors.values():
            schema = answer["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path)


def test_the_contract_is_no_looser_than_the_server_for_null_fields_and_job_names(
        server: ServerProcess, make_account: AccountFactory) -> None:
    """The two looser-than-the-server cases the fuzzer's positive checks found: a field
    declared nullable that the server refuses as null (``super_admin_only``), and a job
    name declared valid when empty. Each is now declared as the server answers."""
    account = make_account()
    with server.client() as operator:
        document = operator.get("/api/v1/openapi.json").json()
        schemas = document["components"]["schemas"]
        flag = schemas["AccountUpdate"]["properties"]["super_admin_only"]
        assert flag.get("type") == "boolean" and "anyOf" not in flag, flag
        refused = operator.patch(f"/api/v1/admin/accounts/{account.id}",
                                 json={"super_admin_only": None})
        assert refused.status_code == 422, refused.text
    name = schemas["JobCreate"]["properties"]["name"]
    assert name["minLength"] >= 1 and "pattern" in name, name
    for bad in ("", "-starts-with-a-dash"):
        answer = account.owner.post("/api/v1/jobs", json={"name": bad})
        assert answer.status_code == 422, (bad, answer.text)
        assert re.fullmatch(name["pattern"], bad) is None or len(bad) < name["minLength"]
    made = account.owner.post("/api/v1/jobs", json={"name": "fits-the-pattern"})
    assert made.status_code == 201, made.text
    assert re.fullmatch(name["pattern"], "fits-the-pattern")
