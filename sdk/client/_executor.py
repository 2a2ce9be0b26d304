"""The one executor of the protocol: sends a declared :class:`Endpoint`, decodes its reply.

Every call between components goes through :class:`AsyncCaller` or its sync twin
:class:`SyncCaller`. A caller holds one or several base URLs of the same service (the
control planes of an HA deployment, say) and, per call:

- builds the request from the endpoint (method, path parameters quoted as one segment,
  declared query parameters only, JSON body, ``Authorization: Bearer``);
- sends it to the healthiest URL first and moves on to the next one when the endpoint's
  retry rule allows it: a refused connection always (the request never arrived), a
  timeout, a reset or a 502/503/504 only for :attr:`Retry.SAFE` endpoints;
- turns the answer into the endpoint's reply type, a non-2xx answer into the
  :class:`APIStatusError` subclass of its status (:func:`status_error`, the one place a
  wire error becomes an exception), a connection failure into
  :class:`GatewayUnreachableError`, and passes any of them through the caller's
  ``translate_error`` hook when one is given (the control plane turns them into its own
  errors that way).

There is no waiting between URLs: backoff belongs to the loops that call again
(reports, the table watch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

import httpx
import msgspec

from sage.unified.sdk.client._config import normalize_base_url
from sage.unified.sdk.client._errors import (
    APIStatusError,
    GatewayUnreachableError,
    InvalidResponseError,
    SageClientError,
    status_error,
)
from sage.unified.sdk.client._failover import RETRYABLE_STATUSES, TargetHealth
from sage.unified.sdk.models import encode
from sage.unified.sdk.protocol import Endpoint, Retry

__all__ = [
    "AsyncCaller",
    "ErrorTranslator",
    "RawReply",
    "SyncCaller",
    "async_http_pool",
    "sync_http_pool",
]

ReplyT = TypeVar("ReplyT")
HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)

ErrorTranslator = Callable[[SageClientError], BaseException]
"""Turns an SDK error into the caller's own (raised ``from`` the SDK error)."""


def async_http_pool(
    *,
    max_connections: int = 100,
    max_keepalive: int = 20,
    trust_env: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A connection pool several async callers can share (the caller owns and closes it).

    Never follows redirects (a probe must not be sent to another address) and ignores
    proxy variables unless ``trust_env``.
    """
    return httpx.AsyncClient(
        trust_env=trust_env,
        follow_redirects=False,
        transport=transport,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_keepalive
        ),
    )


def sync_http_pool(
    *, trust_env: bool = False, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """The sync twin of :func:`async_http_pool`."""
    return httpx.Client(trust_env=trust_env, follow_redirects=False, transport=transport)


@dataclass(frozen=True, slots=True)
class RawReply:
    """An answer before decoding: status, body and where it came from."""

    status: int
    content: bytes
    headers: httpx.Headers
    url: str


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    params: dict[str, str]
    content: bytes | None
    headers: dict[str, str]
    retry: Retry


def _query_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _build(
    endpoint: Endpoint[Any, Any],
    body: object | None,
    path: Mapping[str, Any] | None,
    query: Mapping[str, Any] | None,
    authorization: str | None,
) -> _Request:
    query = {k: v for k, v in (query or {}).items() if v is not None}
    endpoint.check_query(query)
    headers: dict[str, str] = {}
    if authorization:
        headers["Authorization"] = authorization
    content = None
    if body is not None:
        content = encode(body)
        headers["Content-Type"] = "application/json"
    return _Request(
        endpoint.method,
        endpoint.format_path(path),
        {k: _query_value(v) for k, v in query.items()},
        content,
        headers,
        endpoint.retry,
    )


def decode_reply(endpoint: Endpoint[Any, ReplyT], reply: RawReply) -> ReplyT:
    """The endpoint's reply type from a 2xx answer.

    Raises:
        APIStatusError: a non-2xx answer.
        InvalidResponseError: a 2xx answer that is not the declared type.
    """
    if not 200 <= reply.status < 300:
        raise status_error(reply.status, reply.content, url=reply.url)
    if endpoint.reply is None:
        raise TypeError(f"{endpoint.name} has no JSON reply; use send()")
    try:
        result: ReplyT = msgspec.json.decode(reply.content, type=endpoint.reply)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidResponseError(f"{reply.url} answered with an unexpected body: {exc}") from exc
    return result


def _may_try_next(request: _Request, error: Exception) -> bool:
    """Whether a failure of ``request`` may be retried on the next URL."""
    if isinstance(error, httpx.ConnectError):
        return True  # refused or unresolvable: it never reached a server
    if request.retry is not Retry.SAFE:
        return False
    if isinstance(error, APIStatusError):
        return error.status_code in RETRYABLE_STATUSES
    return isinstance(error, httpx.TransportError)


class _Base(Generic[HttpT]):
    """What both callers share: URLs, token, timeouts, health order, error translation."""

    def __init__(
        self,
        urls: str | Sequence[str],
        token: str | None,
        *,
        http: HttpT,
        owns_http: bool,
        timeout: float,
        connect_timeout: float,
        translate_error: ErrorTranslator | None,
        health: TargetHealth | None = None,
    ) -> None:
        listed = [urls] if isinstance(urls, str) else list(urls)
        if not listed:
            raise ValueError("a caller needs at least one URL")
        self.urls = [normalize_base_url(u) for u in listed]
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.health = health or TargetHealth()
        self._authorization = f"Bearer {token}" if token else None
        self._http: HttpT = http
        self._owns_http = owns_http
        self._translate = translate_error

    @property
    def url(self) -> str:
        """The first URL (what one-URL callers name in messages)."""
        return self.urls[0]

    def _timeout(self, extra_read_s: float, timeout: float | None) -> httpx.Timeout:
        read = (self.timeout if timeout is None else timeout) + extra_read_s
        return httpx.Timeout(
            connect=min(self.connect_timeout, read), read=read, write=read, pool=read
        )

    def _request(
        self,
        endpoint: Endpoint[Any, Any],
        body: object | None,
        path: Mapping[str, Any] | None,
        query: Mapping[str, Any] | None,
        authorization: str | None,
    ) -> _Request:
        return _build(endpoint, body, path, query, authorization or self._authorization)

    def _fail(self, error: SageClientError) -> NoReturn:
        if self._translate is not None:
            raise self._translate(error) from error
        raise error

    def _settle(
        self,
        request: _Request,
        base: str,
        url: str,
        outcome: httpx.Response | httpx.TransportError,
        expect: frozenset[int],
    ) -> tuple[RawReply | None, SageClientError | None, bool]:
        """``(reply, error, try_next)`` for one attempt's outcome (no I/O)."""
        if isinstance(outcome, httpx.TransportError):
            self.health.record_failure(base)
            return None, self._unreachable(base, outcome), _may_try_next(request, outcome)
        reply = RawReply(outcome.status_code, outcome.content, outcome.headers, url)
        if 200 <= reply.status < 300 or reply.status in expect:
            self.health.record_success(base)
            return reply, None, False
        error = status_error(reply.status, reply.content, url=url)
        if reply.status in RETRYABLE_STATUSES:
            self.health.record_failure(base)
        return None, error, _may_try_next(request, error)

    def _unreachable(self, url: str, exc: Exception) -> GatewayUnreachableError:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        error = GatewayUnreachableError(
            url,
            reason,
            timed_out=isinstance(exc, httpx.TimeoutException),
            connect_failed=isinstance(exc, httpx.ConnectError),
        )
        error.__cause__ = exc  # raised later, outside the except block
        return error


class AsyncCaller(_Base[httpx.AsyncClient]):
    """Sends declared endpoints to one service (anyio: asyncio and trio).

    Args:
        urls: the service's base URL, or several (tried healthiest first).
        token: sent as ``Authorization: Bearer`` unless a call gives its own.
        timeout: read timeout per call, seconds (a long-poll adds its wait).
        connect_timeout: seconds.
        http: a pool shared with other callers (not closed by :meth:`aclose`).
        transport: an httpx transport for a pool of its own (tests).
        trust_env: let httpx read proxies and certificates from the environment.
        translate_error: turns SDK errors into the caller's own.
        health: which URLs failed recently, when shared with other callers of the same
            services.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        token: str | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 3.0,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        trust_env: bool = False,
        translate_error: ErrorTranslator | None = None,
        health: TargetHealth | None = None,
    ) -> None:
        super().__init__(
            urls,
            token,
            http=http or async_http_pool(trust_env=trust_env, transport=transport),
            owns_http=http is None,
            timeout=timeout,
            connect_timeout=connect_timeout,
            translate_error=translate_error,
            health=health,
        )

    async def send(
        self,
        endpoint: Endpoint[Any, Any],
        body: object | None = None,
        *,
        path: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        extra_read_s: float = 0.0,
        read_timeout_s: float | None = None,
        authorization: str | None = None,
        expect: frozenset[int] = frozenset(),
    ) -> RawReply:
        """Send ``endpoint``; return a 2xx answer (or one of ``expect``) undecoded.

        Raises:
            GatewayUnreachableError: no URL could be reached.
            APIStatusError: the last answer was not 2xx (nor in ``expect``).
        """
        request = self._request(endpoint, body, path, query, authorization)
        last: SageClientError | None = None
        for base in self.health.order(self.urls):
            url = base + request.path
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await self._http.request(
                    request.method,
                    url,
                    params=request.params,
                    content=request.content,
                    headers=request.headers,
                    timeout=self._timeout(extra_read_s, read_timeout_s),
                )
            except httpx.TransportError as exc:
                outcome = exc
            reply, last, try_next = self._settle(request, base, url, outcome, expect)
            if reply is not None:
                return reply
            if not try_next:
                break
        assert last is not None
        self._fail(last)

    async def call(
        self,
        endpoint: Endpoint[Any, ReplyT],
        body: object | None = None,
        *,
        path: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        extra_read_s: float = 0.0,
        read_timeout_s: float | None = None,
        authorization: str | None = None,
    ) -> ReplyT:
        """Send ``endpoint`` and decode its reply (errors as for :meth:`send`, plus
        :class:`InvalidResponseError` for a 2xx body that is not the declared type)."""
        reply = await self.send(
            endpoint,
            body,
            path=path,
            query=query,
            extra_read_s=extra_read_s,
            read_timeout_s=read_timeout_s,
            authorization=authorization,
        )
        try:
            return decode_reply(endpoint, reply)
        except SageClientError as exc:
            self._fail(exc)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()


class SyncCaller(_Base[httpx.Client]):
    """The blocking twin of :class:`AsyncCaller` (same arguments and behaviour)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        token: str | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 3.0,
        http: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        trust_env: bool = False,
        translate_error: ErrorTranslator | None = None,
        health: TargetHealth | None = None,
    ) -> None:
        super().__init__(
            urls,
            token,
            http=http or sync_http_pool(trust_env=trust_env, transport=transport),
            owns_http=http is None,
            timeout=timeout,
            connect_timeout=connect_timeout,
            translate_error=translate_error,
            health=health,
        )

    def send(
        self,
        endpoint: Endpoint[Any, Any],
        body: object | None = None,
        *,
        path: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        extra_read_s: float = 0.0,
        read_timeout_s: float | None = None,
        authorization: str | None = None,
        expect: frozenset[int] = frozenset(),
    ) -> RawReply:
        """See :meth:`AsyncCaller.send`."""
        request = self._request(endpoint, body, path, query, authorization)
        last: SageClientError | None = None
        for base in self.health.order(self.urls):
            url = base + request.path
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = self._http.request(
                    request.method,
                    url,
                    params=request.params,
                    content=request.content,
                    headers=request.headers,
                    timeout=self._timeout(extra_read_s, read_timeout_s),
                )
            except httpx.TransportError as exc:
                outcome = exc
            reply, last, try_next = self._settle(request, base, url, outcome, expect)
            if reply is not None:
                return reply
            if not try_next:
                break
        assert last is not None
        self._fail(last)

    def call(
        self,
        endpoint: Endpoint[Any, ReplyT],
        body: object | None = None,
        *,
        path: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        extra_read_s: float = 0.0,
        read_timeout_s: float | None = None,
        authorization: str | None = None,
    ) -> ReplyT:
        """See :meth:`AsyncCaller.call`."""
        reply = self.send(
            endpoint,
            body,
            path=path,
            query=query,
            extra_read_s=extra_read_s,
            read_timeout_s=read_timeout_s,
            authorization=authorization,
        )
        try:
            return decode_reply(endpoint, reply)
        except SageClientError as exc:
            self._fail(exc)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()
