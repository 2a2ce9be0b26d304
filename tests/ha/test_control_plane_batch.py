"""Concurrent transactions joined into one (TxnBatcher), against a real etcd: each caller
gets its own answer; a conflict stays the caller's; one key is never written twice in one
transaction."""

from __future__ import annotations

import anyio
import pytest

from sage.unified.coordinator._etcd import Compare, EtcdClient, PutOp, TxnResult
from sage.unified.coordinator._ha._batch import TxnBatcher

pytestmark = pytest.mark.anyio


async def test_concurrent_transactions_are_joined_and_a_conflict_stays_its_callers(
    shared_etcd, key_prefix
) -> None:  # type: ignore[no-untyped-def]
    async with EtcdClient(shared_etcd.etcd_url) as etcd:
        await etcd.put(f"{key_prefix}taken", "x")
        batcher = TxnBatcher(etcd, 5.0)
        results: dict[str, TxnResult] = {}

        async def write(name: str, create_only: bool = True) -> None:
            key = f"{key_prefix}{name}"
            compares = [Compare.create_revision(key, "==", 0)] if create_only else []
            results[name] = await batcher.txn(compares, [PutOp(key, name)])

        async with anyio.create_task_group() as outer:
            outer.start_soon(batcher.run)
            async with anyio.create_task_group() as writers:
                for i in range(20):
                    writers.start_soon(write, f"k{i}")
                writers.start_soon(write, "taken")  # its compare fails
            outer.cancel_scope.cancel()
        assert batcher.joint >= 1
        assert not results["taken"].succeeded
        assert all(results[f"k{i}"].succeeded for i in range(20))
        got = await etcd.get_prefix(key_prefix)
        assert {kv.key.decode().removeprefix(key_prefix): kv.value for kv in got.kvs} == {
            **{f"k{i}": f"k{i}".encode() for i in range(20)},
            "taken": b"x",
        }
        assert all(len(r.responses) == 1 for r in results.values() if r.succeeded)


async def test_two_writes_of_one_key_are_never_joined(shared_etcd, key_prefix) -> None:  # type: ignore[no-untyped-def]
    async with EtcdClient(shared_etcd.etcd_url) as etcd:
        batcher = TxnBatcher(etcd, 5.0)
        key = f"{key_prefix}same"
        async with anyio.create_task_group() as outer:
            outer.start_soon(batcher.run)
            async with anyio.create_task_group() as writers:
                for value in ("a", "b", "c"):
                    writers.start_soon(batcher.txn, [], [PutOp(key, value)])
            outer.cancel_scope.cancel()
        got = await etcd.get(key)
        assert got is not None
        assert got.version == 3  # three separate writes, none refused
