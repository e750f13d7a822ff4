"""``Client``: one method per API call, JSON in and out, errors as ``ApiError``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import httpx

from batchyard.client.errors import ApiError, Unreachable
from batchyard.client.types import (
    Artifact,
    CodeVersion,
    Execution,
    Job,
    JobItem,
    LogLine,
    Me,
    Variable,
)

UPLOAD_CHUNK = 64 * 1024
# The server sends a keep-alive comment every second or so while a job is quiet.
FOLLOW_READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class LogEvent:
    """One event of a followed log: a ``line``, or the ``end`` with the final status."""

    line: LogLine | None = None
    status: str | None = None


class Client:
    def __init__(self, url: str, key: str, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None,
                 on_request: Callable[[str, str], None] | None = None) -> None:
        self.url = url.rstrip("/")
        # on_request(method, path): a hook that sees every call (deploy counts its requests).
        self._on_request = on_request
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {key}",
                                           "User-Agent": "batchyard-client"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._on_request is not None:
            self._on_request(method, path)
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"{self.url} did not answer: {exc or type(exc).__name__}") \
                from exc
        _raise_for_error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    # --- account -------------------------------------------------------------------------
    def me(self) -> Me:
        return cast(Me, self._json("GET", "/api/v1/me"))

    def usage(self, date: str | None = None) -> dict[str, Any]:
        params = {"date": date} if date else None
        return cast(dict[str, Any], self._json("GET", "/api/v1/usage", params=params))

    def audit(self, job_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if job_id:
            params["job_id"] = job_id
        return cast(list[dict[str, Any]],
                    self._json("GET", "/api/v1/audit", params=params)["items"])

    # --- jobs ----------------------------------------------------------------------------
    def jobs(self) -> list[JobItem]:
        items: list[JobItem] = []
        cursor: str | None = None
        while True:
            page = self._json("GET", "/api/v1/jobs", params={"cursor": cursor} if cursor
                              else None)
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    def find_job(self, name: str) -> JobItem | None:
        return next((item for item in self.jobs() if item["name"] == name), None)

    def job(self, job_id: str) -> Job:
        return cast(Job, self._json("GET", f"/api/v1/jobs/{job_id}"))

    def create_job(self, name: str, description: str | None = None) -> Job:
        body: dict[str, Any] = {"name": name}
        if description:
            body["description"] = description
        return cast(Job, self._json("POST", "/api/v1/jobs", json=body))

    def update_job(self, job_id: str, **fields: Any) -> Job:
        return cast(Job, self._json("PATCH", f"/api/v1/jobs/{job_id}", json=fields))

    def upload_code(self, job_id: str, data: bytes,
                    progress: Callable[[int, int], None] | None = None) -> CodeVersion:
        """PUT the zip as the raw body; ``progress(sent, total)`` as chunks leave."""

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(data), UPLOAD_CHUNK):
                chunk = data[start:start + UPLOAD_CHUNK]
                yield chunk
                if progress is not None:
                    progress(start + len(chunk), len(data))

        return cast(CodeVersion, self._json(
            "PUT", f"/api/v1/jobs/{job_id}/code", content=chunks(),
            headers={"Content-Type": "application/zip", "Content-Length": str(len(data))}))

    def code_versions(self, job_id: str) -> list[CodeVersion]:
        return cast(list[CodeVersion],
                    self._json("GET", f"/api/v1/jobs/{job_id}/code/versions")["items"])

    def download_code(self, job_id: str, version: int) -> bytes:
        return self._send("GET", f"/api/v1/jobs/{job_id}/code/versions/{version}").content

    def put_settings(self, job_id: str, settings: dict[str, Any]) -> dict[str, Any]:
        return cast(dict[str, Any],
                    self._json("PUT", f"/api/v1/jobs/{job_id}/settings", json=settings))

    def variables(self, job_id: str) -> list[Variable]:
        return cast(list[Variable],
                    self._json("GET", f"/api/v1/jobs/{job_id}/variables")["variables"])

    def put_variables(self, job_id: str, variables: list[dict[str, Any]]) -> list[Variable]:
        return cast(list[Variable], self._json(
            "PUT", f"/api/v1/jobs/{job_id}/variables", json={"variables": variables}
        )["variables"])

    def put_schedule(self, job_id: str, schedule: dict[str, Any]) -> dict[str, Any]:
        return cast(dict[str, Any],
                    self._json("PUT", f"/api/v1/jobs/{job_id}/schedule", json=schedule))

    def publish(self, job_id: str) -> Job:
        return cast(Job, self._json("POST", f"/api/v1/jobs/{job_id}/publish"))

    def unpublish(self, job_id: str) -> Job:
        return cast(Job, self._json("POST", f"/api/v1/jobs/{job_id}/unpublish"))

    def invoke(self, job_id: str, body: Any = None,
               query: dict[str, str] | None = None) -> dict[str, Any]:
        return cast(dict[str, Any], self._json(
            "POST", f"/api/v1/jobs/{job_id}/invoke", params=query,
            content=json.dumps(body if body is not None else {}),
            headers={"Content-Type": "application/json"}))

    # --- executions ----------------------------------------------------------------------
    def executions(self, job_id: str | None = None, status: str | None = None,
                   limit: int = 50) -> list[Execution]:
        params: dict[str, Any] = {"limit": limit}
        if job_id:
            params["job_id"] = job_id
        if status:
            params["status"] = status
        return cast(list[Execution],
                    self._json("GET", "/api/v1/executions", params=params)["items"])

    def execution(self, execution_id: str) -> Execution:
        return cast(Execution, self._json("GET", f"/api/v1/executions/{execution_id}"))

    def logs(self, execution_id: str, after: int | None = None,
             level: str | None = None) -> dict[str, Any]:
        """One page: ``{items, truncated, finished}``."""
        params: dict[str, Any] = {}
        if after is not None:
            params["after"] = after
        if level:
            params["level"] = level
        return cast(dict[str, Any], self._json(
            "GET", f"/api/v1/executions/{execution_id}/logs", params=params))

    def follow_logs(self, execution_id: str, after: int | None = None,
                    level: str | None = None) -> Iterator[LogEvent]:
        """Server-sent events: each log line as it is stored, then the final status."""
        params: dict[str, Any] = {}
        if after is not None:
            params["after"] = after
        if level:
            params["level"] = level
        path = f"/api/v1/executions/{execution_id}/logs"
        if self._on_request is not None:
            self._on_request("GET", path)
        timeout = httpx.Timeout(30.0, read=FOLLOW_READ_TIMEOUT)
        try:
            with self._http.stream("GET", path, params=params, timeout=timeout,
                                   headers={"Accept": "text/event-stream"}) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_error(response)
                event, data = "message", list[str]()
                for line in response.iter_lines():
                    if line.startswith(":"):
                        continue
                    if line == "":
                        if data:
                            yield _event(event, "\n".join(data))
                        event, data = "message", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
        except httpx.TransportError as exc:
            raise Unreachable(f"{self.url} did not answer: {exc or type(exc).__name__}") \
                from exc

    def cancel(self, execution_id: str) -> Execution:
        return cast(Execution,
                    self._json("POST", f"/api/v1/executions/{execution_id}/cancel"))

    def artifacts(self, execution_id: str) -> list[Artifact]:
        return cast(list[Artifact], self._json(
            "GET", f"/api/v1/executions/{execution_id}/artifacts")["items"])

    def download_artifact(self, execution_id: str, name: str) -> bytes:
        return self._send("GET", f"/api/v1/executions/{execution_id}/artifacts/{name}").content


def _event(kind: str, data: str) -> LogEvent:
    payload = json.loads(data)
    if kind == "end":
        return LogEvent(status=str(payload.get("status")))
    return LogEvent(line=cast(LogLine, payload))


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
        raise ApiError(response.status_code, str(error.get("code", "error")),
                       str(error.get("message", "")), details)
    raise ApiError(response.status_code, f"http_{response.status_code}",
                   response.text[:500] or response.reason_phrase)
