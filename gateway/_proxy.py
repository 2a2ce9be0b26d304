"""The data plane: one ASGI callable per OpenAI endpoint, relaying to an engine.

This is the hot path of the product. It runs as Litestar ``asgi`` route handlers (one app,
one port) over an :class:`~._attempts.Upstream` (the lean client in ``gateway.upstream``);
the body is read once and only ``model``, ``stream`` and the session key are decoded from
it. It is asyncio-only, like the upstream client and the server under it
(``gateway.server``).

Per request:

1. API key (constant time), header and body limits (413/431), body peek (400).
2. Candidates for ``(model, kind)`` from the routing state: none → 404
   ``model_not_found`` (unknown model) or 503 + ``Retry-After`` (known, none READY).
3. Pick with the routing policy; send (:func:`~._attempts.send_attempt`). A failure
   before any response byte reached the client is retried on a *different* backend
   after a jittered ~50 ms, as :func:`~._retry_rules.plan_retry` decides. 4xx pass
   through unchanged and never retry.
4. Relay: non-streamed bodies in one send; SSE chunk by chunk as they arrive. A stream
   that breaks after bytes were sent ends with an OpenAI-shaped error event and no
   ``[DONE]``. A client that disconnects (streamed or not) closes the upstream
   connection at once, which is how vLLM learns to abort the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

from sage.unified.gateway._asgi import Receive, Scope, Send, send_json
from sage.unified.gateway._attempts import (
    Attempt,
    ClientWatch,
    Origin,
    Upstream,
    send_attempt,
)
from sage.unified.gateway._errors import (
    GatewayError,
    error_bytes,
)
from sage.unified.gateway._intake import parse_request
from sage.unified.gateway._metrics import GatewayMetrics
from sage.unified.gateway._proxy_config import ProxyConfig
from sage.unified.gateway._refusals import gave_up_error, gave_up_status, unroutable_error
from sage.unified.gateway._relay import ProxyRequest, Relay
from sage.unified.gateway._retry_rules import FailureKind, plan_retry
from sage.unified.gateway._stalls import StallMonitor, StallTicket
from sage.unified.gateway._upstream_api import UpstreamReply, parse_origin
from sage.unified.gateway.routing import (
    BackendState,
    OutlierDetector,
    RetryBudget,
    RetryThrottle,
    RoutingLedger,
    RoutingPolicy,
    RoutingRequest,
    RoutingState,
)
from sage.unified.gateway.sessions import SessionChat
from sage.unified.gateway.upstream import UpstreamError
from sage.unified.sdk.models import EngineKind

__all__ = ["DataPlane", "ProxyConfig", "Receive", "Scope", "Send"]

log = logging.getLogger("sage.unified.gateway")

_CHAT_PATH = b"/v1/chat/completions"
_METHOD_NOT_ALLOWED = error_bytes("method not allowed; use POST", "invalid_request_error", 405)


class _ClientGone(Exception):
    """The client disconnected; stop work on its request (nothing more can be sent)."""


class DataPlane:
    """Routes and relays inference requests. One instance per gateway process.

    Args:
        state: the routing table and in-flight counts.
        policy: picks a backend.
        detector: passive ejection.
        retry_budget: concurrent retries as a share of active requests.
        upstream: sends requests to engines.
        throttle: the retry throttle (a fresh one by default).
        metrics: where outcomes are counted.
        config: the knobs.
        unavailable_models: models with engines, none READY (503, not 404).
        settling: the control plane just restarted (503, not 404, for unknown models).
        rng: the source of retry jitter.
        sessions: the conversation-session hook of chat requests (``None``: off).
        ledger: the cache-capture ledger each outcome is recorded in (``None``: off).
    """

    def __init__(
        self,
        *,
        state: RoutingState,
        policy: RoutingPolicy,
        detector: OutlierDetector,
        retry_budget: RetryBudget,
        upstream: Upstream,
        throttle: RetryThrottle | None = None,
        metrics: GatewayMetrics,
        config: ProxyConfig,
        unavailable_models: Callable[[], frozenset[str]] = frozenset,
        settling: Callable[[], bool] = lambda: False,
        rng: random.Random | None = None,
        sessions: SessionChat | None = None,
        ledger: RoutingLedger | None = None,
    ) -> None:
        self.state = state
        self.policy = policy
        self.detector = detector
        self.retry_budget = retry_budget
        self.throttle = throttle or RetryThrottle()
        self.upstream = upstream
        self.metrics = metrics
        self.config = config
        self._unavailable_models = unavailable_models
        self._settling = settling
        self._rng = rng or random.Random()
        self.sessions = sessions
        self.ledger = ledger
        self._relayer = Relay(
            metrics,
            on_failure=self._failed,
            on_success=self._succeeded,
            expose_backend=config.expose_backend_header,
            resume=self.resume,
            ledger=ledger,
        )
        self._origins: dict[str, Origin] = {}
        self.stalls: StallMonitor | None = None
        """Finds hung engines (run its ``run()`` in a task); ``None`` when turned off."""
        if config.stall_timeout_s > 0:
            self.stalls = StallMonitor(
                state,
                upstream,
                self._origin,
                stall_s=config.stall_timeout_s,
                probe_timeout_s=config.stall_probe_timeout_s,
                on_stalled=self._stalled,
                drain_handoff_s=config.drain_handoff_s,
            )
        self.active = 0
        metrics.active_requests = lambda: self.active

    def endpoint(
        self, kind: EngineKind | None, path: bytes
    ) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """An ASGI callable proxying ``POST path`` to backends of ``kind`` (``None``: any)."""

        async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
            await self.handle(scope, receive, send, kind, path)

        return proxy

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, kind: EngineKind | None, path: bytes
    ) -> None:
        if scope["method"] != "POST":
            await send_json(send, 405, _METHOD_NOT_ALLOWED, {"allow": "POST"})
            return
        started = time.monotonic()
        self.active += 1
        try:
            request = await parse_request(scope, receive, self.config, kind, path, started)
            if request is not None:
                sessions = self.sessions
                if (
                    sessions is None
                    or request.path != _CHAT_PATH
                    or not sessions.wants(request.body)  # a byte search: no coroutine per chat
                ):
                    await self._proxy(send, receive, request)
                else:
                    await self._serve_session(send, receive, request, sessions)
        except _ClientGone:
            pass  # recorded as 499 where it was noticed
        except GatewayError as exc:
            self.metrics.rejected(exc.code if isinstance(exc.code, str) else str(exc.status))
            await send_json(send, exc.status, exc.body(), exc.headers)
        except Exception:
            # Served ahead of Litestar's exception middleware (see app.fast_path), so an
            # unexpected error is answered here: OpenAI-shaped, no traceback to the client.
            log.exception("unexpected error while proxying %s", path.decode())
            self.metrics.rejected("internal_error")
            with contextlib.suppress(Exception):  # the response may have started already
                await send_json(
                    send, 500, error_bytes("internal error", "server_error", "internal_error")
                )
        finally:
            self.active -= 1

    async def _serve_session(
        self, send: Send, receive: Receive, request: ProxyRequest, sessions: SessionChat
    ) -> None:
        """Proxy a chat that may carry a ``session_id`` through the session hook (stored
        history prepended, the relayed answer stored)."""
        prepared = await sessions.prepare(request.body, request.authorization)
        if prepared is None:
            await self._proxy(send, receive, request)
            return
        request.body = prepared.body
        request.session_key = prepared.session_id
        try:
            await self._proxy(prepared.wrap(send), receive, request)
        finally:
            await prepared.finish()

    def _raise_unroutable(self, model: str, kind: EngineKind | None, path: bytes) -> None:
        may_come_back = model in self._unavailable_models() or self._settling()
        raise unroutable_error(
            self.state,
            model,
            kind,
            path,
            may_come_back=may_come_back,
            retry_after_s=self.config.unavailable_retry_after_s,
        )

    async def _proxy(self, send: Send, receive: Receive, request: ProxyRequest) -> None:
        candidates = self.state.candidates(request.model, request.kind, now=request.started)
        if not candidates:
            self._raise_unroutable(request.model, request.kind, request.path)
        tried: list[str] = []
        failures: list[FailureKind] = []
        last_error = "no backend tried"
        attempts_left = 1 + self.config.retries
        holding_slot = False  # one retry-budget slot, held until this request is done
        routing = request.routing = RoutingRequest(
            request.model,
            request.path,
            request.body,
            request.session_key,
            request_id=request.request_id,
        )
        watch = ClientWatch(receive)
        try:
            while attempts_left > 0:
                attempts_left -= 1
                backend = self.policy.select(
                    candidates,
                    session_key=request.session_key,
                    exclude=tried,
                    rng=self._rng,
                    request=routing,
                )
                if backend is None:
                    break
                tried.append(backend.key)
                routing.attempts += 1
                attempt = await self._attempt(send, watch, backend, request)
                if attempt is None:
                    return  # relayed
                assert attempt.failure is not None
                failures.append(attempt.failure)
                last_error = attempt.describe(backend.key)
                plan = plan_retry(
                    attempt.failure,
                    attempts_left=attempts_left,
                    holding_slot=holding_slot,
                    throttle_allows=self.throttle.allows_retry(),
                    budget_has_room=self.retry_budget.has_room(self.active),
                )
                if not plan.retry:
                    break
                if plan.take_budget_slot:
                    self.retry_budget.acquire()
                    holding_slot = True
                self.metrics.retried(request.model)
                await asyncio.sleep(self.retry_budget.backoff_s(self._rng))
                # Re-read: a backend found hung or removed meanwhile is no candidate.
                candidates = self.state.candidates(request.model, request.kind)
        finally:
            watch.stop()
            if holding_slot:
                self.retry_budget.release()
            routing.release()  # the policy's hold, whatever happened
        self._give_up(request, tried, last_error, failures)

    async def _attempt(
        self, send: Send, watch: ClientWatch, backend: BackendState, request: ProxyRequest
    ) -> Attempt | None:
        """Send to ``backend`` and relay its answer (``None``), or the failed attempt."""
        probe = self.state.acquire(backend)
        ticket = self.stalls.begin(backend) if self.stalls is not None else None
        try:
            attempt = await send_attempt(
                self.upstream,
                self._origin(backend),
                request.path,
                request.forwarded,
                request.body,
                watch,
                ticket,
                self.config.max_buffered_response_bytes,
            )
            if attempt.client_left or watch.gone:
                self._client_left(attempt, request, backend)
            if attempt.failure is None:
                await self._relayer.relay(send, watch, backend, attempt, request, ticket)
                return None
            self._failed(backend)
            if attempt.response is not None:
                attempt.response.close()
            return attempt
        finally:
            if ticket is not None and self.stalls is not None:
                self.stalls.end(ticket)
            self.state.release(backend, probe)

    def _client_left(self, attempt: Attempt, request: ProxyRequest, backend: BackendState) -> None:
        if attempt.response is not None:
            attempt.response.close()
        self.metrics.request_done(
            request.model, backend.key, 499, time.monotonic() - request.started
        )
        if self.ledger is not None and request.routing is not None:
            self.ledger.record(request.routing, backend.key, 499)
        raise _ClientGone

    def _give_up(
        self,
        request: ProxyRequest,
        tried: list[str],
        last_error: str,
        failures: list[FailureKind],
    ) -> None:
        status = gave_up_status(failures)
        engine = tried[-1] if tried else "none"
        self.metrics.request_done(request.model, engine, status, time.monotonic() - request.started)
        if self.ledger is not None and request.routing is not None:
            self.ledger.record(request.routing, engine, status)
        raise gave_up_error(request.model, last_error, status)

    def _origin(self, backend: BackendState) -> Origin:
        url = backend.backend.url
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = parse_origin(url)
        return origin

    async def resume(
        self,
        request: ProxyRequest,
        body: bytes,
        tried: list[str],
        watch: ClientWatch,
        relay: Callable[[UpstreamReply, StallTicket | None], Awaitable[None]],
    ) -> str:
        """Continue a broken stream on a backend not in ``tried`` (see :data:`Resume`).

        Each continuation holds a retry-budget slot (and passes the retry throttle): a
        fleet in trouble does not get a storm of continuations. Each one that reached an
        engine is a decision in the ledger (:meth:`RoutingLedger.record_continuation`).
        """
        if not self.throttle.allows_retry() or not self.retry_budget.has_room(self.active):
            return "no_budget"
        candidates = self.state.candidates(request.model, request.kind)
        backend = self.policy.select(candidates, session_key=None, exclude=tried, rng=self._rng)
        if backend is None:
            return "no_backend"
        tried.append(backend.key)
        self.retry_budget.acquire()
        probe = self.state.acquire(backend)
        ticket = self.stalls.begin(backend) if self.stalls is not None else None
        status = 502  # no answer, or a stream that broke too
        try:
            attempt = await send_attempt(
                self.upstream,
                self._origin(backend),
                request.path,
                request.forwarded,
                body,
                watch,
                ticket,
            )
            response = attempt.response
            if attempt.failure is not None:
                self._failed(backend)
            if attempt.client_left or watch.gone or response is None:
                return "failed"
            try:
                if attempt.failure is not None or attempt.payload is not None:
                    status = response.status
                    return "failed"  # refused, or answered in one piece (an error)
                try:
                    await relay(response, ticket)
                except UpstreamError:
                    self._failed(backend)
                    return "broken"
                self._succeeded(backend)
                status = response.status
                return "completed"
            finally:
                response.close()
        finally:
            if ticket is not None and self.stalls is not None:
                self.stalls.end(ticket)
            self.state.release(backend, probe)
            self.retry_budget.release()
            if self.ledger is not None and request.routing is not None:
                status = 499 if watch.gone else status
                self.ledger.record_continuation(request.routing, backend.key, tried[-2], status)

    def _stalled(self, backend: BackendState) -> None:
        self.throttle.record_failure()
        self.metrics.ejected(backend.backend.model, backend.key)

    def _failed(self, backend: BackendState) -> None:
        self.throttle.record_failure()
        if self.detector.record_failure(backend, time.monotonic()):
            log.warning("backend %s ejected after consecutive failures", backend.key)
            self.metrics.ejected(backend.backend.model, backend.key)

    def _succeeded(self, backend: BackendState) -> None:
        self.throttle.record_success()
        self.detector.record_success(backend, time.monotonic())
