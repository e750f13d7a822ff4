"""Calling a job's webhook: one signed JSON POST, any 2xx is success.

The call leaves from the server, not from the sandbox, so the operator's network
rules for job uids do not apply to it: unless allowed, a URL whose host resolves to
a loopback, private, link-local or otherwise non-public address is refused, so a
tenant cannot make the server knock on its own ports, its LAN or a cloud metadata
service. Redirects are not followed (they would skip that check).

- **Resolved once.** The host's addresses are looked up once, checked, and the call
  connects to exactly those (httpcore with a network backend of ours): a name whose
  DNS answer changes between the check and the connect (DNS rebinding) cannot
  redirect the call. The request still names the host (``Host`` header, TLS SNI and
  certificate check), so virtual hosts and HTTPS work as with any client.
- **One deadline for the whole call** (lookup, connect, TLS, request, answer): per-phase
  timeouts alone let a receiver that sends a byte every few seconds hold the sender for
  ever. At the deadline the call's socket is shut down. Only the status line and headers
  are read: the answer's body is never waited for.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import ssl
import threading
import time
import typing
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

if typing.TYPE_CHECKING:
    import httpcore

from batchyard import __version__
from batchyard.runtime.outbound.smtp import DeliveryFailure

# host, port -> the addresses to connect to (the real one is socket.getaddrinfo).
Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_public(host: str, addresses: list[str]) -> None:
    """Refuse a host that is at any non-public address (permanently: retries would not help)."""
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global:
            raise DeliveryFailure(
                f"the webhook host {host!r} is at a non-public address ({address}); the "
                "operator may allow that with BATCHYARD_WEBHOOK_ALLOW_PRIVATE", permanent=True)


class _Deadline:
    """The call's time limit: when it passes, every socket of the call is shut down (not
    closed: the connection still owns its descriptor), so a blocked read or write ends."""

    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds
        self._lock = threading.Lock()
        # Our own duplicates of the sockets' descriptors: never a number reused by another
        # file, however the connection closes its own.
        self._fds: list[int] = []
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        return max(0.0, self._at - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        fd = os.dup(sock.fileno())
        with self._lock:
            self._fds.append(fd)
            if self.expired:
                _shut_down(fd)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for fd in self._fds:
                _shut_down(fd)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()


def _shut_down(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected (any more)
    finally:
        sock.detach()


@functools.cache
def _pinned_backend() -> Callable[[list[str], _Deadline], httpcore.NetworkBackend]:
    """The backend class, made at the first call: importing httpcore costs every server
    ~4.7 MiB, and most never call a webhook."""
    import httpcore

    class _PinnedBackend(httpcore.NetworkBackend):
        """Connects to the checked addresses, whatever host the request names."""

        def __init__(self, addresses: list[str], deadline: _Deadline) -> None:
            self._addresses = addresses
            self._deadline = deadline
            self._backend = httpcore.SyncBackend()

        def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                        local_address: str | None = None,
                        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
                        ) -> httpcore.NetworkStream:
            failure: Exception = httpcore.ConnectError(f"no address for {host}")
            for address in self._addresses:
                left = self._deadline.left()
                try:
                    stream = self._backend.connect_tcp(
                        address, port, timeout=min(timeout or left, left) or 0.001,
                        local_address=local_address, socket_options=socket_options)
                except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                    failure = exc
                    continue
                self._deadline.watch(stream.get_extra_info("socket"))
                return stream
            raise failure

        def connect_unix_socket(self, path: str, timeout: float | None = None,
                                socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None
                                = None) -> httpcore.NetworkStream:
            raise httpcore.ConnectError("webhooks are called over TCP only")

        def sleep(self, seconds: float) -> None:
            time.sleep(seconds)

    return _PinnedBackend


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    import httpx

    return httpx.create_ssl_context()


class WebhookPoster:
    def __init__(self, timeout_seconds: float, allow_private: bool = False,
                 resolver: Resolver = system_resolver,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.timeout_seconds = timeout_seconds
        self.allow_private = allow_private
        self._resolver = resolver
        # Made at the first https call: importing httpx costs every server ~6 MiB.
        self._ssl_context = ssl_context

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST ``body``; return the status, or raise DeliveryFailure (retried unless permanent)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not host:
            raise DeliveryFailure(f"the webhook URL {url!r} is not an http(s) URL",
                                  permanent=True)
        deadline = _Deadline(self.timeout_seconds)
        try:
            addresses = self._resolve(host, parts.port or (443 if parts.scheme == "https"
                                                           else 80), deadline)
            if not self.allow_private:
                check_public(host, addresses)
            return self._send(url, parts.netloc, body, headers, addresses, deadline)
        finally:
            deadline.close()

    def _resolve(self, host: str, port: int, deadline: _Deadline) -> list[str]:
        # On a thread of its own: a lookup cannot be interrupted, only left behind.
        found: list[list[str]] = []
        failed: list[OSError] = []

        def look_up() -> None:
            try:
                found.append(self._resolver(host, port))
            except OSError as exc:
                failed.append(exc)

        thread = threading.Thread(target=look_up, name="webhook-resolve", daemon=True)
        thread.start()
        thread.join(deadline.left())
        if failed:
            raise DeliveryFailure(f"the webhook host {host!r} could not be resolved: "
                                  f"{failed[0]}") from failed[0]
        if not found or not found[0]:
            raise DeliveryFailure(f"the webhook host {host!r} could not be resolved within "
                                  f"{self.timeout_seconds:g} s")
        return found[0]

    def _send(self, url: str, netloc: str, body: bytes, headers: Mapping[str, str],
              addresses: list[str], deadline: _Deadline) -> int:
        # The Host as the URL writes it (an IPv6 literal keeps its brackets); httpcore adds
        # the Content-Length.
        request_headers = [("Host", netloc), ("User-Agent", f"batchyard/{__version__}"),
                           ("Content-Type", "application/json"), *headers.items()]
        timeout = self.timeout_seconds
        import httpcore

        try:
            with httpcore.ConnectionPool(
                    ssl_context=self._ssl_context or _default_ssl_context(),
                    max_connections=1, retries=0,
                    network_backend=_pinned_backend()(addresses, deadline)) as pool, \
                    pool.stream("POST", url, headers=request_headers, content=body,
                                extensions={"timeout": {"connect": timeout, "read": timeout,
                                                        "write": timeout, "pool": timeout}},
                                ) as response:
                status = response.status
        except (httpcore.TimeoutException, httpcore.NetworkError,
                httpcore.ProtocolError) as exc:
            if deadline.expired or isinstance(exc, httpcore.TimeoutException):
                raise DeliveryFailure(f"the webhook {url} did not answer within "
                                      f"{timeout:g} s") from exc
            raise DeliveryFailure(f"the webhook {url} could not be called: "
                                  f"{type(exc).__name__}: {exc}") from exc
        if deadline.expired:  # answered, but only as the deadline passed
            raise DeliveryFailure(f"the webhook {url} did not answer within {timeout:g} s")
        if not 200 <= status < 300:
            raise DeliveryFailure(f"the webhook {url} answered {status}")
        return status

    def close(self) -> None:
        """Nothing is held between calls (a connection per call); kept for the loop's stop."""
