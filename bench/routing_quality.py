"""Routing quality: replay workloads through a real gateway to simulated engines with caches.

For each workload (``bench/_routing_workloads.py``: a Mooncake trace, shared system
prompts with growing conversations, prompts sharing nothing) it starts N simulated
engines (``python -m sage.unified.agent.simulator`` with a finite KV cache, prefix
caching, a prefill rate and ``--enable-prompt-tokens-details``), then once per policy a
gateway in static mode in front of them (``python -m sage.unified.cli gateway run
--backend ... --policy P``; for ``precise``, ``bench/_precise_gateway.py``: cache_aware
fed by the engines' KV events), resets the engines' caches, replays the workload and
prints per policy:

* token hit rate (cached / prompt tokens, as the engines reported them) and its share
  of the run's fleet-wide ceiling (one infinite cache shared by all engines);
* time to first token p50 / p90 / p99 (client side, streamed);
* request throughput and the busiest engine's share of requests;
* the ledger's delivered tokens against what the engines reported (usage, and their
  ``vllm:prefix_cache_hits_total``);
* the gateway process's CPU per request (user + system), the cost of each policy on
  these prompts.

Everything runs on loopback and is bounded in time; the scaling used is printed. The
default run (three workloads, five policies, eight engines) takes about 4 minutes on
2 cores.

    .venv/bin/python bench/routing_quality.py
    .venv/bin/python bench/routing_quality.py --workload shared --policy least_load,cache_aware
    .venv/bin/python bench/routing_quality.py --trace my_trace.jsonl --workload trace --json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _routing_workloads import (
    Client,
    Fleet,
    Outcome,
    SharedPrefixWorkload,
    TraceWorkload,
    UniqueWorkload,
    ceiling,
)

from sage.unified.sdk.client import GatewayManagementClient

REPO = Path(__file__).resolve().parent.parent
MODEL = "bench-model"
POLICIES = ("round_robin", "least_load", "session", "cache_aware", "precise")
WORKLOADS = ("shared", "unique", "trace")
TRACE_NAME = "mooncake_synthetic.jsonl"
GATEWAY_ENV: dict[str, str] = {}
"""``--gateway-env`` settings for every gateway (e.g. cache_aware knobs)."""


def default_trace() -> Path | None:
    """``shared/traces/mooncake_synthetic.jsonl`` next to the repository or above it."""
    for parent in REPO.parents:
        candidate = parent / "shared" / "traces" / TRACE_NAME
        if candidate.exists():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


class Processes:
    """Child processes in their own sessions, stopped (then killed) by ``close``."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)


@dataclass
class Engine:
    url: str
    kv_endpoint: str


def start_fleet(
    procs: Processes, fleet: Fleet, count: int, events: bool, tmp: Path
) -> list[Engine]:
    engines: list[Engine] = []
    for i in range(count):
        port = free_port()
        endpoint = f"ipc://{tmp}/kv-{port}.sock"
        argv = [
            sys.executable, "-m", "sage.unified.agent.simulator", "--model", MODEL,
            "--port", str(port), *fleet.flags(),
            "--enable-prompt-tokens-details", "--enable-control",
        ]  # fmt: skip
        if events:
            config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint}
            argv += ["--kv-events-config", json.dumps(config)]
        procs.start(argv, f"engine-{i}")
        engines.append(Engine(f"http://127.0.0.1:{port}", endpoint))
    for engine in engines:
        wait_http(f"{engine.url}/v1/models")
    return engines


def reset_caches(engines: list[Engine]) -> None:
    for engine in engines:
        deadline = time.monotonic() + 30
        while httpx.post(f"{engine.url}/reset_prefix_cache", timeout=5).status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{engine.url} kept requests running after the run")
            time.sleep(0.2)


def engine_hits(engines: list[Engine]) -> tuple[float, float]:
    """Sum of ``vllm:prefix_cache_hits_total`` and ``..._queries_total`` over the fleet."""
    hits = queries = 0.0
    for engine in engines:
        for line in httpx.get(f"{engine.url}/metrics", timeout=5).text.splitlines():
            if line.startswith("vllm:prefix_cache_hits_total"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_queries_total"):
                queries += float(line.rsplit(" ", 1)[1])
    return hits, queries


def start_gateway(
    procs: Processes, policy: str, engines: list[Engine], fleet: Fleet, tmp: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    backends = [flag for e in engines for flag in ("--backend", e.url)]
    env = {
        "SAGE_HOME": str(tmp / f"gw-{port}"),
        "SAGE_GATEWAY_SESSIONS": "false",
        "SAGE_GATEWAY_STUDIO": "false",
        "SAGE_GATEWAY_EXPOSE_BACKEND_HEADER": "true",
        "SAGE_GATEWAY_CACHE_AWARE_ENGINE_CACHE_TOKENS": str(fleet.kv_blocks * fleet.block_size),
        **GATEWAY_ENV,
    }
    if policy == "precise":
        events = [flag for e in engines for flag in ("--kv-endpoint", e.kv_endpoint)]
        argv = [
            sys.executable, str(REPO / "bench" / "_precise_gateway.py"), "--port", str(port),
            *backends, *events, "--block-size", str(fleet.block_size),
        ]  # fmt: skip
    else:
        argv = [
            sys.executable, "-m", "sage.unified.cli", "gateway", "run", "--port", str(port),
            *backends, "--policy", policy, "--log-level", "error",
        ]  # fmt: skip
    proc = procs.start(argv, f"gateway-{policy}", env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            models = httpx.get(f"{url}/v1/models", timeout=1).json()["data"]
            if any(m["id"] == MODEL for m in models):
                break
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the {policy} gateway did not start (log: {procs.logs})")
        time.sleep(0.1)
    return proc, port


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(
    policy: str,
    outcomes: list[Outcome],
    engines: int,
    ceiling_rate: float,
    ledger: dict[str, Any],
    metric_hits: float,
) -> dict[str, Any]:
    ok = [o for o in outcomes if o.status == 200 and o.ttft is not None]
    ttfts = [o.ttft for o in ok if o.ttft is not None]
    prompt = sum(o.prompt_tokens or 0 for o in ok)
    cached = sum(o.cached_tokens or 0 for o in ok)
    counts = Counter(o.engine for o in ok)
    span = max(o.done for o in outcomes) - min(o.sent for o in outcomes) if outcomes else 0.0
    hit = cached / prompt if prompt else 0.0
    return {
        "policy": policy,
        "requests": len(outcomes),
        "errors": len(outcomes) - len(ok),
        "hit_rate": hit,
        "ceiling": ceiling_rate,
        "of_ceiling": hit / ceiling_rate if ceiling_rate else None,
        "ttft_p50_s": percentile(ttfts, 0.50),
        "ttft_p90_s": percentile(ttfts, 0.90),
        "ttft_p99_s": percentile(ttfts, 0.99),
        "ttft_mean_s": statistics.fmean(ttfts) if ttfts else float("nan"),
        "throughput_rps": len(ok) / span if span else 0.0,
        "busiest_share": max(counts.values()) / len(ok) if ok else 0.0,
        "fair_share": 1 / engines,
        "usage_cached_tokens": cached,
        "ledger_delivered_tokens": ledger["delivered"],
        "ledger_available_tokens": ledger["available"],
        "ledger_captured_tokens": ledger["captured"],
        "ledger_reasons": ledger["reasons"],
        "ledger_signals": ledger["signals"],
        "engine_metric_hits": metric_hits,
    }


def cpu_s(proc: subprocess.Popen[bytes]) -> float:
    """User + system CPU seconds of the gateway process so far."""
    times = psutil.Process(proc.pid).cpu_times()
    return float(times.user + times.system)


def ledger_totals(port: int) -> dict[str, Any]:
    """The gateway ledger's sums over every model (tokens) and its reasons."""
    with GatewayManagementClient(f"http://127.0.0.1:{port}", timeout=10) as client:
        stats = client.routing_stats()
    out: dict[str, Any] = {"available": 0, "captured": 0, "delivered": 0, "reasons": Counter()}
    for model in stats.models:
        out["available"] += model.total.available_tokens
        out["captured"] += model.total.captured_tokens
        out["delivered"] += model.total.delivered_tokens
        out["reasons"].update(model.total.reasons)
    out["reasons"] = dict(out["reasons"])
    out["signals"] = sorted({s for model in stats.models for s in model.signals})
    return out


def run_policy(
    procs: Processes, workload: Any, policy: str, engines: list[Engine], tmp: Path
) -> dict[str, Any]:
    reset_caches(engines)
    before, _ = engine_hits(engines)
    proc, port = start_gateway(procs, policy, engines, workload.fleet, tmp)
    cpu_before = cpu_s(proc)
    try:

        async def replay() -> list[Outcome]:
            client = Client(port)
            try:
                return await workload.run(client, MODEL)
            finally:
                await client.aclose()

        outcomes = uvloop.run(replay())
        gateway_cpu = cpu_s(proc) - cpu_before
        ledger = ledger_totals(port)
    finally:
        procs.stop(proc)
    after, _ = engine_hits(engines)
    rate = ceiling(outcomes, workload.fleet.block_size)
    row = summarize(policy, outcomes, len(engines), rate, ledger, after - before)
    row["gateway_cpu_us_per_request"] = gateway_cpu / max(1, len(outcomes)) * 1e6
    return row


def build_workloads(args: argparse.Namespace) -> list[Any]:
    out: list[Any] = []
    for name in args.workload:
        if name == "shared":
            shared = SharedPrefixWorkload(duration_s=args.duration)
            if args.rate:
                shared.conversations_per_s = args.rate
            if args.prefill:
                shared.fleet = replace(shared.fleet, prefill_tokens_per_s=args.prefill)
            out.append(shared)
        elif name == "unique":
            unique = UniqueWorkload(duration_s=args.duration)
            if args.rate:
                unique.requests_per_s = args.rate
            if args.prefill:
                unique.fleet = replace(unique.fleet, prefill_tokens_per_s=args.prefill)
            out.append(unique)
        else:
            trace = args.trace or default_trace()
            if trace is None:
                raise SystemExit(f"no trace: pass --trace FILE ({TRACE_NAME} not found)")
            out.append(TraceWorkload(Path(trace), speedup=args.speedup, last=args.trace_last))
    return out


def render(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, part in report["workloads"].items():
        lines.append(f"\n## {name}: {part['scaling']}")
        lines.append(f"engines: {report['engines']} x ({part['fleet']})")
        lines.append(
            "| policy | hit rate | of ceiling | TTFT p50 | p90 | p99 | req/s | busiest "
            "| requests (errors) | delivered: ledger / usage / engine metrics | gw CPU µs/req |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for r in part["rows"]:
            of = f"{r['of_ceiling']:.0%}" if r["of_ceiling"] is not None else "-"
            lines.append(
                f"| {r['policy']} | {r['hit_rate']:.1%} | {of} | {r['ttft_p50_s'] * 1000:.0f} ms "
                f"| {r['ttft_p90_s'] * 1000:.0f} ms | {r['ttft_p99_s'] * 1000:.0f} ms "
                f"| {r['throughput_rps']:.1f} | {r['busiest_share']:.1%} (fair {r['fair_share']:.1%}) "
                f"| {r['requests']} ({r['errors']}) | {r['ledger_delivered_tokens']} / "
                f"{r['usage_cached_tokens']} / {r['engine_metric_hits']:.0f} "
                f"| {r['gateway_cpu_us_per_request']:.0f} |"
            )
        lines.append(f"ceiling (one infinite shared cache): {part['rows'][0]['ceiling']:.1%}")
        for r in part["rows"]:
            if r["ledger_available_tokens"]:
                lines.append(
                    f"ledger of {r['policy']}: available {r['ledger_available_tokens']}, captured "
                    f"{r['ledger_captured_tokens']}, delivered {r['ledger_delivered_tokens']} "
                    f"tokens; reasons {r['ledger_reasons']}; signals {r['ledger_signals'] or 'none'}"
                )
    lines.append(f"\nelapsed {report['elapsed_s']:.0f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trace", help=f"Mooncake-format trace (default: shared/traces/{TRACE_NAME})"
    )
    parser.add_argument("--engines", type=int, default=8)
    parser.add_argument("--policy", default=",".join(POLICIES), help="comma-separated")
    parser.add_argument("--workload", default=",".join(WORKLOADS), help="comma-separated")
    parser.add_argument("--duration", type=float, default=12.0, help="s of arrivals (synthetic)")
    parser.add_argument("--speedup", type=float, default=20.0, help="trace time compression")
    parser.add_argument("--trace-last", type=int, default=1000, help="replay the last N requests")
    parser.add_argument(
        "--gateway-env", action="append", default=[], help="NAME=VALUE for every gateway"
    )
    parser.add_argument("--rate", type=float, help="conversations/s (shared), requests/s (unique)")
    parser.add_argument("--prefill", type=float, help="engines' prefill tokens/s (synthetic)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    GATEWAY_ENV.update(item.split("=", 1) for item in args.gateway_env)
    args.policy = [p for p in args.policy.split(",") if p]
    args.workload = [w for w in args.workload.split(",") if w]
    for p in args.policy:
        if p not in POLICIES:
            parser.error(f"unknown policy {p!r}; known: {', '.join(POLICIES)}")
    for w in args.workload:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    started = time.monotonic()
    report: dict[str, Any] = {"engines": args.engines, "workloads": {}}
    say = (
        (lambda *_: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    )
    with tempfile.TemporaryDirectory(prefix="routing-quality-") as scratch:
        tmp = Path(scratch)
        (tmp / "logs").mkdir()
        for workload in build_workloads(args):
            procs = Processes(tmp / "logs")
            try:
                say(f"[{workload.name}] {workload.describe()}")
                engines = start_fleet(
                    procs, workload.fleet, args.engines, "precise" in args.policy, tmp
                )
                rows = []
                for policy in args.policy:
                    t = time.monotonic()
                    rows.append(run_policy(procs, workload, policy, engines, tmp))
                    say(f"  {policy}: {time.monotonic() - t:.0f} s")
            finally:
                procs.close()
            report["workloads"][workload.name] = {
                "scaling": workload.describe(),
                "fleet": asdict(workload.fleet),
                "rows": rows,
            }
    report["elapsed_s"] = time.monotonic() - started
    if args.json:
        print(json.dumps(report))
    else:
        print(render(report))


if __name__ == "__main__":
    main()
