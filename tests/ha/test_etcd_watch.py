"""Watches against a real etcd: order, history, prefixes, and surviving an etcd restart."""

from __future__ import annotations

import anyio
import pytest

from sage.unified.coordinator._etcd import EtcdClient, Watch, WatchEvent

pytestmark = pytest.mark.anyio


async def _take(watch: Watch, count: int, timeout_s: float = 20.0) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    with anyio.fail_after(timeout_s):
        async for event in watch:
            events.append(event)
            if len(events) == count:
                break
    return events


async def test_watch_prefix_from_a_past_revision(shared_etcd, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    async with EtcdClient(shared_etcd.etcd_url) as etcd:
        start = await etcd.put(key_prefix + "a", "1")
        await etcd.put(key_prefix + "b", "2")
        await etcd.put(key_prefix.rstrip("/") + "x", "not under the prefix")
        await etcd.delete(key_prefix + "a")
        async with etcd.watch(
            key_prefix, prefix=True, start_revision=start.header.revision, prev_kv=True
        ) as watch:
            history = await _take(watch, 3)
            assert [(e.type, e.kv.key, e.kv.value) for e in history] == [
                ("put", f"{key_prefix}a".encode(), b"1"),
                ("put", f"{key_prefix}b".encode(), b"2"),
                ("delete", f"{key_prefix}a".encode(), b""),
            ]
            assert history[2].prev_kv is not None
            assert history[2].prev_kv.value == b"1"
            live = await etcd.put(key_prefix + "c", "3")
            (event,) = await _take(watch, 1)
            assert event.kv.mod_revision == live.header.revision
            assert watch.next_revision == live.header.revision + 1


async def test_read_then_watch_sees_exactly_the_later_changes(shared_etcd, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    async with EtcdClient(shared_etcd.etcd_url) as etcd:
        await etcd.put(key_prefix + "k", "before")
        snapshot = await etcd.get_prefix(key_prefix)
        await etcd.put(key_prefix + "k", "after")
        async with etcd.watch(
            key_prefix, prefix=True, start_revision=snapshot.header.revision + 1
        ) as watch:
            (event,) = await _take(watch, 1)
        assert event.kv.value == b"after"


async def test_watch_resumes_after_etcd_is_killed_and_restarted(etcd) -> None:  # type: ignore[no-untyped-def]
    async with EtcdClient(etcd.etcd_url, timeout_s=20) as client:
        first = await client.put("/w/0", "0")
        for i in range(1, 5):
            await client.put(f"/w/{i}", str(i))
        async with client.watch(
            "/w/", prefix=True, start_revision=first.header.revision, idle_timeout_s=1.0
        ) as watch:
            seen = await _take(watch, 2)  # 3 more are written but not consumed yet
            etcd.kill()
            await anyio.to_thread.run_sync(etcd.start)
            for i in range(5, 8):
                await client.put(f"/w/{i}", str(i))  # waits for etcd to come back
            seen += await _take(watch, 6)
            assert watch.reconnects >= 1
        assert [e.kv.value for e in seen] == [str(i).encode() for i in range(8)]
        revisions = [e.kv.mod_revision for e in seen]
        assert revisions == sorted(set(revisions))  # none lost, none twice
