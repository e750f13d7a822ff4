"""The worker protocol's claim on the wire: what a control plane sends, a worker decodes."""

from __future__ import annotations

from dataclasses import replace

from batchyard.domain import attempt_wire
from batchyard.domain.attempts import ClaimedAttempt

ATTEMPT = ClaimedAttempt(
    execution_id="exe_1", account_id="acc_1", job_id="job_1", job_name="j", number=2,
    worker="w:1/0", revision=3, code=b"zip", main_parameters=1, requirements=None,
    variables={"A": "b"}, secret_values=("b",), deadline_seconds=5.0, timeout_seconds=9.0,
    params={"body": {}}, source="api", database_access=True, log_seq=4, log_bytes=10,
    log_truncated=False, due_seen=3)


def test_a_claim_goes_over_the_wire_and_back_whole() -> None:
    wire = attempt_wire.claim_to_wire(ATTEMPT)
    assert "code" not in wire and wire["code_sha256"] == attempt_wire.code_digest(b"zip")
    assert attempt_wire.claim_from_wire(wire, b"zip") == ATTEMPT


def test_a_field_this_worker_does_not_know_is_left_out_not_fatal() -> None:
    """A newer control plane's hint must not make an older worker drop the claim (its
    attempt would lapse into worker_lost); one it lacks takes the default."""
    wire = {**attempt_wire.claim_to_wire(ATTEMPT), "a_later_hint": 1}
    del wire["due_seen"]
    assert attempt_wire.claim_from_wire(wire, b"zip") == replace(ATTEMPT, due_seen=0)
