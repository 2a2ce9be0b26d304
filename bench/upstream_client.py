"""Microbenchmark: client CPU per proxied request, our upstream client vs httpx (vs aiohttp).

Starts a minimal asyncio HTTP/1.1 server in a child process (so its CPU is
not counted), then drives it from this process with each client and reports
this process's CPU time (user + sys) per request:

- ``json c=1``: sequential POSTs with a ~100-byte JSON body, ~300-byte JSON answer;
- ``json c=32``: the same from 32 concurrent workers;
- ``stream``: 32 SSE events per response, 0.5 ms apart (chunked), c=8; CPU per stream.

Run: ``.venv/bin/python bench/upstream_client.py [--requests 3000] [--loop uvloop|asyncio]``.
aiohttp is not a project dependency; to include it, install it in a throwaway
venv and pass ``--extra-site /tmp/venv/lib/python3.11/site-packages`` (appended
to ``sys.path`` so the project's own packages still win).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

BODY = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "x" * 40}], "stream": False}
).encode()
ANSWER = json.dumps(
    {"id": "cmpl-1", "object": "chat.completion", "choices": [{"message": {"content": "y" * 180}}]}
).encode()
EVENTS = 32
HEADERS = [(b"content-type", b"application/json"), (b"authorization", b"Bearer sk-bench")]


# -- server (child process) ---------------------------------------------------


class _ServerProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                length = int(head[i + 15 :].split(b"\r\n", 1)[0])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            self._respond(head.split(b" ", 2)[1])

    def _respond(self, path: bytes) -> None:
        assert self.transport is not None
        if path == b"/stream":
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            loop = asyncio.get_running_loop()
            for i in range(EVENTS + 1):
                loop.call_later(0.0005 * (i + 1), self._event, i)
        else:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(ANSWER), ANSWER)
            )

    def _event(self, i: int) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if i == EVENTS:
            self.transport.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
        else:
            event = b'data: {"choices": [{"delta": {"content": "tok%03d"}}]}\n\n' % i
            self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))


def _serve(port_queue: Any) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_ServerProtocol, "127.0.0.1", 0, backlog=1024)
        port_queue.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


# -- clients ------------------------------------------------------------------

Request = Callable[[bool], Awaitable[int]]


async def _ours(port: int) -> tuple[Request, Callable[[], Awaitable[None]]]:
    from sage.unified.gateway.upstream import UpstreamPool

    pool = UpstreamPool(max_connections_per_origin=1024)
    origin = ("http", "127.0.0.1", port)

    async def request(stream: bool) -> int:
        resp = await pool.request(
            b"POST", origin, b"/stream" if stream else b"/json", HEADERS, BODY
        )
        if not stream:
            return len(await resp.read())
        n = 0
        async for _ in resp:
            n += 1
        return n

    return request, pool.aclose


async def _httpx(port: int) -> tuple[Request, Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    )
    headers = {k.decode(): v.decode() for k, v in HEADERS}
    base = f"http://127.0.0.1:{port}"

    async def request(stream: bool) -> int:
        if not stream:
            return len((await client.post(base + "/json", content=BODY, headers=headers)).content)
        n = 0
        async with client.stream("POST", base + "/stream", content=BODY, headers=headers) as resp:
            async for _ in resp.aiter_raw():
                n += 1
        return n

    return request, client.aclose


async def _aiohttp(port: int) -> tuple[Request, Callable[[], Awaitable[None]]]:
    # Not a project dependency (typed as Any): see --extra-site.
    aiohttp = importlib.import_module("aiohttp")
    yarl = importlib.import_module("yarl")

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1024),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )
    headers = {k.decode(): v.decode() for k, v in HEADERS}
    json_url = yarl.URL(f"http://127.0.0.1:{port}/json")
    stream_url = yarl.URL(f"http://127.0.0.1:{port}/stream")

    async def request(stream: bool) -> int:
        if not stream:
            async with session.post(json_url, data=BODY, headers=headers) as resp:
                return len(await resp.read())
        n = 0
        async with session.post(stream_url, data=BODY, headers=headers) as resp:
            async for _ in resp.content.iter_any():
                n += 1
        return n

    return request, session.close


# -- measurement --------------------------------------------------------------


async def _run(request: Request, total: int, concurrency: int, stream: bool) -> tuple[float, float]:
    """(CPU µs per request, wall seconds)."""

    async def worker(n: int) -> None:
        for _ in range(n):
            await request(stream)

    await asyncio.gather(
        *(worker(max(1, total // concurrency // 10)) for _ in range(concurrency))
    )  # warm-up
    per = total // concurrency
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(per) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu / (per * concurrency) * 1e6, wall


async def _bench(
    port: int, clients: dict[str, Any], requests: int, streams: int, reps: int
) -> None:
    scenarios = [
        ("json c=1", 1, False, requests),
        ("json c=32", 32, False, requests),
        ("stream c=8", 8, True, streams),
    ]
    results: dict[str, dict[str, float]] = {}
    for name, factory in clients.items():
        request, close = await factory(port)
        try:
            assert await request(False) == len(ANSWER)
            assert await request(True) >= 2
            for label, conc, stream, n in scenarios:
                samples = [(await _run(request, n, conc, stream))[0] for _ in range(reps)]
                results.setdefault(label, {})[name] = statistics.median(samples)
        finally:
            await close()
    names = list(clients)
    print(
        f"{'client CPU µs (median of ' + str(reps) + ')':<28}" + "".join(f"{n:>12}" for n in names)
    )
    for label, _, stream, _ in scenarios:
        row = results[label]
        unit = "per stream" if stream else "per req"
        print(f"{label + ' ' + unit:<28}" + "".join(f"{row[n]:>12.1f}" for n in names))
    base = names[0]
    for other in names[1:]:
        ratios = " / ".join(
            f"{results[label][other] / results[label][base]:.1f}x" for label, *_ in scenarios
        )
        print(f"{other} ÷ {base}: {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--extra-site", action="append", default=[], help="append to sys.path (for aiohttp)"
    )
    args = parser.parse_args()
    sys.path.extend(args.extra_site)

    clients: dict[str, Any] = {"ours": _ours, "httpx": _httpx}
    try:
        importlib.import_module("aiohttp")
        clients["aiohttp"] = _aiohttp
    except ImportError:
        print("aiohttp not importable: skipped (see --extra-site)")

    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=30)
        print(
            f"loop={args.loop} requests={args.requests} streams={args.streams} ({EVENTS} events each)"
        )
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(_bench(port, clients, args.requests, args.streams, args.reps))
        else:
            asyncio.run(_bench(port, clients, args.requests, args.streams, args.reps))
    finally:
        server.terminate()
        server.join(10)


if __name__ == "__main__":
    main()
