"""GET /metrics of a real server that ran successes, failures, blocked invocations and
missed a fire, read with prometheus_client's own parser."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from e2e_support import (
    Account,
    ServerFactory,
    ServerProcess,
    create_account,
    deploy_job,
    free_port,
    invoke,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from test_e2e_scheduler import (
    MARGIN,
    executions_of,
    next_whole_minute,
    prepare_job,
    schedule_and_publish,
    sleep_until,
)

from batchyard.services.metrics import MAX_LABEL_VALUES

pytestmark = pytest.mark.timeout(240)


def scrape(client: httpx.Client) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return samples


def test_a_scrape_counts_each_outcome_once_under_bounded_labels(
        launch_server: ServerFactory) -> None:
    first = launch_server()
    with first.client() as operator:
        made = create_account(operator, plan={"max_invocations_per_job_per_day": 2})
    account = Account(made.id, made.keys, first.base_url)
    missed_job = prepare_job(account, 0)
    instant = next_whole_minute(MARGIN)
    schedule_and_publish(account, missed_job, instant)
    first.stop()
    # A fire up to 30 s late is on time (domain/schedules.is_late): come back after that.
    sleep_until(instant + timedelta(seconds=35))
    server = launch_server(data_dir=first.data_dir)
    account.close()
    account = Account(made.id, made.keys, server.base_url)
    try:
        good = deploy_job(account, "def main():\n    print('ok')\n")
        bad = deploy_job(account, "def main():\n    raise ValueError('no')\n")
        for job_id, status in ((good, "succeeded"), (good, "succeeded"), (bad, "failed")):
            assert wait_for(account.owner, invoke(account.owner, job_id))["status"] == status
        assert wait_for(account.owner, invoke(account.owner, bad))["status"] == "failed"
        refused = [account.owner.post(f"/api/v1/jobs/{bad}/invoke", json={})
                   for _ in range(2)]
        assert [answer.status_code for answer in refused] == [429, 429]
        assert [e["status"] for e in executions_of(account, missed_job)] == ["missed"]
        with server.client() as operator:
            assert operator.get("/metrics", headers={"Authorization": "Bearer nope"}
                                ).status_code == 401
            samples = scrape(operator)
    finally:
        account.close()
    executions = samples["batchyard_executions"]
    assert executions[(("reason", ""), ("status", "succeeded"))] == 2
    by_status: dict[str, float] = {}
    for labels, value in executions.items():
        by_status[dict(labels)["status"]] = by_status.get(dict(labels)["status"], 0) + value
    assert by_status["failed"] == 2, executions
    assert by_status["blocked"] == 2, executions
    assert by_status["missed"] == 1
    assert samples["batchyard_missed_fires"][()] == 1
    blocked = {dict(labels)["reason"]: value
               for labels, value in samples["batchyard_admission_decisions"].items()
               if dict(labels)["decision"] == "blocked"}
    assert sum(blocked.values()) == 2 and len(blocked) == 1, blocked
    assert samples["batchyard_invoke_to_start_seconds_count"][()] >= 3
    assert samples["batchyard_attempt_run_seconds_count"][()] >= 3
    assert any(dict(labels)["route"] == "/api/v1/jobs/{job_id}/invoke"
               and dict(labels)["status"] == "429"
               for labels in samples["batchyard_http_requests_total"])
    assert ("batchyard_sandbox_level_info" in samples
            and "batchyard_network_guard_info" in samples)
    for name, series in samples.items():
        for key in {k for labels in series for k, _ in labels}:
            values = {dict(labels).get(key) for labels in series}
            assert len(values) <= MAX_LABEL_VALUES, (name, key, len(values))


def test_the_metrics_port_serves_without_a_token_on_loopback(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(tmp_path / "server",
                           env={"BATCHYARD_METRICS_PORT": str(port)}).start()
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert answer.status_code == 200
        names = {family.name for family in text_string_to_metric_families(answer.text)}
        assert {"batchyard_queue_depth", "batchyard_executions",
                "batchyard_http_requests"} <= names
        assert httpx.get(f"{server.base_url}/metrics", timeout=10).status_code == 401
    finally:
        server.stop()
