"""Leader election against a real etcd: one leader, hand-over on lease loss and resign."""

from __future__ import annotations

import anyio
import pytest

from sage.unified.coordinator._etcd import Election, EtcdClient, KeyValue, Leadership

pytestmark = pytest.mark.anyio


async def test_two_candidates_one_leader_then_hand_over_on_lease_revoke(  # type: ignore[no-untyped-def]
    shared_etcd, key_prefix: str
) -> None:
    async with (
        EtcdClient(shared_etcd.etcd_url) as one,
        EtcdClient(shared_etcd.etcd_url) as two,
    ):
        elections = {"gw-1": Election(one, key_prefix), "gw-2": Election(two, key_prefix)}
        leases = {"gw-1": await one.lease_grant(30), "gw-2": await two.lease_grant(30)}
        elected: list[tuple[str, Leadership]] = []
        first_elected, second_elected = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:

            async def campaign(name: str) -> None:
                leadership = await elections[name].campaign(name, leases[name])
                elected.append((name, leadership))
                (second_elected if first_elected.is_set() else first_elected).set()

            tg.start_soon(campaign, "gw-1")
            tg.start_soon(campaign, "gw-2")
            with anyio.fail_after(10):
                await first_elected.wait()
            await anyio.sleep(0.3)  # a second leader would show up meanwhile
            assert len(elected) == 1
            winner, leadership = elected[0]
            loser = "gw-2" if winner == "gw-1" else "gw-1"
            leader = await elections[loser].leader()
            assert leader is not None
            assert leader.value == winner.encode()
            assert await elections[winner].is_leader(leadership)

            await (one if winner == "gw-1" else two).lease_revoke(leases[winner].id)
            with anyio.fail_after(10):
                await second_elected.wait()
        assert elected[1][0] == loser
        assert not await elections[winner].is_leader(leadership)
        assert (await elections[winner].leader()).value == loser.encode()  # type: ignore[union-attr]


async def test_resign_hands_over_and_observers_follow(shared_etcd, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    async with EtcdClient(shared_etcd.etcd_url) as etcd:
        election = Election(etcd, key_prefix)
        first = await election.campaign("a", await etcd.lease_grant(30))
        seen: list[KeyValue | None] = []
        async with election.observe() as leaders, anyio.create_task_group() as tg:
            seen.append(await leaders.__anext__())
            tg.start_soon(election.campaign, "b", await etcd.lease_grant(30))
            await election.proclaim(first, "a2")
            seen.append(await leaders.__anext__())
            await election.resign(first)
            seen.append(await leaders.__anext__())
        assert [kv.value if kv else None for kv in seen] == [b"a", b"a2", b"b"]


async def test_a_cancelled_campaign_withdraws(shared_etcd, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    async with EtcdClient(shared_etcd.etcd_url) as etcd:
        election = Election(etcd, key_prefix)
        await election.campaign("leader", await etcd.lease_grant(30))
        with anyio.move_on_after(0.5):
            await election.campaign("waiting", await etcd.lease_grant(30))
        candidates = await etcd.get_prefix(key_prefix)
        assert [kv.value for kv in candidates.kvs] == [b"leader"]
