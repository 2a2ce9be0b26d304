"""A three-member etcd cluster, one member per emulated host; the client is the test
process, on the bridge through its own port.

Killing the leader leaves the cluster writable through the same client; cutting the
host a watch reads from moves the watch to another member without losing a change.
"""

from __future__ import annotations

from functools import partial

import anyio
import pytest

from sage.unified.coordinator._etcd import EtcdClient, EtcdEndpoint

pytestmark = pytest.mark.anyio


@pytest.fixture
def members(network, etcd_cluster):  # type: ignore[no-untyped-def]
    """Three healthy members, one per host."""
    hosts = [network.add_host(f"etcd{i}") for i in range(3)]
    return etcd_cluster.start(
        3,
        hosts=[host.address for host in hosts],
        spawn=[partial(_spawn_on, host) for host in hosts],
        # Half etcd's default timers: quicker start and failover; the tests tolerate a
        # spurious election on a loaded machine.
        extra_args=["--heartbeat-interval=50", "--election-timeout=500"],
    )


def _spawn_on(host, argv, log_path):  # type: ignore[no-untyped-def]
    return host.spawn(argv, name="etcd", log_path=log_path)


async def _leader_first(members):  # type: ignore[no-untyped-def]
    url = "etcd://" + ",".join(m.endpoint for m in members)
    async with EtcdClient(url) as etcd:
        for member in members:
            status = await etcd.member_status(EtcdEndpoint(member.host, member.client_port))
            if status.is_leader:
                return [member, *(m for m in members if m is not member)]
    raise AssertionError("no member says it leads")


# A cluster takes seconds to start: each test runs on one backend (the client's code is
# run on both by tests/ha/test_etcd_*.py).
@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": False})], ids=["asyncio"])
async def test_killing_the_leader_keeps_the_cluster_writable(members) -> None:  # type: ignore[no-untyped-def]
    leader, *followers = await _leader_first(members)
    url = "etcd://" + ",".join(m.endpoint for m in (leader, *followers))
    # 6 s a call, so 3 s an attempt: a follower still forwarding to the dead leader
    # (etcd gives up on that after 7 s) is left in time to ask the next member.
    async with EtcdClient(url, timeout_s=6) as etcd:
        await etcd.put("/ha/before", "1")
        leader.kill()
        with anyio.fail_after(6):
            await etcd.put("/ha/after", "2", idempotent=True)
        assert (await etcd.get("/ha/before")).value == b"1"  # type: ignore[union-attr]
        survivors = await _leader_first(followers)
        assert survivors[0] in followers


@pytest.mark.parametrize("anyio_backend", [("trio", {})], ids=["trio"])
async def test_a_watch_moves_off_a_cut_host_without_losing_changes(members, network) -> None:  # type: ignore[no-untyped-def]
    host_of = {host.address: host for host in network.hosts}
    leader, cut, other = await _leader_first(members)
    # The watch prefers the member that will be cut; the writes go to the leader.
    watcher_url = f"etcd://{cut.endpoint},{other.endpoint},{leader.endpoint}"
    writer_url = f"etcd://{leader.endpoint},{other.endpoint}"
    async with EtcdClient(watcher_url) as watcher, EtcdClient(writer_url) as writer:
        start = await writer.put("/ha/w/0", "0")
        async with watcher.watch(
            "/ha/w/", prefix=True, start_revision=start.header.revision, idle_timeout_s=2
        ) as watch:
            with anyio.fail_after(10):
                seen = [await watch.__anext__()]
            host_of[cut.host].isolate()  # silent: no reset reaches the watch
            for i in range(1, 6):
                await writer.put(f"/ha/w/{i}", str(i))
            with anyio.fail_after(30):
                async for event in watch:
                    seen.append(event)
                    if len(seen) == 6:
                        break
            assert watch.reconnects >= 1
        assert [e.kv.value for e in seen] == [str(i).encode() for i in range(6)]
        host_of[cut.host].rejoin()
        assert (await watcher.get("/ha/w/5")).value == b"5"  # type: ignore[union-attr]


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": False})], ids=["asyncio"])
async def test_a_member_cut_from_its_quorum_serves_no_stale_data(members, network) -> None:  # type: ignore[no-untyped-def]
    """The member stays reachable from the client but loses its leader: it must refuse
    (etcd's "require leader"), so the watch and the reads move to the majority."""
    host_of = {host.address: host for host in network.hosts}
    leader, cut, other = await _leader_first(members)
    url = f"etcd://{cut.endpoint},{other.endpoint},{leader.endpoint}"
    writer_url = f"etcd://{leader.endpoint},{other.endpoint}"
    async with EtcdClient(url) as reader, EtcdClient(writer_url) as writer:
        start = await writer.put("/ha/q/k", "0")
        # A long idle timeout: only the lost leader may end this watch's stream.
        async with reader.watch(
            "/ha/q/", prefix=True, start_revision=start.header.revision + 1, idle_timeout_s=60
        ) as watch:
            network.partition([host_of[cut.host]], [host_of[leader.host], host_of[other.host]])
            latest = await writer.put("/ha/q/k", "1")
            with anyio.fail_after(15):
                event = await watch.__anext__()
            assert (event.kv.value, event.kv.mod_revision) == (b"1", latest.header.revision)
            assert watch.reconnects >= 1
        got = await reader.get("/ha/q/k")  # linearizable: never the cut member's stale "0"
        assert got is not None
        assert got.value == b"1"
    network.heal()
