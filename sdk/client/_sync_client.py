"""The sync client (httpx.Client; safe to use inside a running event loop's thread)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self, overload

import httpx

from sage.unified.sdk.client._config import ClientConfig, resolve_config
from sage.unified.sdk.client._core import ClientCore, describe_exception
from sage.unified.sdk.client._errors import (
    APIStatusError,
    GatewayUnreachableError,
    SageClientError,
    StreamInterruptedError,
)
from sage.unified.sdk.client._executor import SyncCaller
from sage.unified.sdk.client._failover import RetryEvent, is_testing
from sage.unified.sdk.client._http import (
    ERROR_BODY_LIMIT,
    attempt_request,
    decode_json,
    refused_attempt,
    unsupported_url,
)
from sage.unified.sdk.client._results import (
    ChatResult,
    CompletionResult,
    EmbeddingResult,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_model_list,
)
from sage.unified.sdk.client._routing import build_body
from sage.unified.sdk.client._sync_stream import ChatStream
from sage.unified.sdk.models import EngineKind, RoutingTable
from sage.unified.sdk.protocol import ControlPlaneApi

__all__ = ["UnifiedInferenceClient"]

logger = logging.getLogger("sage.unified.sdk.client")


def _read_error_body(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError as exc:
        # The status line is what matters; a body cut short only loses detail.
        logger.debug(
            "error body of %s cut short: %s", response.request.url, describe_exception(exc)
        )
    finally:
        response.close()
    return b"".join(chunks)


class UnifiedInferenceClient:
    """Client of the SAGE Unified Gateway (or, in direct mode, of the engines).

    Gateway mode (``gateway_urls`` or ``SAGE_GATEWAY_URL``): requests go to the
    first healthy gateway and fail over to the next. Direct mode
    (``control_plane_url``): the client reads the routing table and sends requests
    to the engines itself.

    It uses ``httpx.Client`` (no event loop), so it also works from code that runs
    inside an event loop's thread. The routing table is watched by a daemon
    thread started on first use (or on ``with``) and stopped by :meth:`close` /
    leaving ``with``; always close the client. Failover happens only before the first response byte, at
    most ``max_attempts`` attempts within ``timeout`` seconds per call (for a
    stream, ``timeout`` bounds reaching the response headers and each later read).

    Args:
        gateway_urls: gateway base URLs (with or without ``/v1``), a list or a
            comma-separated string; default ``SAGE_GATEWAY_URL``.
        api_key: bearer token for the gateway / control plane; default ``SAGE_API_KEY``.
        control_plane_url: read the routing table here and route to engines directly.
        engine_api_key: bearer token sent to engines in direct mode.
        timeout: overall deadline per call, seconds.
        connect_timeout: connect timeout per attempt, seconds.
        max_attempts: attempts per call in all (1-10).
        refresh_interval_s: table refresh period (and long-poll wait); 0 turns the
            background refresh off.
        watch: long-poll the table (changes are seen at once).
        default_llm_model / default_embedding_model: used when ``model`` is omitted.
        trust_env: let httpx read proxy settings and certificates from the environment.
        stall_timeout_s: the longest silence from a gateway or engine before a call gives
            up on it (fails over if nothing was received yet); ``None`` turns it off. In
            direct mode, stream answers that may take longer than this to start.
        on_retry: called before each retry with the failed attempt and the wait.
        transport: an httpx transport (tests use ``httpx.MockTransport``).

    Raises:
        ConfigurationError: no gateway and no control plane, or invalid values.
    """

    def __init__(
        self,
        gateway_urls: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        control_plane_url: str | None = None,
        engine_api_key: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 3.0,
        max_attempts: int = 3,
        refresh_interval_s: float = 30.0,
        watch: bool = True,
        default_llm_model: str | None = None,
        default_embedding_model: str | None = None,
        trust_env: bool = False,
        stall_timeout_s: float | None = 30.0,
        on_retry: Callable[[RetryEvent], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        config = resolve_config(
            gateway_urls=gateway_urls,
            api_key=api_key,
            control_plane_url=control_plane_url,
            engine_api_key=engine_api_key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_attempts=max_attempts,
            refresh_interval_s=refresh_interval_s,
            watch=watch,
            default_llm_model=default_llm_model,
            default_embedding_model=default_embedding_model,
            trust_env=trust_env,
            stall_timeout_s=stall_timeout_s,
        )
        # A shorter long-poll than the async client: close() cannot interrupt a
        # blocking request, so the watcher thread may outlive close() by this much.
        self._core = ClientCore(config, on_retry=on_retry, max_wait_s=10.0)
        self._transport = transport
        self._http = httpx.Client(
            trust_env=config.trust_env, transport=transport, follow_redirects=False
        )
        self._control = self._control_caller(self._http)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._closed = False

    def _control_caller(self, http: httpx.Client) -> SyncCaller:
        config = self._core.config
        return SyncCaller(
            config.management_urls,
            config.api_key,
            timeout=min(config.timeout, 10.0),
            connect_timeout=config.connect_timeout,
            http=http,
            health=self._core.health,
        )

    @classmethod
    def create(cls, gateway_urls: str | Sequence[str] | None = None, **kwargs: Any) -> Self:
        """Alias of the constructor (same arguments)."""
        return cls(gateway_urls, **kwargs)

    @property
    def config(self) -> ClientConfig:
        return self._core.config

    # --------------------------------------------------------------- lifecycle
    def __enter__(self) -> Self:
        self._ensure_watcher()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the discovery thread and close the HTTP connections (idempotent).

        The thread is told to stop at once; if it is inside a long-poll it exits
        when that returns (at most ~10 s later, as a daemon thread).
        """
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=0.2)
        self._http.close()

    def _ensure_watcher(self) -> None:
        """Start the discovery thread on first use (not in the constructor)."""
        if self._closed or self._core.config.refresh_interval_s <= 0 or self._thread is not None:
            return
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch_loop, name="sage-client-discovery", daemon=True
                )
                self._thread.start()

    def _watching(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    # --------------------------------------------------------------- discovery
    def _fetch_table(
        self, caller: SyncCaller, after: int | None, wait: float | None
    ) -> RoutingTable:
        """Read the table from the first management URL that answers."""
        query = {"after": after, "wait": wait} if after is not None and wait else {}
        return caller.call(ControlPlaneApi.BACKENDS, query=query, extra_read_s=wait or 0.0)

    def _watch_loop(self) -> None:
        core = self._core
        with httpx.Client(trust_env=core.config.trust_env, transport=self._transport) as http:
            caller = self._control_caller(http)
            while not self._stop.is_set():
                self._watch_once(caller)

    def _watch_once(self, caller: SyncCaller) -> None:
        core = self._core
        after, wait = core.policy.request(core.cache.revision)
        started = core.clock()
        try:
            table = self._fetch_table(caller, after, wait)
        except (SageClientError, httpx.HTTPError) as exc:
            delay = core.refresh_failed(exc)
        else:
            delay = core.refreshed(table, asked_wait=wait, started=started)
        self._stop.wait(delay)

    def _table(self, *, force: bool = False) -> RoutingTable | None:
        """The routing table (cached, or read now); ``None`` in gateway mode if unreadable.

        Raises:
            NoBackendAvailableError: direct mode and the control plane cannot be read.
        """
        core = self._core
        self._ensure_watcher()
        if not force and core.table_is_fresh(self._watching()):
            return core.cache.table
        try:
            table = self._fetch_table(self._control, None, None)
        except (SageClientError, httpx.HTTPError) as exc:
            return core.read_on_demand_failed(exc)
        core.cache.update(table)
        return table

    # --------------------------------------------------------------- requests
    def _resolve(self, model: str | None, kind: EngineKind) -> str:
        core = self._core
        chosen = model or core.default_model(kind)
        if chosen:
            return chosen
        table = self._table()
        if table is not None:
            return core.resolve_from(kind, table.models(kind), core.source_name())
        return core.resolve_from(kind, self.models(), core.source_name())

    def _targets(self, model: str, kind: EngineKind) -> list[str]:
        core = self._core
        if not core.config.direct:
            return core.inference_targets(None, model, kind)
        table = self._table()
        try:
            return core.inference_targets(table, model, kind)
        except SageClientError:
            if not core.may_refresh_on_demand():
                raise
        return core.inference_targets(self._table(force=True), model, kind)

    def _send(self, method: str, path: str, targets: list[str], body: Any | None) -> httpx.Response:
        """Send with failover; returns an open 2xx response (the caller closes it)."""
        core = self._core
        plan = core.new_plan(targets)
        last_status: APIStatusError | None = None
        while True:
            url = plan.next_target()
            request = attempt_request(self._http, core, method, url + path, body, plan.remaining())
            retry_after: float | None = None
            try:
                response = self._http.send(request, stream=True)
            except httpx.UnsupportedProtocol as exc:
                raise unsupported_url(url, exc) from exc
            except httpx.TransportError as exc:
                error = describe_exception(exc)
            else:
                if 200 <= response.status_code < 300:
                    core.health.record_success(url)
                    return response
                refused = refused_attempt(response, _read_error_body(response), url)
                last_status, error, retry_after = refused
            delay = core.attempt_failed(
                plan, url, error, retry_after=retry_after, last_status=last_status
            )
            if not is_testing():
                self._stop.wait(delay)

    def _post_json(self, path: str, model: str, kind: EngineKind, body: dict[str, Any]) -> Any:
        response = self._send("POST", path, self._targets(model, kind), body)
        try:
            response.read()
        except httpx.TransportError as exc:
            raise StreamInterruptedError(
                f"the response was cut: {describe_exception(exc)}"
            ) from exc
        finally:
            response.close()
        return decode_json(response)

    def _stream(self, path: str, model: str, kind: EngineKind, body: dict[str, Any]) -> ChatStream:
        response = self._send("POST", path, self._targets(model, kind), body)
        return ChatStream(response)

    # ------------------------------------------------------------- public API
    @overload
    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = None,
        stream: Literal[False] = False,
        **params: Any,
    ) -> ChatResult: ...
    @overload
    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = None,
        *,
        stream: Literal[True],
        **params: Any,
    ) -> ChatStream: ...
    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = None,
        stream: bool = False,
        **params: Any,
    ) -> ChatResult | ChatStream:
        """``POST /v1/chat/completions``.

        Args:
            messages: OpenAI chat messages.
            model: the served model name; omitted: the default or the only one served.
            stream: return an :class:`ChatStream` of text deltas.
            **params: other OpenAI parameters, sent unchanged (``temperature=0`` stays 0).

        Raises:
            ModelNotSpecifiedError, NoBackendAvailableError, APIStatusError,
            StreamInterruptedError, InvalidResponseError.
        """
        kind = EngineKind.LLM
        name = self._resolve(model, kind)
        body = build_body({"messages": list(messages)}, name, stream, params)
        if stream:
            return self._stream("/v1/chat/completions", name, kind, body)
        return parse_chat(self._post_json("/v1/chat/completions", name, kind, body))

    @overload
    def generate(
        self, prompt: str, model: str | None = None, stream: Literal[False] = False, **params: Any
    ) -> CompletionResult: ...
    @overload
    def generate(
        self, prompt: str, model: str | None = None, *, stream: Literal[True], **params: Any
    ) -> ChatStream: ...
    def generate(
        self, prompt: str, model: str | None = None, stream: bool = False, **params: Any
    ) -> CompletionResult | ChatStream:
        """``POST /v1/completions`` (same arguments and errors as :meth:`chat`)."""
        kind = EngineKind.LLM
        name = self._resolve(model, kind)
        body = build_body({"prompt": prompt}, name, stream, params)
        if stream:
            return self._stream("/v1/completions", name, kind, body)
        return parse_completion(self._post_json("/v1/completions", name, kind, body))

    def embed(
        self, texts: str | Sequence[str], model: str | None = None, **params: Any
    ) -> EmbeddingResult:
        """``POST /v1/embeddings``; a single string gives one vector.

        Raises:
            ModelNotSpecifiedError, NoBackendAvailableError, APIStatusError, InvalidResponseError.
        """
        kind = EngineKind.EMBEDDING
        name = self._resolve(model, kind)
        inputs = [texts] if isinstance(texts, str) else list(texts)
        body = build_body({"input": inputs}, name, False, params)
        return parse_embedding(self._post_json("/v1/embeddings", name, kind, body))

    def models(self) -> list[str]:
        """Served model names: ``GET /v1/models`` of the gateway, or the table in direct mode."""
        core = self._core
        if core.config.direct:
            table = self._table()
            return table.models() if table is not None else []
        response = self._send(
            "GET", "/v1/models", core.inference_targets(None, "", EngineKind.LLM), None
        )
        try:
            response.read()
        finally:
            response.close()
        return parse_model_list(decode_json(response))

    def backends(self) -> RoutingTable:
        """The routing table, read now (``GET /v1/management/backends``).

        Raises:
            NoBackendAvailableError: no management URL answered.
            APIStatusError: e.g. 401/403 when the key lacks the admin scope.
        """
        core = self._core
        try:
            table = self._fetch_table(self._control, None, None)
        except GatewayUnreachableError as exc:
            raise core.management_unreachable(exc) from exc
        core.cache.update(table)
        return table
