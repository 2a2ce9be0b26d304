"""The data plane: one ASGI callable per OpenAI endpoint, relaying to an engine.

This is the hot path of the product. It runs as Litestar ``asgi`` route handlers (one app,
one port) over the lean upstream client in ``gateway.upstream``; the body is read once
and only ``model``, ``stream`` and the session key are decoded from it. It is
asyncio-only, like the upstream client and the server under it (``gateway.server``).

Per request:

1. API key (constant time), header and body limits (413/431), body peek (400).
2. Candidates for ``(model, kind)`` from the routing state: none → 404
   ``model_not_found`` (unknown model) or 503 + ``Retry-After`` (known, none READY).
3. Pick with the routing policy; send. A failure before any response byte reached the
   client (connect error, timeout, 502/503, the engine dropping a non-streamed
   response) is retried once on a *different* backend after a jittered ~50 ms, within
   the retry budget. 4xx pass through unchanged and never retry.
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
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

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
    sse_error_event,
)
from sage.unified.gateway._headers import (
    downstream_headers,
    new_request_id,
    scan_request_headers,
    upstream_headers,
)
from sage.unified.gateway._metrics import GatewayMetrics
from sage.unified.gateway.routing import (
    BackendState,
    OutlierDetector,
    PeekError,
    RetryBudget,
    RetryThrottle,
    RoutingPolicy,
    RoutingState,
    peek_request,
)
from sage.unified.gateway.upstream import (
    PoolTimeout,
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
)
from sage.unified.sdk.auth import TokenSet, bearer_token
from sage.unified.sdk.models import EngineKind

__all__ = ["DataPlane", "ProxyConfig"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("sage.unified.gateway")

_JSON = [(b"content-type", b"application/json")]
_RETRYABLE_STATUS = frozenset({502, 503})
WATCH_AFTER_S = 0.05
"""A request older than this gets a task that watches for its client leaving."""


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


class _Attempt:
    """The outcome of sending a request to one backend, before anything was relayed."""

    __slots__ = ("error", "payload", "response", "retryable")

    def __init__(
        self,
        response: UpstreamResponse | None,
        error: UpstreamError | None,
        retryable: bool,
        payload: bytes | None = None,
    ) -> None:
        self.response = response
        self.error = error
        self.retryable = retryable
        self.payload = payload
        """The whole body of a non-streamed response (read before anything is relayed)."""


class _ClientGone(Exception):
    """The client disconnected; stop work on its request (nothing more can be sent)."""


class _ClientWatch:
    """Waits for the client to disconnect, then closes the upstream response in use.

    The server drops sends silently after a disconnect and never cancels the handler, so
    without this an engine would go on generating for a client that is gone: closing the
    upstream connection is how vLLM learns to abort the request. ``receive()`` returns
    only on disconnect (or once the response is complete) because the body has been read.

    The waiting task starts only once a request has run for ``WATCH_AFTER_S``: a task per
    request measurably costs CPU (13 µs of ~80 per proxied request on the benchmark
    machine), and a request that short cannot leave much upstream work behind. A client
    that left earlier is noticed at that moment.
    """

    __slots__ = ("_receive", "_task", "_timer", "gone", "response", "waiting")

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self.response: UpstreamResponse | None = None
        self.waiting: asyncio.Task[Any] | None = None
        """The request's task while it waits for the engine's response head."""
        self._receive = receive
        self._task: asyncio.Future[Message] | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        self._task = asyncio.ensure_future(self._receive())
        self._task.add_done_callback(self._on_disconnect)

    def _on_disconnect(self, task: asyncio.Future[Message]) -> None:
        if task.cancelled():
            return
        self.gone = True
        if self.response is not None:
            self.response.close()
        elif self.waiting is not None:
            # No response to close yet: cancelling the wait closes the connection.
            self.waiting.cancel()

    def attach(self, response: UpstreamResponse) -> None:
        self.response = response
        if self.gone:
            response.close()

    def stop(self) -> None:
        self._timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()


class DataPlane:
    """Routes and relays inference requests. One instance per gateway process."""

    def __init__(
        self,
        *,
        state: RoutingState,
        policy: RoutingPolicy,
        detector: OutlierDetector,
        retry_budget: RetryBudget,
        pool: UpstreamPool,
        throttle: RetryThrottle | None = None,
        metrics: GatewayMetrics,
        config: ProxyConfig,
        unavailable_models: Callable[[], frozenset[str]] = frozenset,
        settling: Callable[[], bool] = lambda: False,
        rng: random.Random | None = None,
    ) -> None:
        self.state = state
        self.policy = policy
        self.detector = detector
        self.retry_budget = retry_budget
        self.throttle = throttle or RetryThrottle()
        self.pool = pool
        self.metrics = metrics
        self.config = config
        self._unavailable_models = unavailable_models
        self._settling = settling
        self._rng = rng or random.Random()
        self._origins: dict[str, tuple[str, str, int]] = {}
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
        started = time.monotonic()
        self.active += 1
        try:
            await self._handle(scope, receive, send, kind, path, started)
        except _ClientGone:
            pass  # recorded as 499 where it was noticed
        except GatewayError as exc:
            self.metrics.rejected(exc.code if isinstance(exc.code, str) else str(exc.status))
            await _send_json(send, exc.status, exc.body(), exc.headers)
        except Exception:
            # Served ahead of Litestar's exception middleware (see app.fast_path), so an
            # unexpected error is answered here: OpenAI-shaped, no traceback to the client.
            log.exception("unexpected error while proxying %s", path.decode())
            self.metrics.rejected("internal_error")
            with contextlib.suppress(Exception):  # the response may have started already
                await _send_json(
                    send, 500, error_bytes("internal error", "server_error", "internal_error")
                )
        finally:
            self.active -= 1

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        kind: EngineKind,
        path: bytes,
        started: float,
    ) -> None:
        if scope["method"] != "POST":
            await _send_json(
                send,
                405,
                error_bytes("method not allowed; use POST", "invalid_request_error", 405),
                {"allow": "POST"},
            )
            return
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
        body = await _read_body(receive, config.max_body_bytes)
        if body is None:
            return  # the client went away while sending
        try:
            peek = peek_request(body)
        except PeekError as exc:
            raise BadRequestError(str(exc)) from None
        model = peek.model
        if not model:
            raise BadRequestError("you must provide a model parameter", param="model")

        candidates = self.state.candidates(model, kind, now=started)
        if not candidates:
            self._raise_unroutable(model, kind)

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
        session_key: str | None = None
        if info.session_id:
            session_key = info.session_id.decode("latin-1")
        elif peek.user:
            session_key = peek.user
        await self._proxy(
            send,
            receive,
            model,
            kind,
            path,
            body,
            forwarded,
            candidates,
            session_key,
            request_id,
            started,
        )

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

    async def _proxy(
        self,
        send: Send,
        receive: Receive,
        model: str,
        kind: EngineKind,
        path: bytes,
        body: bytes,
        forwarded: list[tuple[bytes, bytes]],
        candidates: tuple[BackendState, ...],
        session_key: str | None,
        request_id: bytes,
        started: float,
    ) -> None:
        tried: list[str] = []
        last_error = "no backend tried"
        attempts_left = 1 + self.config.retries
        retrying = False  # holds one retry-budget slot until this request is done
        unreachable_only = True  # every attempt failed to connect
        watch = _ClientWatch(receive)
        try:
            while attempts_left > 0:
                attempts_left -= 1
                backend = self.policy.select(
                    candidates, session_key=session_key, exclude=tried, rng=self._rng
                )
                if backend is None:
                    break
                tried.append(backend.key)
                probe = self.state.acquire(backend)
                try:
                    attempt = await self._send(backend, path, forwarded, body, watch)
                    if watch.gone:
                        if attempt.response is not None:
                            attempt.response.close()
                        self.metrics.request_done(
                            model, backend.key, 499, time.monotonic() - started
                        )
                        raise _ClientGone
                    if attempt.response is not None and not attempt.retryable:
                        await self._relay(send, watch, backend, attempt, model, request_id, started)
                        return
                    last_error = _describe(backend, attempt)
                    if not isinstance(attempt.error, UpstreamConnectError | PoolTimeout):
                        unreachable_only = False
                    if attempt.response is not None:
                        attempt.response.close()
                finally:
                    self.state.release(backend, probe)
                if not attempt.retryable or attempts_left == 0:
                    break
                if not retrying:
                    if not self.throttle.allows_retry() or not self.retry_budget.try_acquire(
                        self.active
                    ):
                        break
                    retrying = True
                self.metrics.retried(model)
                await asyncio.sleep(self.retry_budget.backoff_s(self._rng))
                candidates = self.state.candidates(model, kind) or candidates
        finally:
            watch.stop()
            if retrying:
                self.retry_budget.release()
        # Nothing reachable at all is "unavailable" (503); a backend that answered badly
        # or broke mid-answer is a bad gateway hop (502).
        status = 503 if unreachable_only else 502
        self.metrics.request_done(
            model, tried[-1] if tried else "none", status, time.monotonic() - started
        )
        if status == 503:
            raise NoBackendAvailableError(
                f"no backend of model '{model}' is reachable ({last_error}); retry shortly",
                headers={"retry-after": "1"},
            )
        raise UpstreamFailedError(
            f"no backend of model '{model}' answered ({last_error}); retry shortly",
            status=502,
            headers={"retry-after": "1"},
        )

    async def _send(
        self,
        backend: BackendState,
        path: bytes,
        forwarded: list[tuple[bytes, bytes]],
        body: bytes,
        watch: _ClientWatch,
    ) -> _Attempt:
        task = watch.waiting = asyncio.current_task()
        try:
            response = await self.pool.request(
                b"POST", self._origin(backend), path, forwarded, body
            )
        except asyncio.CancelledError:
            if watch.gone and task is not None and task.uncancel() == 0:
                return _Attempt(None, None, False)  # cancelled by us: the client left
            raise
        except UpstreamError as exc:
            if watch.gone:
                return _Attempt(None, exc, False)
            self._failed(backend)
            # Nothing reached the client yet, so even an engine that died after starting
            # its answer is safe to retry elsewhere (generation has no side effects).
            return _Attempt(None, exc, True)
        except ValueError as exc:  # an engine URL the client cannot use: that engine's fault
            self._failed(backend)
            return _Attempt(None, UpstreamProtocolError(f"unusable engine address: {exc}"), True)
        finally:
            watch.waiting = None
        watch.attach(response)
        if response.status in _RETRYABLE_STATUS:
            self._failed(backend)
            return _Attempt(response, None, True)
        if _is_event_stream(response.headers):
            return _Attempt(response, None, False)
        # A non-streamed body is read in full before the client sees a byte, so an engine
        # dying mid-answer is still a retryable failure, not a broken response.
        try:
            payload = await response.read()
        except UpstreamError as exc:
            response.close()
            if watch.gone:  # our own close: the client left, the engine did nothing wrong
                return _Attempt(None, exc, False)
            self._failed(backend)
            return _Attempt(None, exc, True)
        return _Attempt(response, None, False, payload)

    def _origin(self, backend: BackendState) -> tuple[str, str, int]:
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

    async def _relay(
        self,
        send: Send,
        watch: _ClientWatch,
        backend: BackendState,
        attempt: _Attempt,
        model: str,
        request_id: bytes,
        started: float,
    ) -> None:
        response = attempt.response
        assert response is not None
        status = response.status
        out_headers = downstream_headers(
            response.headers,
            request_id=request_id,
            backend_id=backend.key if self.config.expose_backend_header else None,
        )
        payload = attempt.payload
        try:
            if payload is None:
                await self._relay_stream(
                    send, watch, backend, response, status, out_headers, model, started
                )
                return
            out_headers.append((b"content-length", str(len(payload)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": out_headers})
            await send({"type": "http.response.body", "body": payload, "more_body": False})
            self._finished(backend, status)
            self.metrics.request_done(model, backend.key, status, time.monotonic() - started)
        finally:
            response.close()

    async def _relay_stream(
        self,
        send: Send,
        watch: _ClientWatch,
        backend: BackendState,
        response: UpstreamResponse,
        status: int,
        out_headers: list[tuple[bytes, bytes]],
        model: str,
        started: float,
    ) -> None:
        out_headers.append((b"x-accel-buffering", b"no"))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        first = True
        try:
            async for chunk in response:
                if first:
                    first = False
                    self.metrics.first_token(model, time.monotonic() - started)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            if watch.gone:
                # The client left; closing the upstream connection was our own doing.
                self.metrics.request_done(model, backend.key, 499, time.monotonic() - started)
                return
            self._failed(backend)
            self.metrics.stream_interrupted(model)
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
            self.metrics.request_done(model, backend.key, 502, time.monotonic() - started)
            return
        if watch.gone:
            self.metrics.request_done(model, backend.key, 499, time.monotonic() - started)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._finished(backend, status)
        self.metrics.request_done(model, backend.key, status, time.monotonic() - started)

    def _finished(self, backend: BackendState, status: int) -> None:
        if status >= 500:
            self._failed(backend)
        else:
            self.throttle.record_success()
            self.detector.record_success(backend, time.monotonic())


def parse_origin(url: str) -> tuple[str, str, int]:
    """``http://host:port/...`` → ``("http", host, port)`` (the upstream pool's origin)."""
    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if scheme == "https" else 80)
    return (scheme, host, port)


def _describe(backend: BackendState, attempt: _Attempt) -> str:
    if attempt.error is not None:
        return f"{backend.key}: {type(attempt.error).__name__}: {attempt.error}"
    if attempt.response is not None:
        return f"{backend.key}: HTTP {attempt.response.status}"
    return backend.key


def _is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.startswith(b"text/event-stream")
    return False


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


async def _send_json(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    raw = [*_JSON, (b"content-length", str(len(body)).encode())]
    if headers:
        raw.extend((k.encode(), v.encode()) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})
