"""The worker port over HTTP(S): a worker host that holds a worker token and no database
credentials talks to the control plane's /api/v1/worker/* routes (api/routes_worker.py).

Code zips are fetched once per SHA-256 and kept in ``cache_dir`` (verified on arrival);
the requirements environments are built and cached by the host's own environment cache,
keyed by the requirements' hash, as on any worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from batchyard.domain import attempt_wire
from batchyard.domain.attempts import AttemptResult, ClaimedAttempt, LogBatch, WorkerPortClosed
from batchyard.domain.executions import AttemptOutcome
from batchyard.errors import internal_error_message, new_reference

log = logging.getLogger("batchyard.remote")
# How long the control plane may hold a claim open when nothing is due (long-poll).
CLAIM_WAIT_SECONDS = 10.0
CODE_CACHE_FILES = 256


class WorkerRefused(WorkerPortClosed):
    """The control plane refused this worker's token (revoked or unknown)."""


class RemotePort:
    def __init__(self, server_url: str, token: str, cache_dir: Path,
                 timeout: float = 30.0, claim_wait: float = CLAIM_WAIT_SECONDS,
                 labels: tuple[str, ...] = ()) -> None:
        self.claim_wait = claim_wait
        self.labels = labels
        self.cache_dir = cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._client = httpx.Client(
            base_url=server_url.rstrip("/") + "/api/v1/worker",
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, read=timeout + claim_wait),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._client.request(method, path, **kwargs)
        if response.status_code == 401:
            raise WorkerRefused(response.text)
        if response.status_code == 503:
            # Overloaded: back off as told, then the caller's loop tries again.
            retry = response.headers.get("retry-after", "1")
            time.sleep(min(float(retry) if retry.isdigit() else 1.0, 10.0))
        response.raise_for_status()
        return response

    def hello(self) -> dict[str, Any]:
        data: dict[str, Any] = self._call("GET", "/hello").json()
        return data

    def heartbeat(self, node: str, capacity: int, running: int,
                  labels: tuple[str, ...]) -> None:
        self._call("POST", "/heartbeat", json={"node": node, "capacity": capacity,
                                               "running": running, "labels": list(labels)})

    # --- the port --------------------------------------------------------------------
    def claim(self, worker: str, lease_seconds: float) -> ClaimedAttempt | None:
        response = self._call("POST", "/claim", json={
            "worker": worker, "wait_seconds": self.claim_wait, "labels": list(self.labels)})
        if response.status_code == 204:
            return None
        data = response.json()["attempt"]
        try:
            code = self._code(data)
        except WorkerRefused:
            raise
        except Exception:
            # The attempt is ours now: end it at once (failed, retried if retries remain)
            # rather than leave it to lapse into worker_lost a lease later.
            reference = new_reference()
            log.exception("the code of attempt %s/%s could not be fetched (reference %s)",
                          data["execution_id"], data["number"], reference)
            result = AttemptResult(AttemptOutcome.FAILED, 0.0, None,
                                   internal_error_message(reference), datetime.now(UTC))
            with contextlib.suppress(httpx.HTTPError, WorkerRefused):
                self._finish({key: data[key] for key in ("execution_id", "number", "worker")},
                             result)
            return None
        return attempt_wire.claim_from_wire(data, code)

    def renew(self, attempts: list[ClaimedAttempt],
              lease_seconds: float) -> list[tuple[bool, bool] | None]:
        # One call per attempt (the protocol's /renew); one that fails is None, the others
        # are still renewed.
        renewed: list[tuple[bool, bool] | None] = []
        for attempt in attempts:
            try:
                data = self._call("POST", "/renew", json=_ident(attempt)).json()
            except WorkerPortClosed:
                raise
            except Exception:
                log.warning("lease renewal of %s/%d failed", attempt.execution_id,
                            attempt.number, exc_info=True)
                renewed.append(None)
                continue
            renewed.append((bool(data["ours"]), bool(data["cancel"])))
        return renewed

    def append_logs(self, attempt: ClaimedAttempt, batch: LogBatch) -> bool:
        return bool(self._call("POST", "/logs", json={
            **_ident(attempt), "batch": attempt_wire.batch_to_wire(batch)}).json()["ok"])

    def finish(self, attempt: ClaimedAttempt, result: AttemptResult) -> bool:
        return self._finish(_ident(attempt), result)

    def _finish(self, ident: Mapping[str, Any], result: AttemptResult) -> bool:
        return bool(self._call("POST", "/finish", json={
            **ident, "result": attempt_wire.result_to_wire(result)}).json()["ok"])

    def request(self, attempt: ClaimedAttempt, record: Mapping[str, Any]) -> dict[str, Any]:
        """A request of the job (db, email), run by the control plane."""
        try:
            reply: dict[str, Any] = self._call("POST", "/request", json={
                **_ident(attempt), "record": dict(record)}).json()["reply"]
        except (httpx.HTTPError, WorkerRefused) as exc:
            log.warning("job request over the worker protocol failed: %s", exc)
            return {"ok": False, "error": "The platform could not be reached to answer "
                                          "this request; try again."}
        return reply

    # --- code cache ------------------------------------------------------------------
    def _code(self, data: dict[str, Any]) -> bytes:
        digest = str(data["code_sha256"])
        if not (len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise ValueError("the control plane sent a malformed code digest")
        path = self.cache_dir / f"{digest}.zip"
        with contextlib.suppress(OSError):
            content = path.read_bytes()
            if attempt_wire.code_digest(content) == digest:
                os.utime(path)
                return content
        content = self._call("GET", f"/code/{digest}", params={
            "execution_id": data["execution_id"], "number": data["number"],
            "worker": data["worker"]}).content
        if attempt_wire.code_digest(content) != digest:
            raise ValueError("the code received does not match its digest")
        # A name of its own for each writer: the slots of this process may fetch the same
        # zip at once, and a shared partial name let one rename the other's file away.
        handle, partial = tempfile.mkstemp(dir=self.cache_dir, prefix=f"{digest}.",
                                           suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(content)
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        self._evict()
        return content

    def _evict(self) -> None:
        """Least recently used zips beyond CODE_CACHE_FILES go (they are fetched again)."""
        # Other slots evict at the same time: a zip gone between the listing and its
        # stat or unlink is simply gone (an error here would fail a good attempt).
        dated: list[tuple[float, Path]] = []
        for entry in self.cache_dir.glob("*.zip"):
            with contextlib.suppress(OSError):
                dated.append((entry.stat().st_mtime, entry))
        dated.sort()
        for _mtime, stale in dated[:-CODE_CACHE_FILES]:
            with contextlib.suppress(OSError):
                stale.unlink()


def _ident(attempt: ClaimedAttempt) -> dict[str, Any]:
    return {"execution_id": attempt.execution_id, "number": attempt.number,
            "worker": attempt.worker}
