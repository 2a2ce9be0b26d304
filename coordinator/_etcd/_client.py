"""An async etcd v3 client over etcd's JSON gateway (httpx; asyncio and trio).

Why not gRPC: the gRPC clients (``aetcd``, ``etcd3``) run on asyncio only, take one
endpoint and, for ``aetcd``, no TLS; grpcio adds ~20 MB. ``bench/etcd_client.py`` and
docs/performance.md have the measurements. etcd serves the same API as JSON on its
client port (``/v3/...``). Failover, deadlines, TLS and tokens: :mod:`._transport`.

Cancellation: a cancelled call stops waiting; a write already sent may still apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import anyio
import httpx

from sage.unified.coordinator._etcd._codec import (
    JsonObject,
    decode_delete,
    decode_keepalive_ttl,
    decode_lease,
    decode_put,
    decode_range,
    decode_txn,
    encode_delete,
    encode_put,
    encode_range,
    encode_txn,
)
from sage.unified.coordinator._etcd._endpoints import EtcdEndpoint, EtcdTarget, parse_etcd_url
from sage.unified.coordinator._etcd._errors import (
    EtcdLeaseExpiredError,
    EtcdRequestError,
    EtcdTxnFailedError,
    EtcdUnavailableError,
)
from sage.unified.coordinator._etcd._transport import EtcdTls, EtcdTransport
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

__all__ = ["EtcdClient", "MemberStatus"]


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


def _ttl_of(result: JsonObject) -> int:
    return decode_keepalive_ttl({"result": result})


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
        self._transport = EtcdTransport(
            parse_etcd_url(url) if isinstance(url, str) else url,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            tls=tls,
            username=username,
            password=password,
            transport=transport,
        )
        self.target = self._transport.target

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
        await self._transport.aclose()

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
        body = await self._transport.call(
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
        answer = await self._transport.call(
            "/v3/kv/put", body, idempotent=idempotent, timeout_s=timeout_s
        )
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
        answer = await self._transport.call(
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
        answer = await self._transport.call(
            "/v3/kv/txn", body, idempotent=idempotent, timeout_s=timeout_s
        )
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
            await self._transport.call(
                "/v3/lease/grant", body, idempotent=True, timeout_s=timeout_s
            )
        )

    async def lease_keepalive(self, lease_id: int, *, timeout_s: float | None = None) -> int:
        """Renew the lease once; returns the TTL it now has.

        Raises:
            EtcdLeaseExpiredError: The lease no longer exists.
        """
        body = {"ID": str(lease_id)}
        answer = await self._transport.call(
            "/v3/lease/keepalive", body, idempotent=True, timeout_s=timeout_s
        )
        ttl = decode_keepalive_ttl(answer)
        if ttl <= 0:
            raise EtcdLeaseExpiredError(f"etcd lease {lease_id:x} has expired", lease_id=lease_id)
        return ttl

    async def lease_keepalive_many(
        self, lease_ids: Sequence[int], *, timeout_s: float | None = None
    ) -> dict[int, int]:
        """Renew several leases in one request; returns the new TTL of each lease etcd
        answered for (0: the lease no longer exists). One HTTP request however many leases:
        the control plane renews the leases of all agents that reported since the last
        round this way.

        etcd's JSON gateway may end the answer before it has answered every lease of a
        long request (measured: 17 to 68 answers of 100 on a busy machine); a lease missing
        from the result was not necessarily renewed and must be asked for again.
        """
        answers = await self._transport.call_many(
            "/v3/lease/keepalive", [{"ID": str(i)} for i in lease_ids], timeout_s=timeout_s
        )
        asked = set(lease_ids)
        renewed = {int(str(answer.get("ID") or 0)): _ttl_of(answer) for answer in answers}
        return {lease_id: ttl for lease_id, ttl in renewed.items() if lease_id in asked}

    async def lease_revoke(self, lease_id: int, *, timeout_s: float | None = None) -> None:
        """Revoke the lease and delete its keys; a lease already gone is not an error."""
        try:
            await self._transport.call(
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
        await self._transport.call("/v3/kv/compaction", body, idempotent=True, timeout_s=timeout_s)

    async def member_status(
        self, endpoint: EtcdEndpoint, *, timeout_s: float | None = None
    ) -> MemberStatus:
        """Ask one member (no failover) who it is, who leads, and its version."""
        body = await self._transport.call_one(endpoint, "/v3/maintenance/status", {}, timeout_s)
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
            self._transport,
            key,
            prefix=prefix,
            range_end=range_end,
            start_revision=start_revision,
            prev_kv=prev_kv,
            idle_timeout_s=idle_timeout_s,
            unavailable_timeout_s=unavailable_timeout_s,
        )
