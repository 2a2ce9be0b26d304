"""Relaying an engine's answer to the client, once an attempt succeeded.

Non-streamed bodies (read in full by the attempt) go in one send; SSE chunk by chunk as
they arrive. A stream that breaks after bytes were sent ends with an OpenAI-shaped error
event and no ``[DONE]``; a client that left is recorded as 499.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sage.unified.gateway._asgi import Send
from sage.unified.gateway._attempts import Attempt, ClientWatch
from sage.unified.gateway._errors import sse_error_event
from sage.unified.gateway._headers import downstream_headers
from sage.unified.gateway._metrics import GatewayMetrics
from sage.unified.gateway.routing import (
    BackendState,
    RoutingLedger,
    RoutingRequest,
    UsageSniffer,
    find_usage,
)
from sage.unified.gateway.upstream import UpstreamError
from sage.unified.sdk.models import EngineKind

__all__ = ["ProxyRequest", "Relay"]

log = logging.getLogger("sage.unified.gateway")


class ProxyRequest:
    """What one proxied request carries from parsing to relaying."""

    __slots__ = (
        "authorization",
        "body",
        "forwarded",
        "kind",
        "model",
        "path",
        "request_id",
        "routing",
        "session_key",
        "started",
        "want_decision",
    )

    def __init__(
        self,
        model: str,
        kind: EngineKind,
        path: bytes,
        body: bytes,
        forwarded: list[tuple[bytes, bytes]],
        session_key: str | None,
        request_id: bytes,
        started: float,
        authorization: bytes | None,
        want_decision: bool = False,
    ) -> None:
        self.model = model
        self.kind = kind
        self.path = path
        self.body = body
        self.forwarded = forwarded
        self.session_key = session_key
        self.request_id = request_id
        self.started = started
        self.authorization = authorization
        """The client's ``Authorization`` value (the session hook derives its owner)."""
        self.want_decision = want_decision
        """The client sent ``X-Sage-Route: 1``: answer with ``X-Sage-Route-Decision``."""
        self.routing: RoutingRequest | None = None
        """Built when routing starts (after the session hook may have changed the body)."""


class Relay:
    """Sends the answer of a successful attempt to the client and records the outcome.

    Args:
        metrics: where outcomes are counted.
        on_failure: a backend failed (5xx, or a stream broke): counts toward ejection.
        on_success: a backend answered well.
        expose_backend: add ``X-Sage-Backend`` to responses.
        ledger: where each outcome is recorded with its routing decision (``None``: off).
    """

    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        on_failure: Callable[[BackendState], None],
        on_success: Callable[[BackendState], None],
        expose_backend: bool,
        ledger: RoutingLedger | None = None,
    ) -> None:
        self.metrics = metrics
        self._on_failure = on_failure
        self._on_success = on_success
        self._expose_backend = expose_backend
        self._ledger = ledger

    async def relay(
        self,
        send: Send,
        watch: ClientWatch,
        backend: BackendState,
        attempt: Attempt,
        request: ProxyRequest,
    ) -> None:
        response = attempt.response
        assert response is not None
        status = response.status
        out_headers = downstream_headers(
            response.headers,
            request_id=request.request_id,
            backend_id=backend.key if self._expose_backend else None,
        )
        routing = request.routing
        if request.want_decision and routing is not None and self._ledger is not None:
            decision = self._ledger.decision_header(routing, backend.key)
            out_headers.append((b"x-sage-route-decision", decision))
        payload = attempt.payload
        try:
            if payload is None:
                await self._relay_stream(send, watch, backend, attempt, out_headers, request)
                return
            if routing is not None:
                routing.first_byte(time.monotonic() - request.started)
                routing.usage = find_usage(payload)
            out_headers.append((b"content-length", str(len(payload)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": out_headers})
            await send({"type": "http.response.body", "body": payload, "more_body": False})
            self._finished(backend, status)
            self._done(request, backend, status)
        finally:
            response.close()

    async def _relay_stream(
        self,
        send: Send,
        watch: ClientWatch,
        backend: BackendState,
        attempt: Attempt,
        out_headers: list[tuple[bytes, bytes]],
        request: ProxyRequest,
    ) -> None:
        response = attempt.response
        assert response is not None
        status = response.status
        out_headers.append((b"x-accel-buffering", b"no"))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        first = True
        sniffer = UsageSniffer()
        feed = sniffer.feed
        routing = request.routing
        try:
            async for chunk in response:
                if first:
                    first = False
                    ttft = time.monotonic() - request.started
                    self.metrics.first_token(request.model, ttft)
                    if routing is not None:
                        routing.first_byte(ttft)
                feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            if watch.gone:
                # The client left; closing the upstream connection was our own doing.
                self._done(request, backend, 499)
                return
            self._on_failure(backend)
            self.metrics.stream_interrupted(request.model)
            log.warning("stream from %s broke after the response started: %s", backend.key, exc)
            await send(
                {
                    "type": "http.response.body",
                    "body": sse_error_event(
                        f"the engine stopped answering mid-stream ({type(exc).__name__}); the response is incomplete"
                    ),
                    "more_body": False,
                }
            )
            self._done(request, backend, 502)
            return
        if routing is not None:
            routing.usage = sniffer.usage()
        if watch.gone:
            self._done(request, backend, 499)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._finished(backend, status)
        self._done(request, backend, status)

    def _done(self, request: ProxyRequest, backend: BackendState, status: int) -> None:
        self.metrics.request_done(
            request.model, backend.key, status, time.monotonic() - request.started
        )
        if self._ledger is not None and request.routing is not None:
            self._ledger.record(request.routing, backend.key, status)

    def _finished(self, backend: BackendState, status: int) -> None:
        if status >= 500:
            self._on_failure(backend)
        else:
            self._on_success(backend)
