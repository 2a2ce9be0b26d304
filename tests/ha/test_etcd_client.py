"""The etcd client against a real etcd, on asyncio and trio."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import anyio
import pytest

from sage.unified.coordinator._etcd import (
    Compare,
    DeleteOp,
    EtcdClient,
    EtcdCompactedError,
    EtcdLeaseExpiredError,
    EtcdRequestError,
    EtcdTimeoutError,
    EtcdTxnFailedError,
    PutOp,
    PutResult,
    RangeOp,
    RangeResult,
)

pytestmark = pytest.mark.anyio


async def test_put_get_prefix_delete(shared_etcd, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    async with EtcdClient(shared_etcd.etcd_url) as etcd:
        first = await etcd.put(key_prefix + "a", b"1")
        await etcd.put(key_prefix + "b", "2")
        await etcd.put(key_prefix + "b", "3")
        await etcd.put(key_prefix.rstrip("/") + "0", "outside")  # sorts after the prefix
        got = await etcd.get(key_prefix + "b")
        assert got is not None
        assert (got.value, got.version) == (b"3", 2)
        assert got.create_revision == first.header.revision + 1
        assert await etcd.get(key_prefix + "missing") is None

        listed = await etcd.get_prefix(key_prefix)
        assert [(kv.key, kv.value) for kv in listed.kvs] == [
            (f"{key_prefix}a".encode(), b"1"),
            (f"{key_prefix}b".encode(), b"3"),
        ]
        assert listed.count == 2
        limited = await etcd.get_prefix(key_prefix, limit=1)
        assert (len(limited.kvs), limited.count, limited.more) == (1, 2, True)

        old = await etcd.get(key_prefix + "b", revision=first.header.revision + 1)
        assert old is not None
        assert old.value == b"2"

        deleted = await etcd.delete(key_prefix, prefix=True, prev_kv=True)
        assert deleted.deleted == 2
        assert sorted(kv.value for kv in deleted.prev_kvs) == [b"1", b"3"]
        assert (await etcd.get_prefix(key_prefix)).kvs == ()


async def test_txn_compare_and_swap(shared_etcd, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    key = key_prefix + "owner"
    async with EtcdClient(shared_etcd.etcd_url) as etcd:
        create = [Compare.create_revision(key, "==", 0)]
        won = await etcd.txn(create, [PutOp(key, "gw-1")], [RangeOp(key)])
        assert won.succeeded
        assert isinstance(won.responses[0], PutResult)
        lost = await etcd.txn(create, [PutOp(key, "gw-2")], [RangeOp(key)])
        assert not lost.succeeded
        current = lost.responses[0]
        assert isinstance(current, RangeResult)
        assert current.kvs[0].value == b"gw-1"

        seen = current.kvs[0]
        swapped = await etcd.txn(
            [Compare.mod_revision(key, "==", seen.mod_revision), Compare.value(key, "==", "gw-1")],
            [PutOp(key, "gw-3")],
        )
        assert swapped.succeeded
        with pytest.raises(EtcdTxnFailedError) as failed:
            await etcd.txn(
                [Compare.mod_revision(key, "==", seen.mod_revision)],
                [PutOp(key, "gw-4")],
                [RangeOp(key)],
                required=True,
            )
        assert not failed.value.result.succeeded  # type: ignore[attr-defined]
        assert (await etcd.get(key)).value == b"gw-3"  # type: ignore[union-attr]

        gone = await etcd.txn([Compare.version(key, ">", 0)], [DeleteOp(key)])
        assert gone.succeeded
        assert await etcd.get(key) is None


async def test_leases_expire_keys(shared_etcd, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    async with EtcdClient(shared_etcd.etcd_url) as etcd:
        lease = await etcd.lease_grant(30)
        assert lease.ttl == 30
        await etcd.put(key_prefix + "alive", "x", lease=lease.id)
        assert (await etcd.get(key_prefix + "alive")).lease == lease.id  # type: ignore[union-attr]
        assert 0 < await etcd.lease_keepalive(lease.id) <= 30
        await etcd.lease_revoke(lease.id)
        assert await etcd.get(key_prefix + "alive") is None
        await etcd.lease_revoke(lease.id)  # already gone: fine
        with pytest.raises(EtcdLeaseExpiredError):
            await etcd.lease_keepalive(lease.id)


async def test_keep_lease_alive_outlives_the_ttl_and_reports_loss(  # type: ignore[no-untyped-def]
    shared_etcd, key_prefix: str
) -> None:
    async with EtcdClient(shared_etcd.etcd_url) as etcd:
        lease = await etcd.lease_grant(1)
        assert lease.ttl == 1
        await etcd.put(key_prefix + "k", "x", lease=lease.id)
        with pytest.RaisesGroup(EtcdLeaseExpiredError):
            async with anyio.create_task_group() as tg:
                tg.start_soon(etcd.keep_lease_alive, lease)
                await anyio.sleep(1.6)  # past the TTL: the keepalive holds the key
                assert await etcd.get(key_prefix + "k") is not None
                await etcd.lease_revoke(lease.id)  # someone else ends it
                await anyio.sleep(10)  # the keepalive must raise well before
        assert await etcd.get(key_prefix + "k") is None


async def test_read_errors_are_typed(shared_etcd, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    async with EtcdClient(shared_etcd.etcd_url) as etcd:
        put = await etcd.put(key_prefix + "x", "1")
        with pytest.raises(EtcdRequestError, match="future revision"):
            await etcd.get(key_prefix + "x", revision=put.header.revision + 1000)


async def test_compacted_revisions(etcd) -> None:  # type: ignore[no-untyped-def]
    async with EtcdClient(etcd.etcd_url) as client:
        first = await client.put("/c/k", "1")
        for value in "234":
            last = await client.put("/c/k", value)
        await client.compact(last.header.revision, physical=True)
        with pytest.raises(EtcdCompactedError):
            await client.get("/c/k", revision=first.header.revision)
        with pytest.raises(EtcdCompactedError) as compacted:
            async with client.watch("/c/k", start_revision=first.header.revision) as watch:
                await watch.__anext__()
        assert compacted.value.compact_revision == last.header.revision


@pytest.fixture
def dead_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


async def test_failover_skips_a_dead_endpoint(shared_etcd, dead_port: int, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    url = f"etcd://127.0.0.1:{dead_port},{shared_etcd.endpoint}"
    async with EtcdClient(url, timeout_s=10) as etcd:
        await etcd.put(key_prefix + "k", "v")  # refused before sending: safe to move on
        assert (await etcd.get(key_prefix + "k")).value == b"v"  # type: ignore[union-attr]
        assert etcd._transport.endpoint_order()[0][1].netloc == shared_etcd.endpoint


async def test_a_silent_endpoint_times_out(silent_port: int) -> None:
    async with EtcdClient(f"etcd://127.0.0.1:{silent_port}", timeout_s=0.5) as etcd:
        with anyio.fail_after(5):
            with pytest.raises(EtcdTimeoutError) as timed_out:
                await etcd.put("/k", "v")
        assert timed_out.value.maybe_applied  # the request was sent
        with pytest.raises(EtcdTimeoutError):
            await etcd.get("/k", timeout_s=0.2)
