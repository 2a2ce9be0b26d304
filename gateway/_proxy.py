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
from urllib.parse import urlsplit

from sage.unified.gateway._asgi import Receive, Scope, Send, read_body, send_json
from sage.unified.gateway._attempts import Attempt, ClientWatch, Origin, Upstream, send_attempt
from sage.unified.gateway._errors import (
    BadRequestError,
    GatewayError,
    HeadersTooLargeError,
    ModelNotFoundError,
    NoBackendAvailableError,
    PayloadTooLargeError,
    UnauthorizedError,
    UpstreamFailedError,
    error_bytes,
)
from sage.unified.gateway._headers import (
    new_request_id,
    scan_request_headers,
    upstream_headers,
)
from sage.unified.gateway._metrics import GatewayMetrics
from sage.unified.gateway._relay import ProxyRequest, Relay
from sage.unified.gateway._retry_rules import FailureKind, plan_retry
from sage.unified.gateway.routing import (
    BackendState,
    OutlierDetector,
    PeekError,
    RetryBudget,
    RetryThrottle,
    RoutingLedger,
    RoutingPolicy,
    RoutingRequest,
    RoutingState,
    peek_request,
)
from sage.unified.gateway.sessions import SessionChat
from sage.unified.sdk.auth import TokenSet, bearer_token
from sage.unified.sdk.models import EngineKind

__all__ = ["DataPlane", "ProxyConfig", "Receive", "Scope", "Send", "parse_origin"]

log = logging.getLogger("sage.unified.gateway")

_CHAT_PATH = b"/v1/chat/completions"
_METHOD_NOT_ALLOWED = error_bytes("method not allowed; use POST", "invalid_request_error", 405)


class ProxyConfig:
    """The data plane's knobs (copied from :class:`GatewaySettings` once)."""

    __slots__ = (
        "api_keys",
        "engine_authorization",
        "expose_backend_header",
        "max_body_bytes",
        "max_header_bytes",
        "max_headers",
        "retries",
        "unavailable_retry_after_s",
    )

    def __init__(
        self,
        *,
        api_keys: TokenSet,
        engine_api_key: str | None = None,
        max_body_bytes: int = 16 * 2**20,
        max_header_bytes: int = 64 * 1024,
        max_headers: int = 100,
        retries: int = 1,
        expose_backend_header: bool = False,
        unavailable_retry_after_s: int = 5,
    ) -> None:
        self.api_keys = api_keys
        self.engine_authorization = f"Bearer {engine_api_key}".encode() if engine_api_key else None
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.retries = retries
        self.expose_backend_header = expose_backend_header
        self.unavailable_retry_after_s = unavailable_retry_after_s


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
            ledger=ledger,
        )
        self._origins: dict[str, Origin] = {}
        self.active = 0
        metrics.active_requests = lambda: self.active

    def endpoint(
        self, kind: EngineKind, path: bytes
    ) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """An ASGI callable proxying ``POST path`` to backends of ``kind``."""

        async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
            await self.handle(scope, receive, send, kind, path)

        return proxy

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, kind: EngineKind, path: bytes
    ) -> None:
        if scope["method"] != "POST":
            await send_json(send, 405, _METHOD_NOT_ALLOWED, {"allow": "POST"})
            return
        started = time.monotonic()
        self.active += 1
        try:
            request = await self._parse(scope, receive, kind, path, started)
            if request is not None:
                await self._serve(send, receive, request)
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

    async def _parse(
        self, scope: Scope, receive: Receive, kind: EngineKind, path: bytes, started: float
    ) -> ProxyRequest | None:
        """Check and read the request; ``None`` when the client left while sending it."""
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        info = scan_request_headers(headers)
        config = self.config
        if info.count > config.max_headers or info.size > config.max_header_bytes:
            raise HeadersTooLargeError(
                f"request headers exceed the limit ({config.max_headers} headers, {config.max_header_bytes} bytes)"
            )
        if config.api_keys:
            presented = (
                bearer_token(info.authorization.decode("latin-1")) if info.authorization else None
            )
            if not config.api_keys.verify(presented):
                raise UnauthorizedError(
                    "missing or invalid API key; send it as 'Authorization: Bearer <key>'"
                )
        if info.content_length is not None and info.content_length > config.max_body_bytes:
            raise PayloadTooLargeError(f"request body exceeds {config.max_body_bytes} bytes")
        body = await read_body(receive, config.max_body_bytes)
        if body is None:
            return None
        try:
            peek = peek_request(body)
        except PeekError as exc:
            raise BadRequestError(str(exc)) from None
        model = peek.model
        if not model:
            raise BadRequestError("you must provide a model parameter", param="model")
        request_id = info.request_id or new_request_id()
        client = scope.get("client")
        forwarded = upstream_headers(
            headers,
            info,
            request_id=request_id,
            client_host=client[0] if client else None,
            scheme=scope.get("scheme", "http"),
            engine_authorization=config.engine_authorization,
        )
        session_key = info.session_id.decode("latin-1") if info.session_id else peek.user
        return ProxyRequest(
            model,
            kind,
            path,
            body,
            forwarded,
            session_key,
            request_id,
            started,
            info.authorization,
            info.want_route,
        )

    async def _serve(self, send: Send, receive: Receive, request: ProxyRequest) -> None:
        """Proxy ``request``; a chat with a ``session_id`` goes through the session hook
        (stored history prepended, the relayed answer stored)."""
        sessions = self.sessions
        if (
            sessions is None
            or request.path != _CHAT_PATH
            or not sessions.wants(request.body)  # a byte search: no coroutine per chat
        ):
            await self._proxy(send, receive, request)
            return
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

    def _raise_unroutable(self, model: str, kind: EngineKind) -> None:
        # While the control plane settles after a restart, an unknown model may simply
        # not have been re-reported yet: "try again" is the honest answer, not 404.
        if (
            model in self._unavailable_models()
            or self.state.model_backends(model)
            or self._settling()
        ):
            raise NoBackendAvailableError(
                f"model '{model}' has no ready backend right now; retry shortly",
                headers={"retry-after": str(self.config.unavailable_retry_after_s)},
            )
        served = self.state.models(kind)
        listing = ", ".join(served) if served else "none"
        raise ModelNotFoundError(
            f"The model '{model}' does not exist or is not served here. Served models: {listing}.",
            param="model",
        )

    async def _proxy(self, send: Send, receive: Receive, request: ProxyRequest) -> None:
        candidates = self.state.candidates(request.model, request.kind, now=request.started)
        if not candidates:
            self._raise_unroutable(request.model, request.kind)
        tried: list[str] = []
        last_error = "no backend tried"
        attempts_left = 1 + self.config.retries
        holding_slot = False  # one retry-budget slot, held until this request is done
        unreachable_only = True  # every attempt failed to connect
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
                probe = self.state.acquire(backend)
                try:
                    attempt = await send_attempt(
                        self.upstream,
                        self._origin(backend),
                        request.path,
                        request.forwarded,
                        request.body,
                        watch,
                    )
                    if attempt.client_left or watch.gone:
                        self._client_left(attempt, request, backend)
                    if attempt.failure is None:
                        await self._relayer.relay(send, watch, backend, attempt, request)
                        return
                    failure = attempt.failure
                    self._failed(backend)
                    last_error = attempt.describe(backend.key)
                    if failure is not FailureKind.UNREACHED:
                        unreachable_only = False
                    if attempt.response is not None:
                        attempt.response.close()
                finally:
                    self.state.release(backend, probe)
                plan = plan_retry(
                    failure,
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
                candidates = self.state.candidates(request.model, request.kind) or candidates
        finally:
            watch.stop()
            if holding_slot:
                self.retry_budget.release()
            routing.release()  # the policy's hold, whatever happened
        self._give_up(request, tried, last_error, unreachable_only)

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
        self, request: ProxyRequest, tried: list[str], last_error: str, unreachable_only: bool
    ) -> None:
        # Nothing reachable at all is "unavailable" (503); a backend that answered badly
        # or broke mid-answer is a bad gateway hop (502).
        status = 503 if unreachable_only else 502
        engine = tried[-1] if tried else "none"
        self.metrics.request_done(request.model, engine, status, time.monotonic() - request.started)
        if self.ledger is not None and request.routing is not None:
            self.ledger.record(request.routing, engine, status)
        model = request.model
        if status == 503:
            raise NoBackendAvailableError(
                f"no backend of model '{model}' is reachable ({last_error}); retry shortly",
                headers={"retry-after": "1"},
            )
        raise UpstreamFailedError(
            f"no backend of model '{model}' answered ({last_error}); retry shortly",
            headers={"retry-after": "1"},
        )

    def _origin(self, backend: BackendState) -> Origin:
        url = backend.backend.url
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = parse_origin(url)
        return origin

    def _failed(self, backend: BackendState) -> None:
        self.throttle.record_failure()
        if self.detector.record_failure(backend, time.monotonic()):
            log.warning("backend %s ejected after consecutive failures", backend.key)
            self.metrics.ejected(backend.backend.model, backend.key)

    def _succeeded(self, backend: BackendState) -> None:
        self.throttle.record_success()
        self.detector.record_success(backend, time.monotonic())


def parse_origin(url: str) -> Origin:
    """``http://host:port/...`` → ``("http", host, port)`` (the upstream's origin)."""
    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if scheme == "https" else 80)
    return (scheme, host, port)
