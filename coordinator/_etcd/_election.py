"""Leader election on etcd: :class:`Election`, the recipe of etcd's ``concurrency`` package.

Each candidate puts ``<prefix>/<lease id in hex>`` with its lease, created only if absent
(a ``create_revision == 0`` compare). The leader is the key with the lowest
``create_revision`` under the prefix; a candidate waits until every key created before
its own is deleted. Leadership ends when the leader resigns (deletes its key) or its
lease ends (etcd deletes the key): the next candidate in line then leads.

The lease is the caller's: grant it, keep it alive beside the work it guards, and stop
leading when :meth:`EtcdClient.keep_lease_alive` raises::

    lease = await etcd.lease_grant(10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(etcd.keep_lease_alive, lease)
        leadership = await Election(etcd, "/sage/leader").campaign("gateway-1", lease)
        ...  # lead until the keepalive raises EtcdLeaseExpiredError
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from sage.unified.coordinator._etcd._errors import (
    EtcdCompactedError,
    EtcdError,
    EtcdNotLeaderError,
)
from sage.unified.coordinator._etcd._types import (
    Bytes,
    Compare,
    DeleteOp,
    KeyValue,
    Lease,
    PutOp,
    RangeOp,
    RangeResult,
    as_bytes,
)
from sage.unified.coordinator._etcd._watch import Watch

if TYPE_CHECKING:
    from sage.unified.coordinator._etcd._client import EtcdClient

__all__ = ["Election", "LeaderObserver", "Leadership"]

logger = logging.getLogger(__name__)

_RESIGN_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Leadership:
    """A candidacy that :meth:`Election.campaign` returned: we lead while its key exists."""

    key: bytes
    create_revision: int
    lease_id: int


class Election:
    """One election: candidates under ``prefix``; see the module docstring.

    Args:
        client: The etcd client to use.
        prefix: The election's key prefix; a ``/`` is appended when missing.
    """

    def __init__(self, client: EtcdClient, prefix: Bytes) -> None:
        raw = as_bytes(prefix)
        self.prefix = raw if raw.endswith(b"/") else raw + b"/"
        self._client = client

    async def campaign(self, value: Bytes, lease: Lease | int) -> Leadership:
        """Become a candidate and wait until we lead.

        Campaigning again with the same lease re-uses the candidacy (and updates its value).
        No deadline of its own: wrap it in ``anyio.fail_after`` to bound the wait.

        Raises:
            EtcdNotLeaderError: Our key vanished while we waited (the lease ended).
            EtcdError: etcd could not be reached (see the client's failover rules).

        Cancellation: the candidacy is withdrawn (its key deleted, within 2 s).
        """
        lease_id = lease.id if isinstance(lease, Lease) else lease
        key = self.prefix + f"{lease_id:x}".encode()
        result = await self._client.txn(
            [Compare.create_revision(key, "==", 0)],
            [PutOp(key, value, lease=lease_id)],
            [RangeOp(key)],
        )
        if result.succeeded:
            leadership = Leadership(key, result.header.revision, lease_id)
        else:
            existing = _only_range(result.responses[0]).kvs[0]
            leadership = Leadership(key, existing.create_revision, lease_id)
            if existing.value != as_bytes(value):
                await self.proclaim(leadership, value)
        try:
            await self._wait_for_turn(leadership)
        except BaseException:
            with anyio.move_on_after(_RESIGN_TIMEOUT, shield=True):
                await self._resign_quietly(leadership)
            raise
        return leadership

    async def leader(self, *, timeout_s: float | None = None) -> KeyValue | None:
        """The current leader's key and value (None: nobody leads)."""
        result = await self._leader_range(timeout_s)
        return result.kvs[0] if result.kvs else None

    async def proclaim(
        self, leadership: Leadership, value: Bytes, *, timeout_s: float | None = None
    ) -> None:
        """Change the value the leader publishes (e.g. its address).

        Raises:
            EtcdNotLeaderError: Our key is gone (lease ended or resigned).
        """
        result = await self._client.txn(
            [Compare.create_revision(leadership.key, "==", leadership.create_revision)],
            [PutOp(leadership.key, value, lease=leadership.lease_id)],
            timeout_s=timeout_s,
        )
        if not result.succeeded:
            raise EtcdNotLeaderError(f"election key {leadership.key!r} is gone")

    async def resign(self, leadership: Leadership, *, timeout_s: float | None = None) -> None:
        """Give up leadership (or candidacy) now; a key already gone is not an error."""
        await self._client.txn(
            [Compare.create_revision(leadership.key, "==", leadership.create_revision)],
            [DeleteOp(leadership.key)],
            timeout_s=timeout_s,
        )

    async def is_leader(self, leadership: Leadership, *, timeout_s: float | None = None) -> bool:
        """Whether ``leadership``'s key is still the oldest under the prefix."""
        current = await self.leader(timeout_s=timeout_s)
        return current is not None and (current.key, current.create_revision) == (
            leadership.key,
            leadership.create_revision,
        )

    def observe(self, *, idle_timeout_s: float = 10.0) -> LeaderObserver:
        """Follow who leads: ``async with election.observe() as leaders: async for kv in
        leaders`` yields the current leader (None: nobody), then each change."""
        return LeaderObserver(self, idle_timeout_s)

    async def _leader_range(self, timeout_s: float | None = None) -> RangeResult:
        op = RangeOp(
            self.prefix, prefix=True, limit=1, sort_target="create_revision", sort_order="ascend"
        )
        return await self._client.range(op, timeout_s=timeout_s)

    async def _wait_for_turn(self, leadership: Leadership) -> None:
        while True:
            ahead = await self._client.range(
                RangeOp(
                    self.prefix,
                    prefix=True,
                    limit=1,
                    sort_target="create_revision",
                    sort_order="descend",
                    max_create_revision=leadership.create_revision - 1,
                )
            )
            if not ahead.kvs:
                break
            await self._wait_deleted(ahead.kvs[0].key, ahead.header.revision + 1)
        mine = await self._client.get(leadership.key)
        if mine is None or mine.create_revision != leadership.create_revision:
            raise EtcdNotLeaderError(
                f"election key {leadership.key!r} vanished while campaigning (lease ended?)"
            )

    async def _wait_deleted(self, key: bytes, from_revision: int) -> None:
        async with self._client.watch(key, start_revision=from_revision) as watch:
            try:
                async for event in watch:
                    if event.type == "delete":
                        return
            except EtcdCompactedError:
                return  # the caller reads the prefix again

    async def _resign_quietly(self, leadership: Leadership) -> None:
        try:
            await self.resign(leadership, timeout_s=_RESIGN_TIMEOUT)
        except EtcdError as exc:  # the lease will delete the key when it expires
            logger.warning("could not withdraw election key %r: %s", leadership.key, exc)


class LeaderObserver:
    """Async iterator of an election's leader: now, then after every change."""

    def __init__(self, election: Election, idle_timeout_s: float) -> None:
        self._election = election
        self._idle_timeout_s = idle_timeout_s
        self._watch: Watch | None = None
        self._last: tuple[bytes, int, bytes] | None = None
        self._started = False

    async def __aenter__(self) -> LeaderObserver:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> LeaderObserver:
        return self

    async def __anext__(self) -> KeyValue | None:
        while True:
            result = await self._election._leader_range()
            if self._watch is None:
                self._watch = self._election._client.watch(
                    self._election.prefix,
                    prefix=True,
                    start_revision=result.header.revision + 1,
                    idle_timeout_s=self._idle_timeout_s,
                )
            leader = result.kvs[0] if result.kvs else None
            identity = (
                None if leader is None else (leader.key, leader.create_revision, leader.value)
            )
            if not self._started or identity != self._last:
                self._started = True
                self._last = identity
                return leader
            try:
                await self._watch.__anext__()
            except EtcdCompactedError:
                await self._watch.aclose()
                self._watch = None

    async def aclose(self) -> None:
        if self._watch is not None:
            await self._watch.aclose()


def _only_range(response: object) -> RangeResult:
    if not isinstance(response, RangeResult):
        raise TypeError(f"expected a range response, got {type(response).__name__}")
    return response
