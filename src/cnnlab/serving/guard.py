"""What stands between the network and the model: admission control, an optional API key, the
Host-header check and uvicorn's connection limits.

- :class:`Admission`: at most ``max_in_flight`` image requests are worked on at once (body held,
  decoding, queued for the model); one more is answered ``503 busy`` at once, with Retry-After,
  instead of queueing without bound. Endpoints that take images wrap their work in ``slot()``.
- :func:`api_key_middleware`: with an API key set, every route but ``/health`` needs
  ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (compared in constant time).
- Host names: Starlette's ``TrustedHostMiddleware`` (DNS rebinding of a loopback server).
- :func:`uvicorn_options`: ``limit_concurrency`` (uvicorn answers 503 above it), the keep-alive
  timeout, a cap on the header size and a header timeout (a connection that has not sent a whole
  request head within ``header_timeout_s`` is closed: slowly trickled headers).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.trustedhost import TrustedHostMiddleware

from cnnlab.serving.errors import ApiError, error_response

#: Host names a server bound to a loopback address answers to by default.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Routes reachable without the API key (liveness probes).
OPEN_PATHS = frozenset({"/health"})


class Admission:
    """A count of image requests in progress; ``slot()`` refuses one past ``max_in_flight`` with 503.

    Only touched from the event loop's thread, so a plain counter is enough."""

    def __init__(self, max_in_flight: int = 16):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.refused = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.in_flight >= self.max_in_flight:
            self.refused += 1
            raise ApiError(503, "busy", f"the server is working on {self.in_flight} requests (its limit); "
                                        "retry in a moment")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def to_dict(self) -> dict[str, int]:
        return {"in_flight": self.in_flight, "max_in_flight": self.max_in_flight, "refused": self.refused}


def install_guards(app: FastAPI, *, api_key: str | None = None, allowed_hosts: list[str] | None = None) -> None:
    """The API-key check and the Host-header check (each only when configured)."""
    if api_key:
        expected = api_key.encode()

        @app.middleware("http")
        async def require_key(request, call_next):  # noqa: ANN001, ANN202
            if request.url.path not in OPEN_PATHS:
                auth = request.headers.get("authorization", "")
                given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
                if not hmac.compare_digest(given.encode(), expected):
                    return error_response(401, "unauthorized", "missing or wrong API key "
                                                               "(send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')")
            return await call_next(request)

    if allowed_hosts:
        # Added last, so it runs first: a request for another host name is refused (400) before anything else.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))


def default_allowed_hosts(bind_host: str) -> list[str] | None:
    """Loopback names for a server bound to loopback (DNS rebinding), else None (no check)."""
    return list(LOOPBACK_NAMES) if bind_host in LOOPBACK_HOSTS else None


def header_timeout_protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head within
    ``header_timeout_s`` of connecting, or of its previous response (uvicorn itself only times out
    idle keep-alive connections, and any byte received resets that timer: a head trickled one byte
    at a time would hold the connection for ever). Subclassing uvicorn's protocol class is the
    documented way to change it (``uvicorn.Config(http=...)``)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        _head_timer: Any = None

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_deadline)

        def _head_deadline(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # still no complete request head

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

    return HeaderTimeoutH11Protocol


def uvicorn_options(limit_concurrency: int, header_timeout_s: float, keep_alive_s: int = 5) -> dict[str, Any]:
    return {"limit_concurrency": limit_concurrency, "timeout_keep_alive": keep_alive_s,
            "h11_max_incomplete_event_size": 16 * 1024, "http": header_timeout_protocol(header_timeout_s)}
