"""Calls to etcd's v3 JSON gateway with failover: :class:`EtcdTransport` (httpx).

Calls go to the preferred endpoint; when it cannot serve a call the next one becomes
preferred and the call moves on, within the call's deadline. A call is sent elsewhere
after a connection failure, or after an answer that says nothing was applied ("no
leader", "not capable", ...). After an ambiguous failure (connection broken after the
request was sent, etcd's "request timed out") only calls declared idempotent move on;
others raise :class:`EtcdUnavailableError` with ``maybe_applied=True``. Every request
carries etcd's "require leader" flag, so a member cut off from its quorum answers "no
leader" at once instead of serving stale reads or hanging.

Cancellation: a cancelled call stops waiting; a write already sent may still apply.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from sage.unified.coordinator._etcd._codec import JsonObject, decode_error, is_token_rejected
from sage.unified.coordinator._etcd._endpoints import EtcdEndpoint, EtcdTarget
from sage.unified.coordinator._etcd._errors import (
    EtcdAuthError,
    EtcdConfigError,
    EtcdError,
    EtcdTimeoutError,
    EtcdUnavailableError,
)

__all__ = ["EtcdTls", "EtcdTransport"]

# grpc-gateway turns Grpc-Metadata-* headers into gRPC metadata; etcd then refuses the
# call with "no leader" on a member that has lost its leader (rpctypes.MetadataRequireLeaderKey).
REQUIRE_LEADER = {"Grpc-Metadata-Hasleader": "true"}
_MAX_ROUND_BACKOFF = 1.0
_CALL_CONNECTIONS = 16


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """TLS settings for ``etcds://``: a CA to verify members, and a client certificate
    when etcd runs with ``--client-cert-auth``."""

    ca_file: Path | str | None = None
    """PEM bundle of the CA(s) that signed the members' certificates (None: system CAs)."""
    cert_file: Path | str | None = None
    key_file: Path | str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """Build the context (reads the files).

        Raises:
            EtcdConfigError: A file is missing or unreadable, or only one of cert/key is set.
        """
        if (self.cert_file is None) != (self.key_file is None):
            raise EtcdConfigError("etcd TLS needs both a client certificate and its key")
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise EtcdConfigError(f"cannot load etcd TLS files: {exc}") from None
        return context


@dataclass(slots=True)
class _Attempts:
    """What a call's attempts left behind, for the error raised at its deadline."""

    read_timeout: float | None = None
    last_error: EtcdError | None = None
    in_flight: bool = False
    """An attempt was sent and has not answered (the deadline cut it short)."""
    ambiguous: bool = False
    """An attempt failed in a way that may have applied it."""


class EtcdTransport:
    """The HTTP side of :class:`EtcdClient`: endpoints, failover, deadlines, TLS, tokens.

    Raises:
        EtcdConfigError: TLS settings for a plain URL, half of the credentials, or TLS
            files that cannot be loaded.
    """

    def __init__(
        self,
        target: EtcdTarget,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        tls: EtcdTls | None,
        username: str | None,
        password: str | None,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.target = target
        if tls is not None and not target.tls:
            raise EtcdConfigError("TLS settings given for a plain etcd:// URL; use etcds://")
        self._username = username if username is not None else target.username
        self._password = password if password is not None else target.password
        if (self._username is None) != (self._password is None):
            raise EtcdConfigError("etcd authentication needs both a user and a password")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        verify: ssl.SSLContext | bool = (tls or EtcdTls()).ssl_context() if target.tls else True
        common: dict[str, Any] = {
            "verify": verify,
            "transport": transport,
            "trust_env": False,  # never through an HTTP proxy from the environment
            "headers": REQUIRE_LEADER,
        }
        # Unary calls share a bounded pool: httpx's cost per request grows with the
        # number of requests in flight (bench/etcd_client.py), and etcd answers in about
        # a millisecond, so a few connections carry many tasks. Watches hold a
        # connection each for as long as they run, in a pool of their own, so that
        # watches never starve calls.
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=_CALL_CONNECTIONS), **common
        )
        self._stream_http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0), **common
        )
        self.preferred = 0
        """Index of the endpoint tried first."""
        self.token: str | None = None
        self._token_lock = anyio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._stream_http.aclose()

    async def call_one(
        self, endpoint: EtcdEndpoint, path: str, body: JsonObject, timeout_s: float | None
    ) -> JsonObject:
        """One call to one endpoint, no failover."""
        seconds = self.timeout_s if timeout_s is None else timeout_s
        with anyio.move_on_after(seconds):
            return await self._post(endpoint, path, body)
        raise self.timeout_error(path, seconds, _Attempts())

    def endpoint_order(self) -> list[tuple[int, EtcdEndpoint]]:
        """Endpoints with their index, the preferred one first."""
        endpoints = self.target.endpoints
        order = [(self.preferred + i) % len(endpoints) for i in range(len(endpoints))]
        return [(index, endpoints[index]) for index in order]

    def demote(self, index: int) -> None:
        """The endpoint at ``index`` failed: prefer the next one (unless another task has
        already moved on)."""
        if self.preferred == index:
            self.preferred = (index + 1) % len(self.target.endpoints)

    def forget_token(self) -> None:
        self.token = None

    async def auth_headers(self, endpoint: EtcdEndpoint) -> dict[str, str]:
        """The Authorization header, fetching a token first when none is held."""
        if self._username is None or self._password is None:
            return {}
        async with self._token_lock:
            if self.token is None:
                body = {"name": self._username, "password": self._password}
                answer = await self._send(endpoint, "/v3/auth/authenticate", body, {})
                self.token = str(answer.get("token") or "")
            return {"Authorization": self.token}

    async def open_stream(
        self, endpoint: EtcdEndpoint, path: str, body: JsonObject
    ) -> httpx.Response:
        """POST ``body`` and return the response with its body still unread (a stream).

        Raises:
            EtcdError: Connect failure or an error answer (mapped as for calls).
        """
        headers = await self.auth_headers(endpoint)
        request = _request(
            self._stream_http,
            endpoint.base_url(self.target.tls) + path,
            json.dumps(body).encode(),
            headers,
            httpx.Timeout(None, connect=self.connect_timeout_s),
        )
        try:
            response = await self._stream_http.send(request, stream=True)
        except (httpx.TransportError, ssl.SSLError) as exc:
            # anyio lets a TLS alert received while reading through unwrapped.
            raise _transport_error(exc, endpoint) from None
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
            raise decode_error(
                response.status_code, _json_or_text(response), endpoint=endpoint.netloc
            )
        return response

    def timeout_error(self, path: str, seconds: float, attempts: _Attempts) -> EtcdTimeoutError:
        last = attempts.last_error
        return EtcdTimeoutError(
            f"etcd call {path} got no answer within {seconds} s"
            + (f" (last: {last.message})" if last else ""),
            endpoint=last.endpoint if last else None,
            maybe_applied=attempts.in_flight or attempts.ambiguous,
        )

    async def call(
        self, path: str, body: JsonObject, *, idempotent: bool, timeout_s: float | None
    ) -> JsonObject:
        seconds = self.timeout_s if timeout_s is None else timeout_s
        # Half the deadline per attempt, so that a member that went silent (a partition
        # leaves its connections open) still leaves time to ask another.
        attempts = _Attempts(read_timeout=seconds / 2 if len(self.target.endpoints) > 1 else None)
        with anyio.move_on_after(seconds):
            return await self._call_with_failover(path, body, idempotent, attempts)
        raise self.timeout_error(path, seconds, attempts)

    async def call_many(
        self, path: str, bodies: Sequence[JsonObject], *, timeout_s: float | None
    ) -> list[JsonObject]:
        """Send ``bodies`` as the messages of one client-streaming call and return one
        answer per message (idempotent calls only, e.g. lease keepalives).

        etcd's JSON gateway reads a streaming request as newline-delimited JSON objects
        and answers each with one line, ``{"result": ...}`` or ``{"error": ...}``.
        """
        if not bodies:
            return []
        seconds = self.timeout_s if timeout_s is None else timeout_s
        attempts = _Attempts(read_timeout=seconds / 2 if len(self.target.endpoints) > 1 else None)
        with anyio.move_on_after(seconds):
            answer = await self._call_with_failover(path, list(bodies), True, attempts)
            results: list[JsonObject] = answer["results"]
            return results
        raise self.timeout_error(path, seconds, attempts)

    async def _call_with_failover(
        self, path: str, body: JsonObject | list[JsonObject], idempotent: bool, attempts: _Attempts
    ) -> JsonObject:
        token_refreshed = False
        failures = 0
        while True:
            index, endpoint = self.endpoint_order()[0]
            try:
                return await self._post(endpoint, path, body, attempts)
            except EtcdError as error:
                attempts.in_flight = False
                attempts.ambiguous |= error.maybe_applied
                if is_token_rejected(error) and self._username and not token_refreshed:
                    token_refreshed = True  # expired, or issued before a restart
                    self.forget_token()
                    continue
                if not isinstance(error, EtcdUnavailableError):
                    raise
                if error.maybe_applied and not idempotent:
                    raise
                attempts.last_error = error
                self.demote(index)
            failures += 1
            if failures % len(self.target.endpoints) == 0:
                rounds = failures // len(self.target.endpoints)
                await anyio.sleep(min(0.05 * 2**rounds, _MAX_ROUND_BACKOFF))

    async def _post(
        self,
        endpoint: EtcdEndpoint,
        path: str,
        body: JsonObject | list[JsonObject],
        attempts: _Attempts | None = None,
    ) -> JsonObject:
        headers = await self.auth_headers(endpoint)
        if attempts is None:
            return await self._send(endpoint, path, body, headers)
        attempts.in_flight = True
        return await self._send(endpoint, path, body, headers, attempts.read_timeout)

    async def _send(
        self,
        endpoint: EtcdEndpoint,
        path: str,
        body: JsonObject | list[JsonObject],
        headers: dict[str, str],
        read_timeout: float | None = None,
    ) -> JsonObject:
        lines = isinstance(body, list)
        if isinstance(body, list):
            data = b"\n".join(json.dumps(item).encode() for item in body)
        else:
            data = json.dumps(body).encode()
        request = _request(
            self._http,
            endpoint.base_url(self.target.tls) + path,
            data,
            headers,
            httpx.Timeout(read_timeout, connect=self.connect_timeout_s),
        )
        try:
            response = await self._http.send(request)
        except (httpx.TransportError, ssl.SSLError) as exc:
            # anyio lets a TLS alert received while reading through unwrapped.
            raise _transport_error(exc, endpoint) from None
        if response.status_code != 200:
            raise decode_error(
                response.status_code, _json_or_text(response), endpoint=endpoint.netloc
            )
        if lines:
            return {"results": _json_lines(response, endpoint)}
        answer = _json_or_text(response)
        if not isinstance(answer, dict):
            raise EtcdUnavailableError(
                f"etcd at {endpoint.netloc} answered no JSON object",
                endpoint=endpoint.netloc,
                maybe_applied=True,
            )
        return answer


class _Body(httpx.AsyncByteStream):
    """A request body that is an iterator object, not an async generator.

    httpx's own body (``ByteStream.__aiter__``, an async generator) is left suspended
    when a send is cancelled half-way, which under trio (a checkpoint in every socket
    write) happens whenever a call or watch is cancelled at the wrong moment; trio then
    reports the abandoned generator when it is garbage collected.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Once(self._data)


class _Once:
    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data


def _request(
    client: httpx.AsyncClient,
    url: str,
    data: bytes,
    headers: dict[str, str],
    timeout: httpx.Timeout,
) -> httpx.Request:
    """A JSON POST with a :class:`_Body` (Content-Length set from ``data``)."""
    request = client.build_request(
        "POST",
        url,
        content=data,
        headers={**headers, "Content-Type": "application/json"},
        timeout=timeout,
    )
    request.stream = _Body(data)
    return request


def _transport_error(exc: Exception, endpoint: EtcdEndpoint) -> EtcdError:
    refusal = _tls_refusal(exc)
    if refusal is not None:
        # Another endpoint would refuse the same certificate: fail now, not at the deadline.
        return EtcdAuthError(
            f"TLS with etcd at {endpoint.netloc} failed: {refusal}", endpoint=endpoint.netloc
        )
    # A connect failure means etcd never saw the request; anything later is ambiguous.
    before_send = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
    return EtcdUnavailableError(
        f"etcd at {endpoint.netloc}: {type(exc).__name__}: {exc}".rstrip(": "),
        endpoint=endpoint.netloc,
        maybe_applied=not before_send,
    )


def _tls_refusal(exc: BaseException) -> ssl.SSLError | None:
    """The certificate error behind ``exc`` (ours refused, or theirs not trusted), if any;
    a connection reset during the handshake is not one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        if isinstance(seen, ssl.SSLError) and "CERTIFICATE" in str(seen.reason or ""):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _json_lines(response: httpx.Response, endpoint: EtcdEndpoint) -> list[JsonObject]:
    """The ``result`` of each line of a streamed answer; the first ``error`` line raises."""
    results: list[JsonObject] = []
    for line in response.text.splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            item = None
        if not isinstance(item, dict):
            raise EtcdUnavailableError(
                f"etcd at {endpoint.netloc} answered a line that is no JSON object",
                endpoint=endpoint.netloc,
                maybe_applied=True,
            )
        if "error" in item:
            error = item["error"]
            raise decode_error(
                200, error if isinstance(error, dict) else {}, endpoint=endpoint.netloc
            )
        result = item.get("result")
        results.append(result if isinstance(result, dict) else {})
    return results


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
