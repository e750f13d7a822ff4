"""Calling a job's webhook: one signed JSON POST, any 2xx is success.

The call leaves from the server, not from the sandbox, so the operator's network
rules for job uids do not apply to it: unless allowed, a URL whose host resolves to
a loopback, private, link-local or otherwise non-public address is refused, so a
tenant cannot make the server knock on its own ports, its LAN or a cloud metadata
service. Redirects are not followed (they would skip that check).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx

from batchyard import __version__
from batchyard.runtime.smtp import DeliveryFailure


def check_public_destination(url: str) -> None:
    """Refuse a URL whose host is, or resolves to, a non-public address."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise DeliveryFailure(f"the webhook host {host!r} could not be resolved: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global:
            raise DeliveryFailure(
                f"the webhook host {host!r} is at a non-public address ({address}); the "
                "operator may allow that with BATCHYARD_WEBHOOK_ALLOW_PRIVATE", permanent=True)


class WebhookPoster:
    def __init__(self, timeout_seconds: float, allow_private: bool = False) -> None:
        self.allow_private = allow_private
        self._client = httpx.Client(timeout=timeout_seconds, follow_redirects=False,
                                    headers={"User-Agent": f"batchyard/{__version__}"})

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST ``body``; return the status, or raise DeliveryFailure (retried unless permanent)."""
        if not self.allow_private:
            check_public_destination(url)
        try:
            response = self._client.post(url, content=body, headers={
                "Content-Type": "application/json", **headers})
        except httpx.HTTPError as exc:
            raise DeliveryFailure(f"the webhook {url} could not be called: "
                                  f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryFailure(f"the webhook {url} answered {response.status_code}")
        return response.status_code

    def close(self) -> None:
        self._client.close()
