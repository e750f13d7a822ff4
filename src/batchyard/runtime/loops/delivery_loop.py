"""The delivery loop: send what the outbox holds, retry with backoff, give up in the end.

One step claims as many due deliveries as there are idle senders (threads) and hands
each to one, without waiting for any: a slow webhook holds its own sender only, and the
next step claims more as soon as a sender is free (a finished send wakes the driver).
Claiming no more than the idle senders take means a claimed row starts at once, so its
lease (the time no other process may claim it) covers its send, not a wait in a queue;
the lease is kept at least ``LEASE_PER_SEND_TIMEOUT`` times the webhook's whole-call
deadline. The driver sleeps until the next due row, at most ``max_sleep`` (other
processes write rows it does not hear of), or until this process writes one or a send
ends. Any number of processes may run it: claims are conditional.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from batchyard.domain.alerts import AlertNotice, alert_subject_line, alert_text, alert_webhook_body
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
from batchyard.runtime.loops.driver import Driver, seconds_until
from batchyard.runtime.outbound.smtp import DeliveryFailure, Mailer, OutgoingEmail
from batchyard.runtime.outbound.webhooks import WebhookPoster
from batchyard.services import notifications
from batchyard.services.context import Platform
from batchyard.services.notifications import ClaimedDelivery

log = logging.getLogger("batchyard.delivery")

# A claimed row's lease against the webhook's deadline: a send ends well before another
# process may claim the row again (and send it a second time).
LEASE_PER_SEND_TIMEOUT = 3
INTERNAL_ERROR = "internal error of the server (the operator's log has the details)"


@dataclass(frozen=True)
class DeliveryPolicy:
    max_tries: int = 5
    backoff_seconds: float = 30.0
    # A claimed row is left alone this long: more than any single send may take.
    lease_seconds: float = 120.0
    batch: int = 8
    senders: int = 4


class DeliveryLoop(Driver):
    def __init__(self, platform: Platform, mailer: Mailer | None, webhooks: WebhookPoster,
                 public_url: str, policy: DeliveryPolicy, max_sleep: float = 5.0) -> None:
        super().__init__("delivery", log)
        self.platform = platform
        self.mailer = mailer
        self.webhooks = webhooks
        self.public_url = public_url
        lease = max(policy.lease_seconds, LEASE_PER_SEND_TIMEOUT * webhooks.timeout_seconds)
        self.policy = replace(policy, lease_seconds=lease)
        self.max_sleep = max_sleep
        self._pool = ThreadPoolExecutor(policy.senders, thread_name_prefix="delivery")
        self._sending = 0
        self._idle = threading.Condition()

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.webhooks.close()

    def step(self) -> float:
        """Hand due deliveries to the idle senders (not waiting for them to be sent);
        return how long to sleep before the next look."""
        with self._idle:
            idle = self.policy.senders - self._sending
        if idle <= 0:
            return self.max_sleep  # a finished send wakes the driver
        limit = min(self.policy.batch, idle)
        claimed = notifications.claim_due(self.platform, self.policy.lease_seconds, limit)
        for delivery in claimed:
            self._hand_over(delivery)
        if claimed and len(claimed) == limit:
            return 0.0
        return seconds_until(notifications.next_due(self.platform), self.platform.clock.now(),
                             self.max_sleep)

    def settle(self, timeout: float = 30.0) -> bool:
        """Wait until no send is under way; False when some still is after ``timeout``."""
        until = time.monotonic() + timeout
        with self._idle:
            while self._sending:
                left = until - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _hand_over(self, delivery: ClaimedDelivery) -> None:
        with self._idle:
            self._sending += 1
        try:
            future = self._pool.submit(self.deliver, delivery)
        except RuntimeError:  # stopping: the row is claimed again once its lease ends
            self._sent(None)
            return
        future.add_done_callback(self._sent)

    def _sent(self, _future: Future[None] | None) -> None:
        with self._idle:
            self._sending -= 1
            self._idle.notify_all()
        self._wake.set()

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
        except Exception:
            # The details stay in the server's log: the row's error is shown to the tenant.
            log.exception("delivery %s crashed", delivery.id)
            self._failed(delivery, INTERNAL_ERROR, False)
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
        if "alert" in delivery.payload:  # a job's alert (services/alerts.py)
            notice = AlertNotice.from_dict(delivery.payload["alert"])
            self.mailer.send(OutgoingEmail(to=tuple(delivery.payload["to"]),
                                           subject=alert_subject_line(notice),
                                           body=alert_text(notice)))
            return
        summary = ExecutionSummary.from_dict(delivery.payload["summary"])
        self.mailer.send(OutgoingEmail(
            to=tuple(delivery.payload["to"]), subject=summary_subject(summary),
            body=summary_text(summary, self.public_url)))

    def _send_webhook(self, delivery: ClaimedDelivery) -> None:
        if "alert" in delivery.payload:
            body = alert_webhook_body(AlertNotice.from_dict(delivery.payload["alert"]),
                                      delivery.id)
        else:
            summary = ExecutionSummary.from_dict(delivery.payload["summary"])
            body = webhook_body(summary, delivery.id, self.public_url)
        headers = {EVENT_HEADER: delivery.event, DELIVERY_HEADER: delivery.id}
        sealed = delivery.payload.get("secret")
        if sealed:
            headers[SIGNATURE_HEADER] = signature(self.platform.secrets.decrypt(sealed), body)
        self.webhooks.post(str(delivery.payload["url"]), body, headers)
