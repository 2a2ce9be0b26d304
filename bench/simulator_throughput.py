"""Throughput of the engine simulator (not a test): requests/s on one core.

Starts ``python -m sage.unified.agent.simulator`` pinned to CPU 0 (``taskset``
when present), drives it on 127.0.0.1 with ``wrk`` (a Lua POST script written to a
temp dir) or, without wrk, with a small built-in asyncio keep-alive load generator
pinned to CPU 1, for a bounded duration, and prints requests/s, p50/p99 latency and
the simulator's CPU time per request (utime+stime from /proc/<pid>/stat).

Scenarios: non-streaming chat (16 tokens, latency 0) and streaming chat (32 chunks,
latency 0). The requirement is >= 8,000 non-streaming requests/s.

    .venv/bin/python bench/simulator_throughput.py [--duration 5] [--connections 32] [--no-wrk]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHAT: dict[str, object] = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "hello there"}],
}
STREAM: dict[str, object] = {**CHAT, "stream": True}
PATH = "/v1/chat/completions"

LUA = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  io.write(string.format('{"requests":%%d,"duration_us":%%d,"errors":%%d,"non2xx":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(99)))
end
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pin(cpu: int) -> list[str]:
    return (
        ["taskset", "-c", str(cpu)]
        if shutil.which("taskset") and (os.cpu_count() or 1) > cpu
        else []
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_sim(extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    argv = [
        *_pin(0),
        sys.executable,
        "-m",
        "sage.unified.agent.simulator",
        "--model",
        "bench-model",
    ]
    proc = subprocess.Popen(
        [*argv, "--port", str(port), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("simulator did not start")


def _run_wrk(
    port: int, body: dict[str, object], duration: float, connections: int
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(LUA % json.dumps(body))
        argv = [
            *_pin(1),
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "-s",
            str(script),
        ]
        out = subprocess.run(
            [*argv, f"http://127.0.0.1:{port}{PATH}"],
            capture_output=True,
            text=True,
            timeout=duration + 30,
        )
    line = [x for x in out.stdout.splitlines() if x.startswith("{")][-1]
    r = json.loads(line)
    return {
        "requests": r["requests"],
        "seconds": r["duration_us"] / 1e6,
        "errors": r["errors"] + r["non2xx"],
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
    }


# -- built-in load generator (used without wrk) -------------------------------------


async def _one_connection(
    port: int, request: bytes, stop_at: float, lat: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(1)
            lower = head.lower()
            if b"content-length:" in lower:
                n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(n)
            else:
                await reader.readuntil(b"\r\n0\r\n\r\n")
            lat.append(time.perf_counter() - t0)
    finally:
        writer.close()


async def _loadgen(port: int, body: bytes, duration: float, connections: int) -> dict[str, float]:
    request = (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (PATH.encode(), len(body), body)
    )
    lat: list[float] = []
    errors: list[int] = []
    start = time.monotonic()
    await asyncio.gather(
        *(_one_connection(port, request, start + duration, lat, errors) for _ in range(connections))
    )
    elapsed = time.monotonic() - start
    lat.sort()
    return {
        "requests": len(lat),
        "seconds": elapsed,
        "errors": len(errors),
        "p50_ms": lat[len(lat) // 2] * 1000 if lat else 0.0,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else 0.0,
    }


def _run_builtin(
    port: int, body: dict[str, object], duration: float, connections: int
) -> dict[str, float]:
    argv = [*_pin(1), sys.executable, __file__, "--_loadgen", str(port), json.dumps(body)]
    argv += ["--duration", str(duration), "--connections", str(connections)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _scenario(
    name: str, extra: list[str], body: dict[str, object], args: argparse.Namespace
) -> None:
    proc, port = _start_sim(extra)
    try:
        use_wrk = shutil.which("wrk") is not None and not args.no_wrk
        drive = _run_wrk if use_wrk else _run_builtin
        cpu0 = _cpu_seconds(proc.pid)
        r = drive(port, body, args.duration, args.connections)
        cpu = _cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    rate = r["requests"] / r["seconds"] if r["seconds"] else 0.0
    per_req = cpu / r["requests"] * 1e6 if r["requests"] else 0.0
    print(
        f"{name:<28} {rate:>10.0f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
        f"sim CPU {per_req:6.1f} us/req  errors {int(r['errors'])}  ({'wrk' if use_wrk else 'built-in'}, "
        f"{args.connections} conns, {args.duration:g} s)",
        flush=True,
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds per scenario")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--no-wrk", action="store_true", help="use the built-in load generator")
    p.add_argument("--_loadgen", nargs=2, metavar=("PORT", "BODY"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._loadgen:
        port, body = args._loadgen
        result = asyncio.run(_loadgen(int(port), body.encode(), args.duration, args.connections))
        print(json.dumps(result))
        return 0
    _scenario("chat, non-streaming (16 tok)", [], CHAT, args)
    _scenario("chat, streaming (32 chunks)", ["--output-tokens", "32"], STREAM, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
