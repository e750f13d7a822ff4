"""The remote worker protocol (``/api/v1/worker/*``, worker tokens only).

A remote worker holds no database credentials: it claims attempts, renews their
leases, sends log batches, asks the control plane to run its job's requests (database
queries, e-mail: the credentials stay here) and records the attempt's end, all over
these routes. Each call after the claim names (execution, attempt number, worker) and
is fenced by them: a worker that lost its lease is refused (``ok: false``). The worker
names its slots; the control plane prefixes them with the token's id, so a token can
only ever act on the attempts it claimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from batchyard.api import schemas
from batchyard.api.deps import PlatformDep, bearer
from batchyard.api.strict_json import parse_json
from batchyard.domain import attempt_wire
from batchyard.domain.attempts import ClaimedAttempt
from batchyard.errors import InvalidInput, NotFound, Overloaded
from batchyard.services import nodes, queue, worker_tokens
from batchyard.services.context import Platform
from batchyard.services.worker_tokens import WorkerIdentity

router = APIRouter(prefix="/api/v1/worker", tags=["worker"],
                   responses=schemas.errors(401, 404, 409, 422, 503))

MAX_CLAIM_WAIT_SECONDS = 20.0
# A waiting claim looks again this often even unwoken: work that becomes runnable without
# being queued (a retry's delay ran out) is found so, as a database worker's poll finds it.
_CLAIM_POLL_SECONDS = 1.0
# Long-polls held at once; beyond them a claim is answered 503 + Retry-After at once
# rather than queueing behind the database pool.
MAX_WAITING_CLAIMS = 64
_JSON_BYTES = 1024 * 1024


async def worker_identity(request: Request, platform: PlatformDep) -> WorkerIdentity:
    return await run_in_threadpool(worker_tokens.authenticate, platform, bearer(request))


Worker = Annotated[WorkerIdentity, Depends(worker_identity)]


async def _body(request: Request, limit: int = _JSON_BYTES) -> dict[str, Any]:
    """The JSON body, refused past ``limit`` bytes while it streams (the request guard
    leaves these routes alone)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InvalidInput(f"The request body may be at most {limit} bytes.", field="body")
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidInput(f"The request body may be at most {limit} bytes.",
                               field="body")
        chunks.append(chunk)
    data = parse_json(b"".join(chunks))
    if not isinstance(data, dict):
        raise InvalidInput("The request body must be a JSON object.")
    return data


def _slot(identity: WorkerIdentity, data: dict[str, Any]) -> str:
    slot = data.get("worker")
    if not isinstance(slot, str) or not slot or len(slot) > 60:
        raise InvalidInput("worker must name this worker's slot", field="worker")
    return identity.owner_prefix + slot.removeprefix(identity.owner_prefix)


def _owned(platform: Platform, identity: WorkerIdentity, data: dict[str, Any]) -> \
        ClaimedAttempt | None:
    execution_id, number = data.get("execution_id"), data.get("number")
    if not isinstance(execution_id, str) or not isinstance(number, int):
        raise InvalidInput("execution_id and number name the attempt")
    return queue.owned_attempt(platform, execution_id, number, _slot(identity, data))


@router.get("/hello")
async def hello(identity: Worker, request: Request) -> dict[str, Any]:
    """What a worker needs before its first claim: the lease it gets and how often to renew."""
    settings = request.app.state.server.settings
    return {"worker": identity.id, "name": identity.name,
            "lease_seconds": settings.lease_seconds,
            "heartbeat_seconds": settings.heartbeat_seconds,
            "node_heartbeat_seconds": settings.node_heartbeat_seconds}


@router.post("/heartbeat")
async def heartbeat(identity: Worker, request: Request, platform: PlatformDep) -> \
        dict[str, Any]:
    data = await _body(request)
    try:
        beat = nodes.NodeBeat(
            id=f"{identity.owner_prefix}{data['node']}"[:120], roles=frozenset({"worker"}),
            capacity=int(data["capacity"]), running=int(data["running"]),
            labels=tuple(str(label) for label in data.get("labels", []))[:32], remote=True,
            started_at=platform.clock.now())
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"heartbeat: {exc}") from None

    def record() -> None:
        nodes.heartbeat(platform, beat)
        worker_tokens.seen(platform, identity.id)

    await run_in_threadpool(record)
    return {"ok": True}


class ClaimWaiters:
    """The long-polls of this process waiting for work, woken one at a time, oldest first.

    ``wake`` is called from any thread when work is queued here or another process says
    so (store/wakeups.py); the woken claim that takes an attempt wakes the next, as the
    pool's slots do, so a burst of queued work fills the waiting slots without waking
    all of them for one execution.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = deque()
        self.count = 0

    def enter(self) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._queue.append((asyncio.get_running_loop(), event))
        return event

    def leave(self, event: asyncio.Event) -> None:
        with self._lock:
            for entry in self._queue:
                if entry[1] is event:
                    self._queue.remove(entry)
                    break

    def wake(self) -> None:
        with self._lock:
            if not self._queue:
                return
            loop, event = self._queue.popleft()
        loop.call_soon_threadsafe(event.set)


@router.post("/claim")
async def claim(identity: Worker, request: Request, platform: PlatformDep) -> Response:
    """Long-poll: the next attempt for this slot (200), or 204 after ``wait_seconds``."""
    waiters: ClaimWaiters = request.app.state.server.claim_waiters
    data = await _body(request)
    worker = _slot(identity, data)
    wait = min(float(data.get("wait_seconds", 0) or 0), MAX_CLAIM_WAIT_SECONDS)
    lease = request.app.state.server.settings.lease_seconds
    labels = data.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise InvalidInput("labels must be a list of strings", field="labels")
    advertised = tuple(labels)
    if waiters.count >= MAX_WAITING_CLAIMS:
        raise Overloaded(retry_after=1)
    waiters.count += 1
    try:
        until = time.monotonic() + wait
        secret = bearer(request)

        def claim_once() -> ClaimedAttempt | None:
            # The token is looked at again before each try: one revoked while its claim
            # waits claims nothing more.
            worker_tokens.authenticate(platform, secret)
            return queue.claim_next_execution(platform, worker, lease, advertised)

        while True:
            # Entered before the claim: work queued between a claim that found nothing
            # and the wait still wakes this one.
            woken = waiters.enter()
            try:
                attempt = await run_in_threadpool(claim_once)
                if attempt is not None:
                    if attempt.due_seen != 1:  # another waiting slot may take the next
                        waiters.wake()
                    return Response(_dumps({"attempt": attempt_wire.claim_to_wire(attempt)}),
                                    media_type="application/json")
                left = until - time.monotonic()
                if left <= 0 or await request.is_disconnected():
                    return Response(status_code=204)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(left, _CLAIM_POLL_SECONDS))
            finally:
                waiters.leave(woken)
    finally:
        waiters.count -= 1


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


@router.get("/code/{digest}")
async def code(digest: str, identity: Worker, platform: PlatformDep, execution_id: str,
               number: int, worker: str) -> Response:
    """The code zip of an attempt this worker holds, by its SHA-256 (cached by the worker)."""
    data = {"execution_id": execution_id, "number": number, "worker": worker}

    def load() -> bytes | None:
        attempt = _owned(platform, identity, data)
        return None if attempt is None else queue.attempt_code(platform, attempt)

    content = await run_in_threadpool(load)
    if content is None or attempt_wire.code_digest(content) != digest:
        raise NotFound("No such code for an attempt this worker holds.")
    return Response(content, media_type="application/zip")


@router.post("/renew")
async def renew(identity: Worker, request: Request, platform: PlatformDep) -> dict[str, Any]:
    data = await _body(request)
    lease = request.app.state.server.settings.lease_seconds

    def run() -> tuple[bool, bool]:
        attempt = _owned(platform, identity, data)
        if attempt is None:
            return False, True
        return queue.renew_lease(platform, attempt, lease)

    ours, cancel = await run_in_threadpool(run)
    return {"ours": ours, "cancel": cancel}


@router.post("/logs")
async def logs(identity: Worker, request: Request, platform: PlatformDep) -> dict[str, Any]:
    data = await _body(request, 4 * _JSON_BYTES)
    try:
        batch = attempt_wire.batch_from_wire(data["batch"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"batch: {exc}") from None

    def run() -> bool:
        attempt = _owned(platform, identity, data)
        return attempt is not None and queue.append_logs(
            platform, attempt, list(batch.records), batch.first_seq, batch.used_bytes,
            batch.truncated)

    return {"ok": await run_in_threadpool(run)}


@router.post("/request")
async def job_request(identity: Worker, request: Request, platform: PlatformDep) -> \
        dict[str, Any]:
    """A request of job code (``db``, ``email``), answered here with the server's powers."""
    data = await _body(request, 2 * _JSON_BYTES)
    record = data.get("record")
    if not isinstance(record, dict):
        raise InvalidInput("record must be the job's request", field="record")
    handlers = request.app.state.server.supervisor.requests

    def run() -> dict[str, Any]:
        attempt = _owned(platform, identity, data)
        if attempt is None:
            return {"ok": False, "error": "This attempt is no longer running."}
        handler = handlers.get(record.get("type"))
        if handler is None:
            return {"ok": False, "error": "This kind of request is not available."}
        reply: dict[str, Any] = handler(attempt, record)
        return reply

    return {"reply": await run_in_threadpool(run)}


@router.post("/finish")
async def finish(identity: Worker, request: Request, platform: PlatformDep) -> dict[str, Any]:
    settings = request.app.state.server.settings
    # Artifacts travel base64-encoded: 4/3 of the cap, with the logs' room beside.
    data = await _body(request, settings.artifact_cap_bytes * 4 // 3 + 8 * _JSON_BYTES)
    try:
        result = attempt_wire.result_from_wire(data["result"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"result: {exc}") from None
    if sum(len(a.content) for a in result.artifacts) > settings.artifact_cap_bytes or \
            len(result.artifacts) > settings.artifact_max_files:
        raise InvalidInput("the artifacts exceed the server's caps", field="artifacts")

    def run() -> bool:
        attempt = _owned(platform, identity, data)
        return attempt is not None and queue.finish_attempt(platform, attempt, result) \
            is not None

    return {"ok": await run_in_threadpool(run)}
