"""Relaying an engine's answer to the client, once an attempt succeeded.

Non-streamed bodies (read in full by the attempt) go in one send; SSE chunk by chunk as
they arrive. A stream that breaks after bytes were sent ends with an OpenAI-shaped error
event and no ``[DONE]``; a client that left is recorded as 499.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sage.unified.gateway._asgi import Send
from sage.unified.gateway._attempts import Attempt, ClientWatch
from sage.unified.gateway._errors import sse_error_event
from sage.unified.gateway._headers import downstream_headers
from sage.unified.gateway._metrics import GatewayMetrics
from sage.unified.gateway._stalls import EngineHung, StallTicket
from sage.unified.gateway._upstream_api import UpstreamReply
from sage.unified.gateway.routing import BackendState
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
        "session_key",
        "started",
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


class Relay:
    """Sends the answer of a successful attempt to the client and records the outcome.

    Args:
        metrics: where outcomes are counted.
        on_failure: a backend failed (5xx, or a stream broke): counts toward ejection.
        on_success: a backend answered well.
        expose_backend: add ``X-Sage-Backend`` to responses.
    """

    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        on_failure: Callable[[BackendState], None],
        on_success: Callable[[BackendState], None],
        expose_backend: bool,
    ) -> None:
        self.metrics = metrics
        self._on_failure = on_failure
        self._on_success = on_success
        self._expose_backend = expose_backend

    async def relay(
        self,
        send: Send,
        watch: ClientWatch,
        backend: BackendState,
        attempt: Attempt,
        request: ProxyRequest,
        ticket: StallTicket | None = None,
    ) -> None:
        """Send the answer of ``attempt`` (``ticket`` watches a stream for a hung engine)."""
        response = attempt.response
        assert response is not None
        status = response.status
        out_headers = downstream_headers(
            response.headers,
            request_id=request.request_id,
            backend_id=backend.key if self._expose_backend else None,
        )
        payload = attempt.payload
        try:
            if payload is None:
                await self._relay_stream(
                    send, watch, backend, attempt, out_headers, request, ticket
                )
                return
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
        ticket: StallTicket | None,
    ) -> None:
        response = attempt.response
        assert response is not None
        status = response.status
        out_headers.append((b"x-accel-buffering", b"no"))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        try:
            await self._pump(send, response, request, ticket)
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
        if watch.gone:
            self._done(request, backend, 499)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._finished(backend, status)
        self._done(request, backend, status)

    async def _pump(
        self,
        send: Send,
        response: UpstreamReply,
        request: ProxyRequest,
        ticket: StallTicket | None,
    ) -> None:
        """Relay the stream's chunks; a hung engine (the stall monitor cancelled us)
        raises :class:`EngineHung` like any broken stream."""
        first = True
        try:
            async for chunk in response:
                if ticket is not None:
                    ticket.progress()
                if first:
                    first = False
                    self.metrics.first_token(request.model, time.monotonic() - request.started)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if ticket is not None and ticket.stalled and task is not None and task.uncancel() == 0:
                raise EngineHung("the engine stopped sending and /health timed out") from None
            raise

    def _done(self, request: ProxyRequest, backend: BackendState, status: int) -> None:
        self.metrics.request_done(
            request.model, backend.key, status, time.monotonic() - request.started
        )

    def _finished(self, backend: BackendState, status: int) -> None:
        if status >= 500:
            self._on_failure(backend)
        else:
            self._on_success(backend)
