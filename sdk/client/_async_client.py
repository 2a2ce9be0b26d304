"""The async client (anyio: runs under asyncio and trio)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self, overload

import anyio
import anyio.abc
import httpx

from sage.unified.sdk.client._async_stream import AsyncChatStream
from sage.unified.sdk.client._config import ClientConfig, resolve_config
from sage.unified.sdk.client._core import ClientCore, describe_exception
from sage.unified.sdk.client._errors import (
    APIStatusError,
    GatewayUnreachableError,
    SageClientError,
    StreamInterruptedError,
)
from sage.unified.sdk.client._executor import AsyncCaller
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
from sage.unified.sdk.models import EngineKind, RoutingTable
from sage.unified.sdk.protocol import ControlPlaneApi

__all__ = ["AsyncUnifiedInferenceClient"]

logger = logging.getLogger("sage.unified.sdk.client")


async def _read_error_body(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
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
        await response.aclose()
    return b"".join(chunks)


class AsyncUnifiedInferenceClient:
    """Async client of the SAGE Unified Gateway (or, in direct mode, of the engines).

    Gateway mode (``gateway_urls`` or ``SAGE_GATEWAY_URL``): requests go to the
    first healthy gateway and fail over to the next. Direct mode
    (``control_plane_url``): the client reads the routing table and sends requests
    to the engines itself.

    Use it as ``async with AsyncUnifiedInferenceClient(...) as client:`` to run the
    background discovery (long-poll watch) in a task group; without it the table
    is read on demand. Failover happens only before the first response byte, at
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
        transport: httpx.AsyncBaseTransport | None = None,
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
        self._core = ClientCore(config, on_retry=on_retry)
        self._http = httpx.AsyncClient(
            trust_env=config.trust_env, transport=transport, follow_redirects=False
        )
        self._watch_http = httpx.AsyncClient(trust_env=config.trust_env, transport=transport)
        self._control = self._control_caller(self._http)
        self._watch_control = self._control_caller(self._watch_http)
        self._task_group: anyio.abc.TaskGroup | None = None

    def _control_caller(self, http: httpx.AsyncClient) -> AsyncCaller:
        config = self._core.config
        return AsyncCaller(
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
    async def __aenter__(self) -> Self:
        if self._core.config.refresh_interval_s > 0:
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
            self._task_group.start_soon(self._watch_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
                await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._task_group = None
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections. Use ``async with`` to also stop discovery."""
        await self._http.aclose()
        await self._watch_http.aclose()

    # --------------------------------------------------------------- discovery
    async def _fetch_table(
        self, caller: AsyncCaller, after: int | None, wait: float | None
    ) -> RoutingTable:
        """Read the table from the first management URL that answers."""
        query = {"after": after, "wait": wait} if after is not None and wait else {}
        return await caller.call(ControlPlaneApi.BACKENDS, query=query, extra_read_s=wait or 0.0)

    async def _watch_loop(self) -> None:
        core = self._core
        while True:
            after, wait = core.policy.request(core.cache.revision)
            started = core.clock()
            try:
                table = await self._fetch_table(self._watch_control, after, wait)
            except (SageClientError, httpx.HTTPError) as exc:
                delay = core.refresh_failed(exc)
            else:
                delay = core.refreshed(table, asked_wait=wait, started=started)
            await anyio.sleep(delay)

    async def _table(self, *, force: bool = False) -> RoutingTable | None:
        """The routing table (cached, or read now); ``None`` in gateway mode if unreadable.

        Raises:
            NoBackendAvailableError: direct mode and the control plane cannot be read.
        """
        core = self._core
        if not force and core.table_is_fresh(self._task_group is not None):
            return core.cache.table
        try:
            table = await self._fetch_table(self._control, None, None)
        except (SageClientError, httpx.HTTPError) as exc:
            return core.read_on_demand_failed(exc)
        core.cache.update(table)
        return table

    # --------------------------------------------------------------- requests
    async def _resolve(self, model: str | None, kind: EngineKind) -> str:
        core = self._core
        chosen = model or core.default_model(kind)
        if chosen:
            return chosen
        table = await self._table()
        if table is not None:
            return core.resolve_from(kind, table.models(kind), core.source_name())
        return core.resolve_from(kind, await self.models(), core.source_name())

    async def _targets(self, model: str, kind: EngineKind) -> list[str]:
        core = self._core
        if not core.config.direct:
            return core.inference_targets(None, model, kind)
        table = await self._table()
        try:
            return core.inference_targets(table, model, kind)
        except SageClientError:
            if not core.may_refresh_on_demand():
                raise
        return core.inference_targets(await self._table(force=True), model, kind)

    async def _send(
        self, method: str, path: str, targets: list[str], body: Any | None
    ) -> httpx.Response:
        """Send with failover; returns an open 2xx response (the caller closes it)."""
        core = self._core
        plan = core.new_plan(targets)
        last_status: APIStatusError | None = None
        while True:
            url = plan.next_target()
            request = attempt_request(self._http, core, method, url + path, body, plan.remaining())
            retry_after: float | None = None
            try:
                response = await self._http.send(request, stream=True)
            except httpx.UnsupportedProtocol as exc:
                raise unsupported_url(url, exc) from exc
            except httpx.TransportError as exc:
                error = describe_exception(exc)
            else:
                if 200 <= response.status_code < 300:
                    core.health.record_success(url)
                    return response
                refused = refused_attempt(response, await _read_error_body(response), url)
                last_status, error, retry_after = refused
            delay = core.attempt_failed(
                plan, url, error, retry_after=retry_after, last_status=last_status
            )
            if not is_testing():
                await anyio.sleep(delay)

    async def _post_json(
        self, path: str, model: str, kind: EngineKind, body: dict[str, Any]
    ) -> Any:
        response = await self._send("POST", path, await self._targets(model, kind), body)
        try:
            await response.aread()
        except httpx.TransportError as exc:
            raise StreamInterruptedError(
                f"the response was cut: {describe_exception(exc)}"
            ) from exc
        finally:
            await response.aclose()
        return decode_json(response)

    async def _stream(
        self, path: str, model: str, kind: EngineKind, body: dict[str, Any]
    ) -> AsyncChatStream:
        response = await self._send("POST", path, await self._targets(model, kind), body)
        return AsyncChatStream(response)

    # ------------------------------------------------------------- public API
    @overload
    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = None,
        stream: Literal[False] = False,
        **params: Any,
    ) -> ChatResult: ...
    @overload
    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = None,
        *,
        stream: Literal[True],
        **params: Any,
    ) -> AsyncChatStream: ...
    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = None,
        stream: bool = False,
        **params: Any,
    ) -> ChatResult | AsyncChatStream:
        """``POST /v1/chat/completions``.

        Args:
            messages: OpenAI chat messages.
            model: the served model name; omitted: the default or the only one served.
            stream: return an :class:`AsyncChatStream` of text deltas.
            **params: other OpenAI parameters, sent unchanged (``temperature=0`` stays 0).

        Raises:
            ModelNotSpecifiedError, NoBackendAvailableError, APIStatusError,
            StreamInterruptedError, InvalidResponseError.
        """
        kind = EngineKind.LLM
        name = await self._resolve(model, kind)
        body = build_body({"messages": list(messages)}, name, stream, params)
        if stream:
            return await self._stream("/v1/chat/completions", name, kind, body)
        return parse_chat(await self._post_json("/v1/chat/completions", name, kind, body))

    @overload
    async def generate(
        self, prompt: str, model: str | None = None, stream: Literal[False] = False, **params: Any
    ) -> CompletionResult: ...
    @overload
    async def generate(
        self, prompt: str, model: str | None = None, *, stream: Literal[True], **params: Any
    ) -> AsyncChatStream: ...
    async def generate(
        self, prompt: str, model: str | None = None, stream: bool = False, **params: Any
    ) -> CompletionResult | AsyncChatStream:
        """``POST /v1/completions`` (same arguments and errors as :meth:`chat`)."""
        kind = EngineKind.LLM
        name = await self._resolve(model, kind)
        body = build_body({"prompt": prompt}, name, stream, params)
        if stream:
            return await self._stream("/v1/completions", name, kind, body)
        return parse_completion(await self._post_json("/v1/completions", name, kind, body))

    async def embed(
        self, texts: str | Sequence[str], model: str | None = None, **params: Any
    ) -> EmbeddingResult:
        """``POST /v1/embeddings``; a single string gives one vector.

        Raises:
            ModelNotSpecifiedError, NoBackendAvailableError, APIStatusError, InvalidResponseError.
        """
        kind = EngineKind.EMBEDDING
        name = await self._resolve(model, kind)
        inputs = [texts] if isinstance(texts, str) else list(texts)
        body = build_body({"input": inputs}, name, False, params)
        return parse_embedding(await self._post_json("/v1/embeddings", name, kind, body))

    async def models(self) -> list[str]:
        """Served model names: ``GET /v1/models`` of the gateway, or the table in direct mode."""
        core = self._core
        if core.config.direct:
            table = await self._table()
            return table.models() if table is not None else []
        response = await self._send(
            "GET", "/v1/models", core.inference_targets(None, "", EngineKind.LLM), None
        )
        try:
            await response.aread()
        finally:
            await response.aclose()
        return parse_model_list(decode_json(response))

    async def backends(self) -> RoutingTable:
        """The routing table, read now (``GET /v1/management/backends``).

        Raises:
            NoBackendAvailableError: no management URL answered.
            APIStatusError: e.g. 401/403 when the key lacks the admin scope.
        """
        core = self._core
        try:
            table = await self._fetch_table(self._control, None, None)
        except GatewayUnreachableError as exc:
            raise core.management_unreachable(exc) from exc
        core.cache.update(table)
        return table
