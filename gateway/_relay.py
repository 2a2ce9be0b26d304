"""Relaying an engine's answer to the client, once an attempt succeeded.

Non-streamed bodies (read in full by the attempt) go in one send; SSE chunk by chunk as
they arrive. A stream that breaks after bytes were sent ends with an OpenAI-shaped error
event and no ``[DONE]``; a client that left is recorded as 499.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sage.unified.gateway._asgi import Send
from sage.unified.gateway._attempts import Attempt, ClientWatch
from sage.unified.gateway._continuation import SpliceEditor, StreamTranscript, continuation_body
from sage.unified.gateway._errors import sse_error_event
from sage.unified.gateway._headers import downstream_headers
from sage.unified.gateway._metrics import GatewayMetrics
from sage.unified.gateway._stalls import EngineDrained, EngineHung, StallTicket
from sage.unified.gateway._upstream_api import UpstreamReply
from sage.unified.gateway.routing import (
    BackendState,
    RoutingLedger,
    RoutingRequest,
    find_usage,
)
from sage.unified.gateway.upstream import UpstreamError
from sage.unified.sdk.models import EngineKind

__all__ = ["MAX_CONTINUATIONS", "ProxyRequest", "Relay", "Resume"]

MAX_CONTINUATIONS = 2
"""Times one stream may be continued on another engine."""

Resume = Callable[
    [
        "ProxyRequest",
        bytes,
        list[str],
        ClientWatch,
        Callable[["UpstreamReply", "StallTicket | None"], Awaitable[None]],
    ],
    Awaitable[str],
]
"""``resume(request, body, tried, watch, relay)``: send ``body`` to a backend not in
``tried`` (appending it) and run ``relay`` on its stream; ``"completed"``, ``"broken"`` (it broke
after starting), or why it could not start (``"no_backend"``, ``"no_budget"``,
``"failed"``)."""

log = logging.getLogger("sage.unified.gateway")


class ProxyRequest:
    """What one proxied request carries from parsing to relaying."""

    __slots__ = (
        "authorization",
        "body",
        "continuation",
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
        kind: EngineKind | None,
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
        self.continuation: dict[str, Any] | None = None
        """The decoded body when a broken stream of this request may be continued."""
        self.want_decision = want_decision
        """The client sent ``X-Sage-Route: 1``: answer with ``X-Sage-Route-Decision``."""
        self.routing: RoutingRequest | None = None
        """Built when routing starts (after the session hook may have changed the body)."""

    @property
    def kind_is_chat(self) -> bool:
        return self.path == b"/v1/chat/completions"


class Relay:
    """Sends the answer of a successful attempt to the client and records the outcome.

    Args:
        metrics: where outcomes are counted.
        on_failure: a backend failed (5xx, or a stream broke): counts toward ejection.
        on_success: a backend answered well.
        expose_backend: add ``X-Sage-Backend`` to responses.
        resume: sends a continuation of a broken stream to another backend (see
            :meth:`DataPlane.resume`); ``None``: streams are never continued.
        ledger: where each outcome is recorded with its routing decision (``None``: off).
    """

    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        on_failure: Callable[[BackendState], None],
        on_success: Callable[[BackendState], None],
        expose_backend: bool,
        resume: Resume | None = None,
        ledger: RoutingLedger | None = None,
    ) -> None:
        self.metrics = metrics
        self._on_failure = on_failure
        self._on_success = on_success
        self._expose_backend = expose_backend
        self._resume = resume
        self._ledger = ledger

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
        routing = request.routing
        if request.want_decision and routing is not None and self._ledger is not None:
            decision = self._ledger.decision_header(routing, backend.key)
            out_headers.append((b"x-sage-route-decision", decision))
        payload = attempt.payload
        try:
            if payload is None:
                await self._relay_stream(
                    send, watch, backend, attempt, out_headers, request, ticket
                )
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
        ticket: StallTicket | None,
    ) -> None:
        response = attempt.response
        assert response is not None
        status = response.status
        out_headers.append((b"x-accel-buffering", b"no"))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        for chunk in attempt.prefix or ():  # the start of a body too large to hold
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        transcript = None
        if request.continuation is not None:
            # Whole events only: a continued stream must never leave half an event.
            transcript = StreamTranscript(request.kind_is_chat)
            if ticket is not None:
                ticket.continuable = True
        try:
            tail = await self._pump(
                send, response, request, ticket, transcript.feed if transcript else None
            )
        except UpstreamError as exc:
            if watch.gone:
                # The client left; closing the upstream connection was our own doing.
                self._done(request, backend, 499)
                return
            if not isinstance(exc, EngineDrained):
                self._on_failure(backend)
                log.warning("stream from %s broke after the response started: %s", backend.key, exc)
            if transcript is not None and await self._continue(
                send, watch, request, backend, transcript
            ):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                self._done(request, backend, status)
                return
            self.metrics.stream_interrupted(request.model)
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
        if request.routing is not None:
            request.routing.usage = find_usage(tail)
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
        shape: Callable[[bytes], bytes] | None = None,
        *,
        first: bool = True,
    ) -> bytes:
        """Relay the stream's chunks (through ``shape`` when given); the last three chunks
        read, where the engine's usage is (see :mod:`.routing._usage`). A hung engine (the
        stall monitor cancelled us) raises :class:`EngineHung` like any broken stream."""
        # Per chunk, so inlined: the ticket's progress and the usage's window.
        monotonic = time.monotonic
        older = old = last = b""
        try:
            async for chunk in response:
                if ticket is not None:
                    ticket.at = monotonic()
                if first:
                    first = False
                    ttft = monotonic() - request.started
                    self.metrics.first_token(request.model, ttft)
                    if request.routing is not None:
                        request.routing.first_byte(ttft)
                older, old, last = old, last, chunk
                if shape is not None:
                    chunk = shape(chunk)
                    if not chunk:
                        continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            return older + old + last
        except asyncio.CancelledError:
            task = asyncio.current_task()
            ours = ticket is not None and (ticket.stalled or ticket.handoff)
            if ours and task is not None and task.uncancel() == 0:
                assert ticket is not None
                if ticket.handoff:
                    raise EngineDrained("the engine was drained; the stream moves on") from None
                raise EngineHung("the engine stopped sending and /health timed out") from None
            raise

    async def _continue(
        self,
        send: Send,
        watch: ClientWatch,
        request: ProxyRequest,
        broken: BackendState,
        transcript: StreamTranscript,
    ) -> bool:
        """Continue a broken stream on other engines; whether it reached its end."""
        body = request.continuation
        if self._resume is None or body is None or transcript.finished or transcript.done:
            return False
        transcripts = [transcript]
        tried = [broken.key]
        for continued in range(1, MAX_CONTINUATIONS + 1):
            chat = request.kind_is_chat
            text = "".join(t.text for t in transcripts)
            tokens = sum(t.tokens for t in transcripts)
            following = StreamTranscript(chat)
            editor = SpliceEditor(chat, transcript.stream_id, transcript.created, continued)

            shape = _spliced(editor, following)

            async def relay(
                reply: UpstreamReply,
                ticket: StallTicket | None,
                shape: Callable[[bytes], bytes] = shape,
            ) -> None:
                await self._pump(send, reply, request, ticket, shape, first=False)

            outcome = await self._resume(
                request, continuation_body(body, chat, text, tokens), tried, watch, relay
            )
            self.metrics.stream_continued(request.model, outcome)
            if outcome == "completed":
                return True
            if outcome != "broken":
                return False
            transcripts.append(following)
        return False

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


def _spliced(editor: SpliceEditor, transcript: StreamTranscript) -> Callable[[bytes], bytes]:
    """Whole events of the next engine, followed by ``transcript``, as the client sees them."""
    return lambda data: editor.edit(transcript.feed(data))
