"""Agents' etcd leases, renewed in batches: :class:`LeaseKeeper`.

A report that changes nothing costs no write: its agent's lease is queued and renewed
with every other queued lease in one request (etcd's lease keepalive stream takes many
lease ids), once per round. The lease then ends no earlier than one TTL after the
agent's last report, and no later than one TTL and one round after it.

A renewal that finds a lease gone (etcd ended it: the agent was silent for a TTL, or
etcd could not be reached for that long) is remembered, so that the agent's next report
is given a new lease at once. etcd's JSON gateway may answer a long request for only
some of its leases: the others are asked for again at once (a few times), then in the
next round, and never taken for gone.
"""

from __future__ import annotations

import logging

import anyio

from sage.unified.coordinator._etcd import EtcdClient, EtcdError
from sage.unified.coordinator._ha._mirror import StoreHealth

__all__ = ["LeaseKeeper"]

log = logging.getLogger("sage.unified.coordinator")

_FORGET_AFTER = 10_000
_RETRIES = 4
"""Requests per round for leases the previous request of the round left unanswered."""
"""Expired lease ids remembered (older ones are forgotten: a gone lease is never renewed)."""


class LeaseKeeper:
    """Renews queued leases every ``round_s`` until cancelled.

    Args:
        etcd: the client.
        health: told when a round fails or works.
        round_s: the time between two rounds.
        timeout_s: deadline of one round's request.
    """

    def __init__(
        self, etcd: EtcdClient, health: StoreHealth, *, round_s: float, timeout_s: float
    ) -> None:
        self._etcd = etcd
        self._health = health
        self.round_s = round_s
        self._timeout_s = timeout_s
        self._queued: set[int] = set()
        self._expired: dict[int, None] = {}
        self.renewed = 0
        """Leases renewed so far (metrics, tests)."""

    def renew(self, lease_id: int) -> None:
        """Renew ``lease_id`` in the next round. Never blocks."""
        self._queued.add(lease_id)

    def expired(self, lease_id: int) -> bool:
        """Whether a renewal found ``lease_id`` gone."""
        return lease_id in self._expired

    async def run(self) -> None:
        """Renew what is queued every round, until cancelled; a failed round is queued
        again for the next."""
        while True:
            await anyio.sleep(self.round_s)
            await self.round()

    async def round(self) -> None:
        batch, self._queued = self._queued, set()
        for _ in range(_RETRIES):
            if not batch:
                break
            try:
                ttls = await self._etcd.lease_keepalive_many(
                    sorted(batch), timeout_s=self._timeout_s
                )
            except EtcdError as exc:
                self._health.failed(exc)
                log.debug("lease renewal of %d agents failed: %s", len(batch), exc)
                break
            self.renewed += len(ttls)
            for lease_id, ttl in ttls.items():
                if ttl <= 0:
                    self._expired[lease_id] = None
            batch -= ttls.keys()
        self._queued |= batch
        while len(self._expired) > _FORGET_AFTER:
            del self._expired[next(iter(self._expired))]
