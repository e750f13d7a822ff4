"""Operational figures for ``GET /metrics`` (issue 13), with bounded label sets.

Two kinds: what the store knows (executions by status and reason, the queue, deliveries),
read at scrape time so every process of a deployment reports the same truth; and what
only this process sees happen (start latency, run time, lease expiries), kept in
process-wide histograms and counters. No label carries a job, execution or account id,
and a label never takes more than ``MAX_LABEL_VALUES`` values (the rest become "other").
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from batchyard.services.context import Platform
from batchyard.store.models import Attempt, Delivery, Execution

MAX_LABEL_VALUES = 50
OTHER = "other"
# Reasons that mean the invocation was refused at admission (SPEC §3).
BLOCKED = "blocked"

PROCESS = CollectorRegistry(auto_describe=True)
START_LATENCY = Histogram(
    "batchyard_invoke_to_start_seconds",
    "From an execution's creation (invoke or fire) to its first attempt's start",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
    registry=PROCESS)
RUN_TIME = Histogram(
    "batchyard_attempt_run_seconds", "Run time of ended attempts",
    buckets=(0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400),
    registry=PROCESS)
LEASE_EXPIRIES = Counter(
    "batchyard_lease_expiries", "Attempts taken back from a worker whose lease expired",
    registry=PROCESS)


def observe_start(seconds: float) -> None:
    START_LATENCY.observe(max(0.0, seconds))


def observe_run(seconds: float) -> None:
    RUN_TIME.observe(max(0.0, seconds))


def bounded(values: Iterator[tuple[str, float]]) -> dict[str, float]:
    """At most MAX_LABEL_VALUES distinct labels: the largest first, the rest summed."""
    ordered = sorted(values, key=lambda item: -item[1])
    kept = dict(ordered[:MAX_LABEL_VALUES - 1])
    rest = sum(value for _, value in ordered[MAX_LABEL_VALUES - 1:])
    if rest:
        kept[OTHER] = kept.get(OTHER, 0.0) + rest
    return kept


class StoreCollector(Collector):
    """Figures read from the database at each scrape."""

    def __init__(self, platform: Platform, info: dict[str, str]) -> None:
        self._platform = platform
        self._info = info

    def collect(self) -> Iterator[Metric]:
        now = self._platform.clock.now()
        with self._platform.db.read() as session:
            by_status = session.execute(
                select(Execution.status, Execution.reason, func.count())
                .group_by(Execution.status, Execution.reason)).all()
            queued = session.execute(
                select(func.count(), func.min(Execution.created_at))
                .where(Execution.status == "queued")).one()
            running = session.scalar(select(func.count()).select_from(Attempt)
                                     .where(Attempt.status == "running"))
            last_fire = session.execute(
                select(Execution.created_at, Execution.scheduled_for)
                .where(Execution.source == "scheduler", Execution.scheduled_for.is_not(None),
                       Execution.created_at >= now - timedelta(days=1))
                .order_by(Execution.created_at.desc()).limit(1)).first()
            deliveries = session.execute(
                select(Delivery.kind, Delivery.status, func.count())
                .where(Delivery.status.in_(("pending", "failed")))
                .group_by(Delivery.kind, Delivery.status)).all()
        executions = GaugeMetricFamily(
            "batchyard_executions", "Executions kept in the store, by status and reason",
            labels=["status", "reason"])
        pairs = bounded(((f"{status}\0{reason or ''}", float(count))
                         for status, reason, count in by_status))
        for key, count in sorted(pairs.items()):
            status, _, reason = key.partition("\0")
            executions.add_metric([status, reason] if key != OTHER else [OTHER, OTHER], count)
        yield executions
        admissions = GaugeMetricFamily(
            "batchyard_admission_decisions",
            "Executions kept, by admission decision and the refusal's reason",
            labels=["decision", "reason"])
        admitted = sum(c for s, _, c in by_status if s not in (BLOCKED, "missed"))
        admissions.add_metric(["admitted", ""], float(admitted))
        refused = bounded(((reason or "", float(c)) for s, reason, c in by_status
                           if s == BLOCKED))
        for reason, count in sorted(refused.items()):
            admissions.add_metric(["blocked", reason], count)
        yield admissions
        yield _gauge("batchyard_missed_fires",
                     "Scheduled instants recorded as missed (kept in the store)",
                     float(sum(c for s, _, c in by_status if s == "missed")))
        yield _gauge("batchyard_queue_depth", "Executions waiting in the queue",
                     float(queued[0]))
        oldest = (now - queued[1]).total_seconds() if queued[1] is not None else 0.0
        yield _gauge("batchyard_queue_oldest_age_seconds",
                     "Age of the oldest queued execution (0: none queued)", max(0.0, oldest))
        yield _gauge("batchyard_running_attempts", "Attempts running now",
                     float(running or 0))
        lag = ((last_fire.created_at - last_fire.scheduled_for).total_seconds()
               if last_fire is not None else 0.0)
        yield _gauge("batchyard_scheduler_lag_seconds",
                     "Fire time minus scheduled instant of the latest scheduled execution "
                     "(last 24 h)", lag)
        pending = GaugeMetricFamily("batchyard_deliveries",
                                    "Summary e-mails and webhooks pending or failed",
                                    labels=["kind", "status"])
        for kind, status, count in deliveries:
            pending.add_metric([kind, status], float(count))
        yield pending
        for name, value in self._info.items():
            info = GaugeMetricFamily(f"batchyard_{name}_info", f"The {name} in force",
                                     labels=[name])
            info.add_metric([value], 1.0)
            yield info


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation)
    gauge.add_metric([], value)
    return gauge
