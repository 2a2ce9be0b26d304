"""An async etcd v3 client over etcd's JSON gateway (httpx; asyncio and trio).

Why not gRPC: the gRPC clients (``aetcd``, ``etcd3``) run on asyncio only, take one
endpoint and, for ``aetcd``, no TLS; grpcio adds ~20 MB. ``bench/etcd_client.py`` has
the measurements. etcd serves the same API as JSON on its client port (``/v3/...``).

Failover: calls go to the preferred endpoint; when it cannot serve a call the next one
becomes preferred and the call moves on, within the call's deadline. A call is sent
elsewhere after a connection failure, or after an answer that says nothing was applied
("no leader", "not capable", ...). After an ambiguous failure (connection broken after
the request was sent, etcd's "request timed out") only reads and other idempotent calls
move on; a write raises :class:`EtcdUnavailableError` with ``maybe_applied=True``.
Every request carries etcd's "require leader" flag, so a member cut off from its
quorum answers "no leader" at once instead of serving stale reads or hanging.

Cancellation: a cancelled call stops waiting; a write already sent may still apply.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import httpx

from sage.unified.coordinator._etcd._codec import (
    JsonObject,
    decode_delete,
    decode_error,
    decode_keepalive_ttl,
    decode_lease,
    decode_put,
    decode_range,
    decode_txn,
    encode_delete,
    encode_put,
    encode_range,
    encode_txn,
    is_token_rejected,
)
from sage.unified.coordinator._etcd._endpoints import EtcdEndpoint, EtcdTarget, parse_etcd_url
from sage.unified.coordinator._etcd._errors import (
    EtcdAuthError,
    EtcdConfigError,
    EtcdError,
    EtcdLeaseExpiredError,
    EtcdRequestError,
    EtcdTimeoutError,
    EtcdTxnFailedError,
    EtcdUnavailableError,
)
from sage.unified.coordinator._etcd._types import (
    Bytes,
    Compare,
    DeleteOp,
    DeleteResult,
    KeyValue,
    Lease,
    PutOp,
    PutResult,
    RangeOp,
    RangeResult,
    TxnOp,
    TxnResult,
)
from sage.unified.coordinator._etcd._watch import Watch

__all__ = ["EtcdClient", "EtcdTls", "MemberStatus"]

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


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """What one member says about itself (``/v3/maintenance/status``)."""

    endpoint: EtcdEndpoint
    member_id: int
    leader_id: int
    version: str
    raft_term: int

    @property
    def is_leader(self) -> bool:
        return self.member_id == self.leader_id != 0


@dataclass(slots=True)
class _Attempts:
    """What a call's attempts left behind, for the error raised at its deadline."""

    read_timeout: float | None = None
    last_error: EtcdError | None = None
    in_flight: bool = False
    """An attempt was sent and has not answered (the deadline cut it short)."""
    ambiguous: bool = False
    """An attempt failed in a way that may have applied it."""


class EtcdClient:
    """Connection to an etcd cluster, shared by every task of a process.

    Use as ``async with EtcdClient("etcd://h1:2379,h2:2379") as etcd: ...``. Each call
    takes ``timeout_s`` (seconds, default the client's) covering every endpoint it tries.

    Args:
        url: An etcd URL (:func:`parse_etcd_url`) or a parsed :class:`EtcdTarget`.
        timeout_s: Default deadline of one call, in seconds.
        connect_timeout_s: How long one TCP/TLS connect may take before the next endpoint.
        tls: CA and client certificate for ``etcds://`` (default: system CAs, no cert).
        username: etcd user (overrides the URL's); needs ``password``.
        password: etcd password (overrides the URL's).
        transport: An httpx transport for tests.

    Raises:
        EtcdConfigError: Bad URL, TLS files or credentials.
    """

    def __init__(
        self,
        url: str | EtcdTarget,
        *,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 1.0,
        tls: EtcdTls | None = None,
        username: str | None = None,
        password: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.target = parse_etcd_url(url) if isinstance(url, str) else url
        if tls is not None and not self.target.tls:
            raise EtcdConfigError("TLS settings given for a plain etcd:// URL; use etcds://")
        self._username = username if username is not None else self.target.username
        self._password = password if password is not None else self.target.password
        if (self._username is None) != (self._password is None):
            raise EtcdConfigError("etcd authentication needs both a user and a password")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        verify: ssl.SSLContext | bool = True
        if self.target.tls:
            verify = (tls or EtcdTls()).ssl_context()
        common: dict[str, Any] = {
            "verify": verify,
            "transport": transport,
            "trust_env": False,  # never through an HTTP proxy from the environment
            "headers": REQUIRE_LEADER,
        }
        # Unary calls share a bounded pool: httpx's cost per request grows with the
        # number of open connections (bench/etcd_client.py), and etcd answers in about
        # a millisecond, so a few connections carry many tasks. Watches hold a
        # connection each for as long as they run, in a pool of their own, so that
        # watches never starve calls.
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=_CALL_CONNECTIONS), **common
        )
        self._stream_http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0), **common
        )
        self._preferred = 0
        self._token: str | None = None
        self._token_lock = anyio.Lock()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection. Watches opened by this client stop working."""
        await self._http.aclose()
        await self._stream_http.aclose()

    # -- key-value --------------------------------------------------------------------

    async def get(
        self, key: Bytes, *, revision: int = 0, timeout_s: float | None = None
    ) -> KeyValue | None:
        """The key's current value (or as of ``revision``), None when it does not exist."""
        result = await self.range(RangeOp(key, revision=revision), timeout_s=timeout_s)
        return result.kvs[0] if result.kvs else None

    async def get_prefix(
        self,
        prefix: Bytes,
        *,
        limit: int = 0,
        revision: int = 0,
        keys_only: bool = False,
        timeout_s: float | None = None,
    ) -> RangeResult:
        """Every key starting with ``prefix``, in key order."""
        op = RangeOp(prefix, prefix=True, limit=limit, revision=revision, keys_only=keys_only)
        return await self.range(op, timeout_s=timeout_s)

    async def range(self, op: RangeOp, *, timeout_s: float | None = None) -> RangeResult:
        """A linearizable read of one key or a range (see :class:`RangeOp`).

        Raises:
            EtcdCompactedError: ``op.revision`` is older than the compaction point.
        """
        body = await self._call(
            "/v3/kv/range", encode_range(op), idempotent=True, timeout_s=timeout_s
        )
        return decode_range(body)

    async def put(
        self,
        key: Bytes,
        value: Bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        idempotent: bool = False,
        timeout_s: float | None = None,
    ) -> PutResult:
        """Set ``key`` to ``value`` (attached to ``lease`` when non-zero).

        Args:
            idempotent: Writing the value twice is harmless (a full snapshot, not a
                counter): after an ambiguous failure the put is sent again, to another
                member, within the deadline, instead of raising.

        Raises:
            EtcdUnavailableError: No member took it; ``maybe_applied`` says whether it may
                still have been applied.
        """
        body = encode_put(PutOp(key, value, lease, prev_kv))
        answer = await self._call("/v3/kv/put", body, idempotent=idempotent, timeout_s=timeout_s)
        return decode_put(answer)

    async def delete(
        self,
        key: Bytes,
        *,
        prefix: bool = False,
        prev_kv: bool = False,
        idempotent: bool = False,
        timeout_s: float | None = None,
    ) -> DeleteResult:
        """Delete ``key`` (or every key under it with ``prefix=True``); ``idempotent`` as
        for :meth:`put` (a repeated delete finds nothing: ``deleted`` may then be 0)."""
        body = encode_delete(DeleteOp(key, prefix=prefix, prev_kv=prev_kv))
        answer = await self._call(
            "/v3/kv/deleterange", body, idempotent=idempotent, timeout_s=timeout_s
        )
        return decode_delete(answer)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
        *,
        required: bool = False,
        idempotent: bool = False,
        timeout_s: float | None = None,
    ) -> TxnResult:
        """Run ``success`` if every compare holds, else ``failure``, atomically.

        ``idempotent`` as for :meth:`put`: only for a transaction whose second run is
        harmless. A compare-and-swap is not (its repeat fails the compare although the
        first run succeeded): after ``maybe_applied``, read the key again instead.

        Raises:
            EtcdTxnFailedError: ``required`` is set and a compare failed (``.result`` has
                the failure branch's responses).
        """
        body = encode_txn(tuple(compares), tuple(success), tuple(failure))
        answer = await self._call("/v3/kv/txn", body, idempotent=idempotent, timeout_s=timeout_s)
        result = decode_txn(answer)
        if required and not result.succeeded:
            raise EtcdTxnFailedError("etcd transaction compares failed", result=result)
        return result

    # -- leases -----------------------------------------------------------------------

    async def lease_grant(self, ttl: int, *, timeout_s: float | None = None) -> Lease:
        """A new lease of ``ttl`` seconds. A retried grant may leave an unused lease
        behind; it expires on its own."""
        body = {"TTL": str(ttl)}
        return decode_lease(
            await self._call("/v3/lease/grant", body, idempotent=True, timeout_s=timeout_s)
        )

    async def lease_keepalive(self, lease_id: int, *, timeout_s: float | None = None) -> int:
        """Renew the lease once; returns the TTL it now has.

        Raises:
            EtcdLeaseExpiredError: The lease no longer exists.
        """
        body = {"ID": str(lease_id)}
        answer = await self._call("/v3/lease/keepalive", body, idempotent=True, timeout_s=timeout_s)
        ttl = decode_keepalive_ttl(answer)
        if ttl <= 0:
            raise EtcdLeaseExpiredError(f"etcd lease {lease_id:x} has expired", lease_id=lease_id)
        return ttl

    async def lease_revoke(self, lease_id: int, *, timeout_s: float | None = None) -> None:
        """Revoke the lease and delete its keys; a lease already gone is not an error."""
        try:
            await self._call(
                "/v3/lease/revoke", {"ID": str(lease_id)}, idempotent=True, timeout_s=timeout_s
            )
        except EtcdRequestError as exc:
            if "lease not found" not in exc.message:
                raise

    async def keep_lease_alive(self, lease: Lease, *, interval: float | None = None) -> None:
        """Renew ``lease`` every ``interval`` seconds (default a third of its TTL) until
        cancelled. Run it in a task group beside the work the lease protects.

        Failed renewals are retried every ``interval / 4``; the lease is given up when
        ``ttl`` seconds pass after the send time of the last renewal that succeeded, which
        is no later than etcd's own expiry.

        Raises:
            EtcdLeaseExpiredError: The lease is gone or could not be renewed in time; its
                keys are (or will be any moment) deleted.
        """
        period = interval if interval is not None else max(lease.ttl / 3, 0.1)
        expires_at = anyio.current_time() + lease.ttl
        while True:
            sent_at = anyio.current_time()
            remaining = expires_at - sent_at
            if remaining <= 0:
                raise EtcdLeaseExpiredError(
                    f"etcd lease {lease.id:x} was not renewed within its {lease.ttl} s TTL",
                    lease_id=lease.id,
                )
            try:
                ttl = await self.lease_keepalive(lease.id, timeout_s=min(remaining, period))
            except EtcdUnavailableError:
                await anyio.sleep(min(period / 4, max(expires_at - anyio.current_time(), 0)))
                continue
            expires_at = sent_at + ttl
            await anyio.sleep(period)

    # -- cluster ----------------------------------------------------------------------

    async def compact(
        self, revision: int, *, physical: bool = False, timeout_s: float | None = None
    ) -> None:
        """Drop the history before ``revision`` (reads and watches of it then raise
        :class:`EtcdCompactedError`); ``physical`` waits until the space is freed."""
        body: JsonObject = {"revision": str(revision), "physical": physical}
        await self._call("/v3/kv/compaction", body, idempotent=True, timeout_s=timeout_s)

    async def member_status(
        self, endpoint: EtcdEndpoint, *, timeout_s: float | None = None
    ) -> MemberStatus:
        """Ask one member (no failover) who it is, who leads, and its version."""
        seconds = self.timeout_s if timeout_s is None else timeout_s
        body: JsonObject | None = None
        with anyio.move_on_after(seconds):
            body = await self._post(endpoint, "/v3/maintenance/status", {})
        if body is None:
            raise self._timeout_error("/v3/maintenance/status", seconds, _Attempts())
        return MemberStatus(
            endpoint=endpoint,
            member_id=int((body.get("header") or {}).get("member_id") or 0),
            leader_id=int(body.get("leader") or 0),
            version=str(body.get("version") or ""),
            raft_term=int(body.get("raftTerm") or body.get("raft_term") or 0),
        )

    def watch(
        self,
        key: Bytes,
        *,
        prefix: bool = False,
        range_end: Bytes | None = None,
        start_revision: int = 0,
        prev_kv: bool = False,
        idle_timeout_s: float = 10.0,
        unavailable_timeout_s: float | None = None,
    ) -> Watch:
        """Watch ``key`` (or a prefix) for changes; see :class:`Watch`.

        Use as ``async with etcd.watch(prefix, prefix=True, start_revision=r) as events:
        async for event in events: ...``.
        """
        return Watch(
            self,
            key,
            prefix=prefix,
            range_end=range_end,
            start_revision=start_revision,
            prev_kv=prev_kv,
            idle_timeout_s=idle_timeout_s,
            unavailable_timeout_s=unavailable_timeout_s,
        )

    # -- plumbing, shared with Watch ----------------------------------------------------

    def _endpoint_order(self) -> list[tuple[int, EtcdEndpoint]]:
        """Endpoints with their index, the preferred one first."""
        endpoints = self.target.endpoints
        order = [(self._preferred + i) % len(endpoints) for i in range(len(endpoints))]
        return [(index, endpoints[index]) for index in order]

    def _demote(self, index: int) -> None:
        """The endpoint at ``index`` failed: prefer the next one (unless another task has
        already moved on)."""
        if self._preferred == index:
            self._preferred = (index + 1) % len(self.target.endpoints)

    def _forget_token(self) -> None:
        self._token = None

    async def _auth_headers(self, endpoint: EtcdEndpoint) -> dict[str, str]:
        """The Authorization header, fetching a token first when none is held."""
        if self._username is None or self._password is None:
            return {}
        async with self._token_lock:
            if self._token is None:
                body = {"name": self._username, "password": self._password}
                answer = await self._send(endpoint, "/v3/auth/authenticate", body, {})
                self._token = str(answer.get("token") or "")
            return {"Authorization": self._token}

    async def _open_stream(
        self, endpoint: EtcdEndpoint, path: str, body: JsonObject
    ) -> httpx.Response:
        """POST ``body`` and return the response with its body still unread (a stream).

        Raises:
            EtcdError: Connect failure or an error answer (mapped as for calls).
        """
        headers = await self._auth_headers(endpoint)
        request = self._stream_http.build_request(
            "POST",
            endpoint.base_url(self.target.tls) + path,
            json=body,
            headers=headers,
            timeout=httpx.Timeout(None, connect=self.connect_timeout_s),
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

    def _timeout_error(self, path: str, seconds: float, attempts: _Attempts) -> EtcdTimeoutError:
        last = attempts.last_error
        return EtcdTimeoutError(
            f"etcd call {path} got no answer within {seconds} s"
            + (f" (last: {last.message})" if last else ""),
            endpoint=last.endpoint if last else None,
            maybe_applied=attempts.in_flight or attempts.ambiguous,
        )

    async def _call(
        self, path: str, body: JsonObject, *, idempotent: bool, timeout_s: float | None
    ) -> JsonObject:
        seconds = self.timeout_s if timeout_s is None else timeout_s
        # Half the deadline per attempt, so that a member that went silent (a partition
        # leaves its connections open) still leaves time to ask another.
        attempts = _Attempts(read_timeout=seconds / 2 if len(self.target.endpoints) > 1 else None)
        with anyio.move_on_after(seconds):
            return await self._call_with_failover(path, body, idempotent, attempts)
        raise self._timeout_error(path, seconds, attempts)

    async def _call_with_failover(
        self, path: str, body: JsonObject, idempotent: bool, attempts: _Attempts
    ) -> JsonObject:
        token_refreshed = False
        failures = 0
        while True:
            index, endpoint = self._endpoint_order()[0]
            try:
                return await self._post(endpoint, path, body, attempts)
            except EtcdError as error:
                attempts.in_flight = False
                attempts.ambiguous |= error.maybe_applied
                if is_token_rejected(error) and self._username and not token_refreshed:
                    token_refreshed = True  # expired, or issued before a restart
                    self._forget_token()
                    continue
                if not isinstance(error, EtcdUnavailableError):
                    raise
                if error.maybe_applied and not idempotent:
                    raise
                attempts.last_error = error
                self._demote(index)
            failures += 1
            if failures % len(self.target.endpoints) == 0:
                rounds = failures // len(self.target.endpoints)
                await anyio.sleep(min(0.05 * 2**rounds, _MAX_ROUND_BACKOFF))

    async def _post(
        self,
        endpoint: EtcdEndpoint,
        path: str,
        body: JsonObject,
        attempts: _Attempts | None = None,
    ) -> JsonObject:
        headers = await self._auth_headers(endpoint)
        if attempts is None:
            return await self._send(endpoint, path, body, headers)
        attempts.in_flight = True
        return await self._send(endpoint, path, body, headers, attempts.read_timeout)

    async def _send(
        self,
        endpoint: EtcdEndpoint,
        path: str,
        body: JsonObject,
        headers: dict[str, str],
        read_timeout: float | None = None,
    ) -> JsonObject:
        try:
            response = await self._http.post(
                endpoint.base_url(self.target.tls) + path,
                json=body,
                headers=headers,
                timeout=httpx.Timeout(read_timeout, connect=self.connect_timeout_s),
            )
        except (httpx.TransportError, ssl.SSLError) as exc:
            # anyio lets a TLS alert received while reading through unwrapped.
            raise _transport_error(exc, endpoint) from None
        if response.status_code != 200:
            raise decode_error(
                response.status_code, _json_or_text(response), endpoint=endpoint.netloc
            )
        answer = _json_or_text(response)
        if not isinstance(answer, dict):
            raise EtcdUnavailableError(
                f"etcd at {endpoint.netloc} answered no JSON object",
                endpoint=endpoint.netloc,
                maybe_applied=True,
            )
        return answer


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


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
