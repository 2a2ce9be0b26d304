"""Batched lease renewals: a lease etcd did not answer for is asked again, never taken
for gone; a lease etcd says is gone is remembered; a failed round is queued again."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from sage.unified.coordinator._etcd import EtcdUnavailableError
from sage.unified.coordinator._ha._leases import LeaseKeeper
from sage.unified.coordinator._ha._mirror import StoreHealth

pytestmark = pytest.mark.anyio


class FakeEtcd:
    """Answers at most ``answers`` leases per request (etcd's JSON gateway may cut a long
    keepalive stream short); ``gone`` leases get TTL 0."""

    def __init__(self, answers: int, gone: frozenset[int] = frozenset(), down: int = 0) -> None:
        self.answers = answers
        self.gone = gone
        self.down = down
        self.requests: list[list[int]] = []

    async def lease_keepalive_many(
        self, lease_ids: Sequence[int], *, timeout_s: float | None = None
    ) -> dict[int, int]:
        self.requests.append(list(lease_ids))
        if len(self.requests) <= self.down:
            raise EtcdUnavailableError("etcd is down")
        return {i: 0 if i in self.gone else 10 for i in list(lease_ids)[: self.answers]}


def keeper(etcd: FakeEtcd) -> LeaseKeeper:
    return LeaseKeeper(etcd, StoreHealth("etcd://x"), round_s=1.0, timeout_s=1.0)  # type: ignore[arg-type]


async def test_unanswered_leases_are_asked_again_and_not_taken_for_gone() -> None:
    etcd = FakeEtcd(answers=2, gone=frozenset({3}))
    leases = keeper(etcd)
    for lease_id in range(1, 7):
        leases.renew(lease_id)
    await leases.round()
    assert etcd.requests == [[1, 2, 3, 4, 5, 6], [3, 4, 5, 6], [5, 6]]
    assert [i for i in range(1, 7) if leases.expired(i)] == [3]
    assert leases.renewed == 6


async def test_what_a_round_could_not_renew_goes_into_the_next() -> None:
    etcd = FakeEtcd(answers=1)
    leases = keeper(etcd)
    for lease_id in range(1, 7):
        leases.renew(lease_id)
    await leases.round()  # 4 requests of 1 answer each
    await leases.round()
    assert etcd.requests[4] == [5, 6]
    assert not any(leases.expired(i) for i in range(1, 7))


async def test_a_failed_round_is_queued_again_and_marks_etcd_unreachable() -> None:
    etcd = FakeEtcd(answers=10, down=1)
    leases = keeper(etcd)
    leases.renew(7)
    await leases.round()
    assert etcd.requests == [[7]]
    await leases.round()
    assert etcd.requests == [[7], [7]]
    assert leases.renewed == 1
