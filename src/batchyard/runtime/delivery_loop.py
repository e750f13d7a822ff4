"""The delivery loop: send what the outbox holds, retry with backoff, give up in the end.

One step claims a batch of due deliveries and sends them on a few threads (one slow
webhook must not hold back the rest); the driver sleeps until the next due row, at
most ``max_sleep`` (other processes write rows it does not hear of), or until this
process writes one. Any number of processes may run it: claims are conditional.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from batchyard.domain.notifications import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    ExecutionSummary,
    retry_delay,
    signature,
    summary_subject,
    summary_text,
    webhook_body,
)
from batchyard.runtime.smtp import DeliveryFailure, Mailer, OutgoingEmail
from batchyard.runtime.webhooks import WebhookPoster
from batchyard.services import notifications
from batchyard.services.context import Platform
from batchyard.services.notifications import ClaimedDelivery

log = logging.getLogger("batchyard.delivery")


@dataclass(frozen=True)
class DeliveryPolicy:
    max_tries: int = 5
    backoff_seconds: float = 30.0
    # A claimed row is left alone this long: more than any single send may take.
    lease_seconds: float = 120.0
    batch: int = 8
    senders: int = 4


class DeliveryLoop:
    def __init__(self, platform: Platform, mailer: Mailer | None, webhooks: WebhookPoster,
                 public_url: str, policy: DeliveryPolicy, max_sleep: float = 5.0) -> None:
        self.platform = platform
        self.mailer = mailer
        self.webhooks = webhooks
        self.public_url = public_url
        self.policy = policy
        self.max_sleep = max_sleep
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(policy.senders, thread_name_prefix="delivery")
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.webhooks.close()

    def step(self) -> float:
        """Send one batch of due deliveries; return how long to sleep before the next look."""
        claimed = notifications.claim_due(self.platform, self.policy.lease_seconds,
                                          self.policy.batch)
        if claimed:
            list(self._pool.map(self.deliver, claimed))
            if len(claimed) == self.policy.batch:
                return 0.0
        due = notifications.next_due(self.platform)
        if due is None:
            return self.max_sleep
        wait = (due - self.platform.clock.now()).total_seconds()
        return min(max(wait, 0.0), self.max_sleep)

    def deliver(self, delivery: ClaimedDelivery) -> None:
        """Send one delivery and record the outcome; never raises (a poison row must not
        stop the loop: it is recorded as failed)."""
        try:
            if delivery.kind == notifications.EMAIL:
                self._send_email(delivery)
            elif delivery.kind == notifications.WEBHOOK:
                self._send_webhook(delivery)
            else:
                raise DeliveryFailure(f"unknown delivery kind {delivery.kind!r}", permanent=True)
        except DeliveryFailure as exc:
            self._failed(delivery, str(exc), exc.permanent)
        except Exception as exc:
            log.exception("delivery %s crashed", delivery.id)
            self._failed(delivery, f"internal error: {type(exc).__name__}: {exc}", False)
        else:
            notifications.record_sent(self.platform, delivery)
            log.info("%s %s of execution %s delivered (try %d)", delivery.kind, delivery.id,
                     delivery.execution_id, delivery.attempts)

    def _failed(self, delivery: ClaimedDelivery, error: str, permanent: bool) -> None:
        if permanent or delivery.attempts >= self.policy.max_tries:
            notifications.record_failure(self.platform, delivery, error, None)
            log.warning("%s %s of execution %s not sent (try %d, giving up): %s",
                        delivery.kind, delivery.id, delivery.execution_id, delivery.attempts,
                        error)
            return
        delay = retry_delay(delivery.attempts, self.policy.backoff_seconds)
        notifications.record_failure(self.platform, delivery, error, delay)
        log.info("%s %s of execution %s failed (try %d), next try in %.1f s: %s",
                 delivery.kind, delivery.id, delivery.execution_id, delivery.attempts, delay,
                 error)

    def _send_email(self, delivery: ClaimedDelivery) -> None:
        if self.mailer is None:
            raise DeliveryFailure("no SMTP server is configured (BATCHYARD_SMTP_HOST)",
                                  permanent=True)
        summary = ExecutionSummary.from_dict(delivery.payload["summary"])
        self.mailer.send(OutgoingEmail(
            to=tuple(delivery.payload["to"]), subject=summary_subject(summary),
            body=summary_text(summary, self.public_url)))

    def _send_webhook(self, delivery: ClaimedDelivery) -> None:
        summary = ExecutionSummary.from_dict(delivery.payload["summary"])
        body = webhook_body(summary, delivery.id, self.public_url)
        headers = {EVENT_HEADER: delivery.event, DELIVERY_HEADER: delivery.id}
        sealed = delivery.payload.get("secret")
        if sealed:
            headers[SIGNATURE_HEADER] = signature(self.platform.secrets.decrypt(sealed), body)
        self.webhooks.post(str(delivery.payload["url"]), body, headers)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                wait = self.step()
            except Exception:
                log.exception("delivery step failed")
                wait = 1.0
            self._wake.wait(wait)
            self._wake.clear()
