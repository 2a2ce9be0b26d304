"""The gateway's HTTP/1.1 server against real loopback sockets (no mocks).

Each test starts an ``HttpServer`` in-process on 127.0.0.1:0 with a tiny ASGI app
written in the test and talks to it with raw bytes (``asyncio.open_connection``) so
framing, pipelining, malformed input and half-written heads can be exact; httpx is used
where a plain client is enough. The server is asyncio-only: every test runs on asyncio
and on uvloop (the production loop, whose transports are separate code).

Timeouts in the server's config are short (the server sweeps for idle and stalled
connections every 0.5 s), so a timeout test takes about a second; every wait in a
test is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from sage.unified.gateway.server import HttpServer, LifespanFailed, ServerConfig

pytestmark = pytest.mark.anyio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

WAIT_S = 3.0  # upper bound for anything that should happen "soon" on a loaded machine
TIMEOUT_WAIT_S = 2.5  # keep_alive_s / request_timeout_s of 0.3 s + a 0.5 s sweep, loaded


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    backend: tuple[str, dict[str, object]] = request.param
    return backend


# -- apps -----------------------------------------------------------------------------


def asgi(handler: Handler) -> Handler:
    """An ASGI app: a trivial lifespan, and ``handler`` for HTTP requests."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await handler(scope, receive, send)

    return app


async def respond(
    send: Send,
    body: bytes = b"",
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    length: bool = True,
) -> None:
    """A complete response in one body message (with content-length unless told)."""
    all_headers = list(headers or [])
    if length:
        all_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client left first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def path_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the request's path (fixed length); reads the body first."""
    await read_body(receive)
    await respond(send, scope["path"].encode())


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    body = await read_body(receive)
    if body is not None:
        await respond(send, body)


# -- server and raw client helpers ----------------------------------------------------


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, *, raw: bool = False, **overrides: Any
) -> AsyncIterator[HttpServer]:
    """A started server on 127.0.0.1:<free port>; always shut down."""
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "keep_alive_s": 0.3,
        "request_timeout_s": 0.3,
        "graceful_shutdown_s": 2.0,
    }
    options.update(overrides)
    server = HttpServer(handler if raw else asgi(handler), ServerConfig(**options))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown()


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    chunks: list[bytes] | None = None  # the chunks, for a chunked body
    raw_head: bytes = b""

    def all(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    def header(self, name: bytes) -> bytes | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name!r} appears {len(values)} times: {self.headers}"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A raw HTTP/1.1 connection: write exact bytes, read exact responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_head(self, within: float = WAIT_S) -> Response:
        async with asyncio.timeout(within):
            raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        version, status, reason = [*lines[0].split(b" ", 2), b""][:3]
        assert version == b"HTTP/1.1", lines[0]
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            assert colon, f"malformed header line {line!r}"
            assert name == name.strip(), f"space before the colon in {line!r}"
            headers.append((name.lower(), value.strip()))
        return Response(int(status), reason, headers, raw_head=raw)

    async def read_response(self, *, head: bool = False, within: float = WAIT_S) -> Response:
        """One response; raises IncompleteReadError when the connection ends inside it."""
        async with asyncio.timeout(within):
            response = await self.read_head()
            if head or response.status in (204, 304) or response.status < 200:
                return response
            encoding = response.header(b"transfer-encoding")
            length = response.header(b"content-length")
            if encoding is not None:
                assert encoding == b"chunked", response.headers
                assert length is None, "both content-length and chunked"
                response.chunks = []
                while True:
                    size_line = await self.reader.readuntil(b"\r\n")
                    size = int(size_line[:-2], 16)
                    chunk = await self.reader.readexactly(size)
                    assert await self.reader.readexactly(2) == b"\r\n", "bad chunk framing"
                    if size == 0:
                        break
                    response.chunks.append(chunk)
                response.body = b"".join(response.chunks)
            elif length is not None:
                response.body = await self.reader.readexactly(int(length))
            else:
                response.body = await self.reader.read()  # close-delimited
        return response

    async def request(self, data: bytes, **kwargs: Any) -> Response:
        await self.send(data)
        return await self.read_response(**kwargs)

    async def read_until_closed(self, within: float = TIMEOUT_WAIT_S) -> bytes:
        """Everything the server still sends, then EOF (a reset counts as EOF)."""
        async with asyncio.timeout(within):
            try:
                return await self.reader.read()
            except ConnectionResetError:
                return b""

    async def nothing_arrives(self, wait: float) -> bool:
        """True if no byte arrives (and the connection stays open) for ``wait`` s."""
        try:
            async with asyncio.timeout(wait):
                await self.reader.read(1)
        except TimeoutError:
            return True
        return False

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def connect(server: HttpServer, *, rcvbuf: int | None = None) -> AsyncIterator[Client]:
    if rcvbuf is None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Set before connecting so the advertised window stays small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
    client = Client(reader, writer)
    try:
        yield client
    finally:
        await client.close()


def get(path: str = "/", *headers: str, version: str = "1.1", method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "host: test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: test", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def assert_error(response: Response, status: int, code: str | None = None) -> None:
    """An OpenAI-shaped JSON error that announces the close."""
    assert response.status == status, response
    assert response.header(b"content-type") == b"application/json"
    assert response.header(b"connection") == b"close"
    error = response.json()["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert error["type"]
    assert "code" in error
    if code is not None:
        assert error["code"] == code


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


async def wait_until_stable(value: Callable[[], int], *, quiet: float, within: float) -> int:
    """Wait until ``value()`` stops changing for ``quiet`` seconds; return it."""
    async with asyncio.timeout(within):
        last = value()
        while True:
            await asyncio.sleep(quiet)
            now = value()
            if now == last:
                return now
            last = now


# -- 1. basic requests and responses --------------------------------------------------


async def test_get_response_has_one_length_one_date_and_no_server_header() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # The app's own date (and a duplicate length) must not reach the client twice.
        await respond(send, b"hello", headers=[(b"date", b"bogus"), (b"x-app", b"1")])

    async with serving(app) as server, connect(server) as client:
        response = await client.request(get("/"))
    assert response.status == 200
    assert response.body == b"hello"
    assert response.header(b"content-length") == b"5"
    assert response.header(b"x-app") == b"1"
    assert response.header(b"server") is None
    date = response.header(b"date")
    assert date is not None
    assert date != b"bogus"
    assert abs(parsedate_to_datetime(date.decode()).timestamp() - time.time()) < 5
    assert response.header(b"transfer-encoding") is None


async def test_post_body_in_one_chunk_is_delivered() -> None:
    messages: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        messages.append(message)
        await respond(send, message["body"])

    async with serving(app) as server, connect(server) as client:
        response = await client.request(post("/", b"hello world"))
    assert response.body == b"hello world"
    assert messages == [{"type": "http.request", "body": b"hello world", "more_body": False}]


async def test_post_body_in_several_chunks_is_delivered_in_order() -> None:
    parts = [b"first-", b"second-", b"third"]
    got: list[tuple[bytes, bool]] = []
    progress = asyncio.Queue[int]()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        while True:
            message = await receive()
            got.append((message["body"], message["more_body"]))
            received += len(message["body"])
            progress.put_nowait(received)
            if not message["more_body"]:
                break
        await respond(send, b"".join(body for body, _ in got))

    body = b"".join(parts)
    async with serving(app) as server, connect(server) as client:
        await client.send(
            post("/", b"").replace(b"content-length: 0", b"content-length: %d" % len(body))
        )
        sent = 0
        for part in parts:
            await client.send(part)
            sent += len(part)
            async with asyncio.timeout(WAIT_S):
                while await progress.get() < sent:
                    pass
        response = await client.read_response()
    assert response.body == body
    assert len(got) >= len(parts)
    assert all(more for _, more in got[:-1])
    assert not got[-1][1]


async def test_chunked_request_body_is_dechunked() -> None:
    async with serving(echo_app) as server, connect(server) as client:
        await client.send(
            b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n"
        )
        await client.send(b"1\r\n!\r\n0\r\n\r\n")
        response = await client.read_response()
        assert response.body == b"hello world!"
        # The connection is still in sync: a second request is answered.
        assert (await client.request(post("/", b"again"))).body == b"again"


async def test_large_request_body_arrives_intact() -> None:
    body = os.urandom(1024 * 1024)  # far beyond the 64 KiB the server buffers unread

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        data = await read_body(receive)
        assert data is not None
        await respond(send, b"%d:%d" % (len(data), hash(data)))

    async with serving(app) as server, connect(server) as client:
        response = await client.request(post("/", body), within=10)
    assert response.body == b"%d:%d" % (len(body), hash(body))


async def test_httpx_round_trip() -> None:
    async def parts() -> AsyncIterator[bytes]:  # streamed: chunked request encoding
        yield b"ab"
        yield b"cd"

    async with (
        serving(echo_app) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http,
    ):
        first = await http.post("/a", content=b'{"x": 1}')
        second = await http.post("/b", content=parts())
    assert first.status_code == 200
    assert first.content == b'{"x": 1}'
    assert second.status_code == 200
    assert second.content == b"abcd"


# -- 2. keep-alive ----------------------------------------------------------------------


async def test_two_sequential_requests_share_one_connection() -> None:
    clients: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clients.append(scope["client"])
        await path_app(scope, receive, send)

    async with serving(app) as server, connect(server) as client:
        first = await client.request(get("/one"))
        second = await client.request(post("/two", b"xyz"))
    assert (first.body, second.body) == (b"/one", b"/two")
    assert first.header(b"connection") is None
    assert second.header(b"connection") is None
    assert clients[0] == clients[1]


async def test_http10_without_keep_alive_closes_after_response() -> None:
    async with serving(path_app) as server, connect(server) as client:
        response = await client.request(get("/old", version="1.0"))
        assert response.body == b"/old"
        assert response.header(b"connection") == b"close"
        assert await client.read_until_closed() == b""


async def test_http10_with_keep_alive_stays_open() -> None:
    async with serving(path_app) as server, connect(server) as client:
        first = await client.request(get("/a", "connection: keep-alive", version="1.0"))
        second = await client.request(get("/b", "connection: keep-alive", version="1.0"))
    assert (first.body, second.body) == (b"/a", b"/b")


async def test_client_connection_close_closes_after_response() -> None:
    async with serving(path_app) as server, connect(server) as client:
        response = await client.request(get("/x", "Connection: close"))
        assert response.body == b"/x"
        assert response.header(b"connection") == b"close"
        assert await client.read_until_closed() == b""


async def test_app_connection_close_header_closes_after_response() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, b"bye", headers=[(b"Connection", b"Close")])

    async with serving(app) as server, connect(server) as client:
        response = await client.request(get("/"))
        assert response.body == b"bye"
        assert response.all(b"connection") == [b"close"]
        assert await client.read_until_closed() == b""


# -- 3. pipelining ----------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 10])
async def test_pipelined_requests_are_answered_in_order(count: int) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        index = int(scope["path"].strip("/"))
        body = await read_body(receive)
        # Earlier requests finish later: order must come from the server, not timing.
        await asyncio.sleep(0.002 * (count - index))
        payload = b"%d:%b" % (index, body or b"")
        if index % 2:  # alternate fixed-length and chunked responses
            await respond(send, payload)
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": payload[:1], "more_body": True})
            await send({"type": "http.response.body", "body": payload[1:]})

    requests = b"".join(
        post(f"/{i}", b"body%d" % i) if i % 3 == 0 else get(f"/{i}") for i in range(count)
    )
    async with serving(app) as server, connect(server) as client:
        await client.send(requests)
        bodies = [(await client.read_response()).body for _ in range(count)]
        # Still usable afterwards.
        assert (await client.request(get("/99"))).body == b"99:"
    assert bodies == [(b"%d:body%d" % (i, i) if i % 3 == 0 else b"%d:" % i) for i in range(count)]


async def test_pipelined_request_after_connection_close_is_not_answered() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["path"])
        await path_app(scope, receive, send)

    async with serving(app) as server, connect(server) as client:
        await client.send(get("/first", "connection: close") + get("/second"))
        response = await client.read_response()
        assert response.body == b"/first"
        assert await client.read_until_closed() == b""
    assert seen == ["/first"]


# -- 4. response framing ----------------------------------------------------------------


async def test_response_without_length_is_chunked_with_exact_framing() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b"0123456789abcdefg", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with serving(app) as server, connect(server) as client:
        await client.send(get("/"))
        head = await client.read_head()
        assert head.header(b"transfer-encoding") == b"chunked"
        assert head.header(b"content-length") is None
        expected = b"3\r\nabc\r\n11\r\n0123456789abcdefg\r\n0\r\n\r\n"
        async with asyncio.timeout(WAIT_S):
            assert await client.reader.readexactly(len(expected)) == expected
        # Nothing after the terminator, and the connection is reusable.
        assert (await client.request(get("/"))).body == b"abc0123456789abcdefg"


async def test_response_without_length_on_http10_is_close_delimited() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part1-", "more_body": True})
        await send({"type": "http.response.body", "body": b"part2"})

    async with serving(app) as server, connect(server) as client:
        await client.send(get("/", "connection: keep-alive", version="1.0"))
        response = await client.read_response()
    assert response.header(b"transfer-encoding") is None
    assert response.header(b"content-length") is None
    assert response.header(b"connection") == b"close"
    assert response.body == b"part1-part2"


@pytest.mark.parametrize("with_length", [True, False])
async def test_head_gets_headers_but_no_body(with_length: bool) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, b"hello", length=with_length)

    async with serving(app) as server, connect(server) as client:
        response = await client.request(get("/", method="HEAD"), head=True)
        assert response.status == 200
        assert response.header(b"content-length") == (b"5" if with_length else None)
        # No body bytes follow: the next response starts right away.
        follow = await client.request(get("/"))
    assert follow.status == 200
    assert follow.body == b"hello"


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses_carry_no_body(status: int) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/next":
            await respond(send, b"next")
            return
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"must not be sent"})

    async with serving(app) as server, connect(server) as client:
        response = await client.request(get("/"))
        assert response.status == status
        assert response.header(b"transfer-encoding") is None
        follow = await client.request(get("/next"))
    assert follow.body == b"next", "bytes of the 204/304 body leaked into the stream"


# -- 5. streaming -----------------------------------------------------------------------


@pytest.mark.parametrize("with_length", [False, True])
async def test_each_streamed_chunk_reaches_the_client_before_the_next_send(
    with_length: bool,
) -> None:
    go = asyncio.Event()
    finished = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"12")] if with_length else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"chunk1", "more_body": True})
        await go.wait()
        await send({"type": "http.response.body", "body": b"chunk2"})
        finished.set()

    async with serving(app) as server, connect(server) as client:
        await client.send(get("/"))
        await client.read_head()
        first = b"chunk1" if with_length else b"6\r\nchunk1\r\n"
        async with asyncio.timeout(WAIT_S):
            assert await client.reader.readexactly(len(first)) == first
        assert not finished.is_set()
        go.set()
        rest = b"chunk2" if with_length else b"6\r\nchunk2\r\n0\r\n\r\n"
        async with asyncio.timeout(WAIT_S):
            assert await client.reader.readexactly(len(rest)) == rest


# -- 6. Expect: 100-continue ------------------------------------------------------------


async def test_100_continue_is_sent_when_the_app_reads_the_body() -> None:
    entered = asyncio.Event()
    go = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await go.wait()
        await echo_app(scope, receive, send)

    async with serving(app) as server, connect(server) as client:
        await client.send(
            b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
        )
        async with asyncio.timeout(WAIT_S):
            await entered.wait()
        assert await client.nothing_arrives(0.1), "100 Continue sent before the app read"
        go.set()
        interim = await client.read_response()
        assert interim.status == 100
        assert interim.raw_head == b"HTTP/1.1 100 Continue\r\n\r\n"
        await client.send(b"hello")
        response = await client.read_response()
    assert response.status == 200
    assert response.body == b"hello"


async def test_early_413_with_expect_closes_and_ignores_the_unread_body() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["path"])
        await respond(send, b"too big", status=413)

    smuggled = get("/smuggled")
    async with serving(app) as server, connect(server) as client:
        await client.send(
            b"POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n"
            b"expect: 100-continue\r\n\r\n" % len(smuggled)
        )
        response = await client.read_response()
        assert response.status == 413
        assert response.body == b"too big"
        with contextlib.suppress(OSError):  # the server may be gone already
            await client.send(smuggled)
        assert await client.read_until_closed() == b""
    assert seen == ["/upload"]


async def test_a_large_body_the_app_ignores_does_not_leave_the_connection_deaf() -> None:
    # A body over the server's 64 KiB read-ahead pauses reading until the app consumes
    # it. Here the whole body is in before the app answers without reading it (a 413
    # decided from Content-Length alone): the connection stays open, so it must not stay
    # paused for the next request on it. (70 KiB: loopback delivers it in one read, or
    # one segment under 64 KiB and then the rest, so it is complete when reading pauses.)
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/upload":
            await asyncio.sleep(0.05)
            await respond(send, b"too big", status=413)
        else:
            await respond(send, b"next")

    async with serving(app) as server, connect(server) as client:
        await client.send(post("/upload", b"x" * (70 * 1024)))
        response = await client.read_response()
        assert response.status == 413
        assert response.header(b"connection") is None
        await client.send(get("/next"))
        async with asyncio.timeout(WAIT_S):
            following = await client.read_response()
        assert following.body == b"next"


async def test_an_early_answer_survives_the_rest_of_the_upload() -> None:
    # The app refuses a large upload from its Content-Length alone. The client, like
    # most HTTP clients, sends the whole body before it reads: the server must keep
    # reading (and discarding) until then, because closing with unread bytes makes the
    # kernel reset the connection and the client would never see the 413.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, b"too big", status=413)

    upload = post("/upload", b"x" * (8 * 2**20))
    async with serving(app) as server, connect(server) as client:
        async with asyncio.timeout(WAIT_S * 3):
            await client.send(upload)
            response = await client.read_response()
        assert response.status == 413
        assert response.header(b"connection") == b"close"
        assert await client.read_until_closed() == b""


async def test_early_response_to_an_unread_body_announces_the_close() -> None:
    # The server closes such a connection (the body was not read); the response must
    # say so, or a pooling client reuses a connection that is about to close (RFC 9112
    # 9.6; RFC 9110 15.2.1 for a final status sent instead of 100 Continue).
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, b"too big", status=413)

    async with serving(app) as server, connect(server) as client:
        await client.send(
            b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\nexpect: 100-continue\r\n\r\n"
        )
        response = await client.read_response()
        assert response.status == 413
        assert await client.read_until_closed() == b""
    assert response.header(b"connection") == b"close"


async def test_unread_partial_body_is_not_parsed_as_the_next_request() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["path"])
        await respond(send, b"early")

    smuggled = get("/smuggled")
    body = b"0123456789" + smuggled
    async with serving(app) as server, connect(server) as client:
        head = post("/upload", body)[: -len(body)]
        await client.send(head + body[:10])
        response = await client.read_response()
        assert response.body == b"early"
        with contextlib.suppress(OSError):
            await client.send(smuggled)
        assert await client.read_until_closed() == b""
    assert seen == ["/upload"]


# -- 7. limits and malformed requests ---------------------------------------------------


async def test_header_count_limit() -> None:
    async with serving(path_app, max_headers=5) as server:
        async with connect(server) as client:  # host + 4 = exactly the limit
            ok = await client.request(get("/", *(f"x-{i}: v" for i in range(4))))
            assert ok.status == 200
        async with connect(server) as client:
            response = await client.request(get("/", *(f"x-{i}: v" for i in range(5))))
            assert_error(response, 431, "headers_too_large")
            assert await client.read_until_closed() == b""


async def test_header_bytes_limit() -> None:
    async with serving(path_app, max_header_bytes=256) as server:
        async with connect(server) as client:
            ok = await client.request(get("/", "x-a: " + "a" * 200))
            assert ok.status == 200
        async with connect(server) as client:
            response = await client.request(get("/", "x-a: " + "a" * 150, "x-b: " + "b" * 150))
            assert_error(response, 431, "headers_too_large")
            assert await client.read_until_closed() == b""


async def test_one_endless_header_is_cut_off_at_the_limit() -> None:
    # A header that never ends must be refused once it passes max_header_bytes, not
    # buffered whole: otherwise one client can grow the server's memory without bound
    # (it is never silent, so request_timeout_s does not stop it either).
    answer = b""
    closed = False
    sent = 0
    async with (
        serving(path_app, max_header_bytes=1024, request_timeout_s=10) as server,
        connect(server) as client,
    ):
        await client.send(b"GET / HTTP/1.1\r\nhost: t\r\nx-endless: ")
        while sent < 1024 * 1024 and not answer and not closed:
            try:
                await client.send(b"a" * 16384)
                sent += 16384
                async with asyncio.timeout(0.01):
                    answer = await client.reader.read(65536)
                    closed = not answer
            except TimeoutError:
                pass
            except OSError:  # reset: the server refused (the 431 may be lost with it)
                closed = True
    assert answer or closed, f"the server buffered {sent} bytes of one header, no answer"
    if answer:
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]


async def test_url_length_limit() -> None:
    async with serving(path_app, max_url_bytes=64) as server:
        async with connect(server) as client:
            ok = await client.request(get("/" + "a" * 63))
            assert ok.status == 200
            assert ok.body == b"/" + b"a" * 63
        async with connect(server) as client:
            response = await client.request(get("/" + "a" * 100))
            assert_error(response, 414, "uri_too_long")
            assert await client.read_until_closed() == b""


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x00\x01\x02garbage\r\n\r\n", id="garbage"),
        pytest.param(b"GET / HTTP/1.1\r\nhost: t\r\nno colon here\r\n\r\n", id="bad-header"),
        pytest.param(b"GET /a b c HTTP/1.1\r\nhost: t\r\n\r\n", id="bad-request-line"),
        pytest.param(
            b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\ncontent-length: 5\r\n\r\nabcde",
            id="two-lengths",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n"
            b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            id="length-and-chunked",
        ),
    ],
)
async def test_malformed_request_gets_400_json_and_close(data: bytes) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["path"])
        await path_app(scope, receive, send)

    async with serving(app) as server, connect(server) as client:
        response = await client.request(data)
        assert_error(response, 400, "bad_request")
        assert await client.read_until_closed() == b""
    assert seen == []


async def test_malformed_chunked_body_ends_the_request() -> None:
    results: list[bytes | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        results.append(await read_body(receive))
        if results[-1] is not None:
            await respond(send, b"unexpected")

    async with serving(app) as server, connect(server) as client:
        await client.send(
            b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        await client.send(b"zz\r\nxx\r\n0\r\n\r\n")
        response = await client.read_response()
        assert_error(response, 400, "bad_request")
        assert await client.read_until_closed() == b""
    assert results == [None], "the app must see the client gone, not a truncated body"


async def test_garbage_after_a_valid_request_answers_it_then_closes() -> None:
    async with serving(path_app) as server, connect(server) as client:
        await client.send(get("/ok") + b"\x00\x01 garbage\r\n\r\n")
        response = await client.read_response()
        assert response.status == 200
        assert response.body == b"/ok"
        assert response.header(b"connection") == b"close"
        assert await client.read_until_closed() == b""


# -- 8. timeouts ------------------------------------------------------------------------


async def test_idle_keep_alive_connection_is_closed() -> None:
    async with serving(path_app) as server, connect(server) as client:
        await client.request(get("/"))
        began = time.monotonic()
        assert await client.read_until_closed() == b""
        assert time.monotonic() - began >= 0.25, "closed before keep_alive_s"


async def test_connection_that_never_sends_is_closed() -> None:
    async with serving(path_app) as server, connect(server) as client:
        assert await client.read_until_closed() == b""


async def test_slow_request_head_gets_408_then_close() -> None:
    async with serving(path_app) as server, connect(server) as client:
        await client.send(b"GET /slow HTTP/1.1\r\nhost: t\r\nx-partial: ab")
        began = time.monotonic()
        response = await client.read_response(within=TIMEOUT_WAIT_S)
        assert time.monotonic() - began >= 0.25
        assert_error(response, 408, "timeout")
        assert await client.read_until_closed() == b""


async def test_stalled_request_body_disconnects_the_app_and_closes() -> None:
    messages: list[Message] = []
    done = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    return
        finally:
            done.set()

    async with serving(app) as server, connect(server) as client:
        await client.send(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n0123456789")
        async with asyncio.timeout(TIMEOUT_WAIT_S):
            await done.wait()
        await client.read_until_closed()
    assert messages[-1] == {"type": "http.disconnect"}
    assert b"".join(m.get("body", b"") for m in messages) == b"0123456789"


async def test_slow_app_is_not_cut_off_by_the_timeouts() -> None:
    # Silence while the app works is the server's, not the client's.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.7)  # longer than both timeouts plus a sweep
        await send({"type": "http.response.body", "body": b"late", "more_body": True})
        await asyncio.sleep(0.7)
        await send({"type": "http.response.body", "body": b"!"})

    async with serving(app) as server, connect(server) as client:
        response = await client.request(post("/", b"x"))
    assert response.body == b"late!"


# -- 9. client disconnects --------------------------------------------------------------


async def test_client_leaving_wakes_an_app_waiting_in_receive() -> None:
    waiting = asyncio.Event()
    returned = asyncio.Event()
    result: list[tuple[Message, float]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert await read_body(receive) == b"body"
        waiting.set()
        began = time.monotonic()
        message = await receive()
        result.append((message, time.monotonic() - began))
        returned.set()

    async with serving(app) as server:
        async with connect(server) as client:
            await client.send(post("/", b"body"))
            async with asyncio.timeout(WAIT_S):
                await waiting.wait()
        async with asyncio.timeout(WAIT_S):
            await returned.wait()
    message, waited = result[0]
    assert message == {"type": "http.disconnect"}
    assert waited < 1.0


async def test_client_leaving_during_a_stream_does_not_break_the_app() -> None:
    started = asyncio.Event()
    go = asyncio.Event()
    returned = asyncio.Event()
    outcome: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            started.set()
            await go.wait()
            for _ in range(200):
                await send({"type": "http.response.body", "body": b"x" * 4096, "more_body": True})
                await asyncio.sleep(0.001)
            await send({"type": "http.response.body", "body": b""})
            message = await receive()
            outcome.append(message["type"])
        except BaseException as exc:
            outcome.append(repr(exc))
            raise
        finally:
            returned.set()

    async with serving(app) as server:
        async with connect(server) as client:
            await client.send(get("/"))
            async with asyncio.timeout(WAIT_S):
                await started.wait()
        go.set()
        async with asyncio.timeout(WAIT_S):
            await returned.wait()
        assert outcome == ["http.disconnect"]
        async with connect(server) as client:  # the server is fine
            assert (
                await client.request(get("/", "connection: close"), within=WAIT_S)
            ).status == 200


# -- 10. back-pressure ------------------------------------------------------------------


async def test_send_waits_for_a_client_that_does_not_read() -> None:
    chunk = 256 * 1024
    total_chunks = 128  # 32 MiB
    sent = 0
    finished = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal sent
        headers = [(b"content-length", str(chunk * total_chunks).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        data = b"z" * chunk
        for i in range(total_chunks):
            await send(
                {"type": "http.response.body", "body": data, "more_body": i < total_chunks - 1}
            )
            sent += chunk
        finished.set()

    async with serving(app) as server, connect(server, rcvbuf=32 * 1024) as client:
        await client.send(get("/"))
        stalled_at = await wait_until_stable(lambda: sent, quiet=0.3, within=10)
        assert not finished.is_set()
        assert stalled_at < 12 * 1024 * 1024, f"the app sent {stalled_at} bytes unread"
        response = await client.read_head()
        received = 0
        async with asyncio.timeout(15):
            while received < chunk * total_chunks:
                data = await client.reader.read(1024 * 1024)
                assert data
                received += len(data)
            await finished.wait()
    assert response.status == 200
    assert received == chunk * total_chunks


# -- 11. application errors -------------------------------------------------------------


async def test_app_raising_before_responding_gets_500_without_details() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("secret-detail-xyz")

    async with serving(app) as server, connect(server) as client:
        response = await client.request(get("/"))
        assert_error(response, 500)
        assert b"secret-detail-xyz" not in response.body
        assert b"Traceback" not in response.body
        assert b"RuntimeError" not in response.body
        assert await client.read_until_closed() == b""


@pytest.mark.parametrize("with_length", [False, True])
async def test_app_raising_mid_response_closes_the_connection(with_length: bool) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"100")] if with_length else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom")

    async with serving(app) as server, connect(server) as client:
        await client.send(get("/"))
        head = await client.read_head()
        assert head.status == 200
        rest = await client.read_until_closed(within=WAIT_S)
    # What was sent arrives, then the connection ends: no terminating chunk, no hang.
    assert rest == (b"partial" if with_length else b"7\r\npartial\r\n")


async def test_app_returning_without_responding_gets_500() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        return

    async with serving(app) as server, connect(server) as client:
        response = await client.request(get("/"))
        assert_error(response, 500)
        assert await client.read_until_closed() == b""


async def test_app_returning_after_start_of_a_fixed_length_response_gets_500() -> None:
    # Nothing was written yet (the head waits for the body), so a clean 500 is possible.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
        )

    async with serving(app) as server, connect(server) as client:
        response = await client.request(get("/"))
        assert_error(response, 500)


async def test_body_longer_than_content_length_gets_500() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]}
        )
        await send({"type": "http.response.body", "body": b"much too long"})

    async with serving(app) as server, connect(server) as client:
        response = await client.request(get("/"))
        assert_error(response, 500)


async def test_body_shorter_than_content_length_closes_instead_of_hanging() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]}
        )
        await send({"type": "http.response.body", "body": b"abc"})

    async with serving(app) as server, connect(server) as client:
        await client.send(get("/"))
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await client.read_response()
        assert info.value.partial == b"abc"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param((b"x-a", b"ok\r\nx-injected: 1"), id="crlf-in-value"),
        pytest.param((b"x-a", b"ok\nx-injected: 1"), id="lf-in-value"),
        pytest.param((b"x-a: 1\r\nx-injected", b"1"), id="crlf-in-name"),
    ],
)
async def test_header_injection_never_reaches_the_client(header: tuple[bytes, bytes]) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, b"body", headers=[header])

    async with serving(app) as server, connect(server) as client:
        await client.send(get("/"))
        data = await client.read_until_closed(within=WAIT_S)
    assert b"x-injected" not in data
    assert data == b"" or data.startswith(b"HTTP/1.1 500 "), data[:80]


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(
            {"status": 200, "headers": [(b"x-a", b"ok\r\nx-injected: 1")]}, id="crlf-header"
        ),
        pytest.param({"status": 200, "headers": [(b"content-length", b"abc")]}, id="bad-length"),
        pytest.param({"status": 1000, "headers": []}, id="bad-status"),
    ],
)
async def test_invalid_response_start_gets_500(start: dict[str, Any]) -> None:
    # Nothing reached the client yet, so the server can still answer properly (its
    # own contract: "Answer 500 if no byte of the response was written").
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", **start})
        await send({"type": "http.response.body", "body": b"body"})

    async with serving(app) as server, connect(server) as client:
        await client.send(get("/"))
        data = await client.read_until_closed(within=WAIT_S)
    assert b"x-injected" not in data
    assert data.startswith(b"HTTP/1.1 500 "), f"got {data[:80]!r} instead of a 500"


# -- 12. lifespan -----------------------------------------------------------------------


async def test_startup_completes_before_the_port_listens(free_tcp_port: int) -> None:
    state = {"started": False, "refused_during_startup": False}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            state["refused_during_startup"] = await refused(free_tcp_port)
            await asyncio.sleep(0.05)
            state["started"] = True
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await respond(send, b"started" if state["started"] else b"not started")

    async with serving(app, raw=True, port=free_tcp_port) as server, connect(server) as client:
        assert server.port == free_tcp_port
        response = await client.request(get("/"))
    assert state["refused_during_startup"]
    assert response.body == b"started"


@pytest.mark.parametrize("how", ["failed-message", "raises", "returns"])
async def test_startup_failure_raises_and_nothing_listens(free_tcp_port: int, how: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        if how == "failed-message":
            await send({"type": "lifespan.startup.failed", "message": "no model"})
        elif how == "raises":
            raise ValueError("no model")

    config = ServerConfig(host="127.0.0.1", port=free_tcp_port)
    server = HttpServer(app, config)
    try:
        with pytest.raises(LifespanFailed) as info:
            await server.start()
        if how != "returns":
            assert "no model" in str(info.value)
        assert not server.started
        assert await refused(free_tcp_port)
    finally:
        await server.shutdown()


async def test_shutdown_message_is_delivered() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        events.append("request")
        await respond(send, b"ok")

    async with serving(app, raw=True) as server, connect(server) as client:
        await client.request(get("/", "connection: close"))
        assert events == ["lifespan.startup", "request"]
    assert events == ["lifespan.startup", "request", "lifespan.shutdown"]


async def test_lifespan_off_never_calls_the_app_with_lifespan() -> None:
    scopes: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope["type"])
        await respond(send, b"ok")

    async with serving(app, raw=True, lifespan=False) as server, connect(server) as client:
        assert (await client.request(get("/"))).body == b"ok"
    assert scopes == ["http"]


async def test_lifespan_state_is_visible_to_requests() -> None:
    # ASGI lifespan state: the server hands "state" to the lifespan scope, so each
    # request scope must carry a (shallow) copy of what startup put there.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            scope["state"]["pool"] = "ready"
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        state = scope.get("state")
        await respond(send, repr(state).encode())

    async with serving(app, raw=True) as server, connect(server) as client:
        response = await client.request(get("/"))
    assert response.body == repr({"pool": "ready"}).encode()


# -- 13. graceful shutdown --------------------------------------------------------------


async def test_graceful_shutdown_finishes_in_flight_requests_and_closes_idle_ones() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            entered.set()
            await release.wait()
        await respond(send, scope["path"].encode())

    server = HttpServer(
        asgi(app), ServerConfig(host="127.0.0.1", port=0, keep_alive_s=30, graceful_shutdown_s=10)
    )
    await server.start()
    port = server.port
    shutdown: asyncio.Task[None] | None = None
    try:
        async with connect(server) as busy, connect(server) as idle:
            assert (await idle.request(get("/idle"))).body == b"/idle"
            await busy.send(get("/slow"))
            async with asyncio.timeout(WAIT_S):
                await entered.wait()
            shutdown = asyncio.create_task(server.shutdown())
            assert await idle.read_until_closed(within=1.0) == b"", "idle connection kept open"
            assert await refused(port), "still accepting connections during shutdown"
            assert not shutdown.done()
            release.set()
            response = await busy.read_response()
            assert response.body == b"/slow"
            assert response.header(b"connection") == b"close"
            assert await busy.read_until_closed() == b""
            async with asyncio.timeout(WAIT_S):
                await shutdown
    finally:
        release.set()
        if shutdown is not None and not shutdown.done():
            shutdown.cancel()
        await server.shutdown()


async def test_graceful_shutdown_gives_up_on_a_request_that_never_finishes() -> None:
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with serving(app, graceful_shutdown_s=0.2) as server, connect(server) as client:
        await client.send(get("/"))
        async with asyncio.timeout(WAIT_S):
            await entered.wait()
        began = time.monotonic()
        async with asyncio.timeout(WAIT_S):
            await server.shutdown()
        assert time.monotonic() - began < 1.0
        assert await client.read_until_closed(within=1.0) == b""
        assert cancelled.is_set()
        await server.shutdown()  # idempotent


# -- 14. scope --------------------------------------------------------------------------


async def test_scope_fields() -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await respond(send, b"ok")

    async with serving(app) as server, connect(server) as client:
        await client.request(
            b"PATCH /caf%C3%A9/a%20b%2Fc?x=1&y=%20 HTTP/1.1\r\nHost: example\r\n"
            b"X-Mixed-Case: Value Kept\r\nx-dup: 1\r\nX-Dup: 2\r\n\r\n"
        )
        await client.request(get("/v10", "connection: keep-alive", version="1.0"))
        await client.request(get("http://example.com/p%41th?q=1"))
        local = client.writer.get_extra_info("sockname")
    scope = scopes[0]
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["method"] == "PATCH"
    assert scope["path"] == "/café/a b/c"
    assert scope["raw_path"] == b"/caf%C3%A9/a%20b%2Fc"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["root_path"] == ""
    assert scope["scheme"] == "http"
    assert scope["http_version"] == "1.1"
    assert scope["headers"] == [
        (b"host", b"example"),
        (b"x-mixed-case", b"Value Kept"),
        (b"x-dup", b"1"),
        (b"x-dup", b"2"),
    ]
    assert tuple(scope["client"]) == (local[0], local[1])
    assert tuple(scope["server"]) == ("127.0.0.1", server.port)
    assert scopes[1]["http_version"] == "1.0"
    assert (scopes[2]["path"], scopes[2]["query_string"]) == ("/pAth", b"q=1")


async def test_query_string_alone_and_empty_path() -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await respond(send, b"ok")

    async with serving(app) as server, connect(server) as client:
        await client.request(get("/?"))
        await client.request(get("/plain"))
    assert (scopes[0]["path"], scopes[0]["raw_path"], scopes[0]["query_string"]) == ("/", b"/", b"")
    assert scopes[1]["query_string"] == b""


# -- 15. hardening (security review) ----------------------------------------------------
# Each test here failed before its fix; docs/reliability.md names them under the promise.


async def test_access_log_escapes_and_bounds_a_hostile_target(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # %0D%0A decodes to CR LF in the path: logged raw, it forges a second log line.
    target = "/v1/x%0D%0A127.0.0.1%20-%20%22GET%20/admin%22%20200%1B[2J" + "a" * 7000
    with caplog.at_level("INFO", logger="sage.unified.gateway.access"):
        async with serving(path_app, access_log=True) as server, connect(server) as client:
            response = await client.request(get(target))
    assert response.status == 200
    [line] = [r.getMessage() for r in caplog.records if r.name.endswith(".access")]
    assert "\n" not in line
    assert "\r" not in line
    assert "\x1b" not in line
    assert "\\x0d\\x0a127.0.0.1" in line
    assert "…(+" in line
    assert len(line) < 600


async def test_app_error_log_escapes_the_target(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    with caplog.at_level("ERROR", logger="sage.unified.gateway"):
        async with serving(app) as server, connect(server) as client:
            response = await client.request(get("/a%0Aforged%1B[31m" + "b" * 7000))
    assert response.status == 500
    [line] = [r.getMessage() for r in caplog.records if "unhandled error" in r.getMessage()]
    assert "\n" not in line
    assert "\x1b" not in line
    assert "\\x0aforged\\x1b[31m" in line
    assert len(line) < 600


async def test_trailer_fields_never_become_request_headers() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)  # the trailers have been parsed by now
        seen.append(list(scope["headers"]))
        await respond(send, body or b"")

    async with serving(app) as server, connect(server) as client:
        await client.send(
            b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nauthorization: Bearer stolen\r\nx-trailer: 1\r\n\r\n"
        )
        response = await client.read_response()
        assert response.body == b"hello"
        # The connection is still in sync: a second request is answered.
        assert (await client.request(get("/next"))).status == 200
    names = [name for name, _ in seen[0]]
    assert names == [b"host", b"transfer-encoding"]
    assert all(b"authorization" not in [name for name, _ in headers] for headers in seen)


async def test_one_endless_trailer_is_cut_off_at_the_limit() -> None:
    # Like an endless header line, but after the body, where the head's count had ended.
    answer = b""
    closed = False
    sent = 0
    async with (
        serving(echo_app, max_header_bytes=1024, request_timeout_s=10) as server,
        connect(server) as client,
    ):
        await client.send(
            b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
            b"1\r\nx\r\n0\r\nx-endless: "
        )
        while sent < 4 * 1024 * 1024 and not answer and not closed:
            try:
                await client.send(b"a" * 16384)
                sent += 16384
                async with asyncio.timeout(0.01):
                    answer = await client.reader.read(65536)
                    closed = not answer
            except TimeoutError:
                pass
            except OSError:  # reset: the server refused (the 431 may be lost with it)
                closed = True
    assert answer or closed, f"the server buffered {sent} bytes of one trailer, no answer"
    if answer:
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET / HTTP/1.0\r\nhost: a\r\nhost: b\r\n\r\n", id="two-hosts-1.0"),
    ],
)
async def test_a_request_without_exactly_one_host_gets_400(head: bytes) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["path"])
        await path_app(scope, receive, send)

    async with serving(app) as server, connect(server) as client:
        response = await client.request(head)
        assert_error(response, 400, "bad_request")
        assert "Host" in response.json()["error"]["message"]
        assert await client.read_until_closed() == b""
    assert seen == []


async def test_http_1_0_without_host_is_served() -> None:
    async with serving(path_app) as server, connect(server) as client:
        await client.send(b"GET /old HTTP/1.0\r\n\r\n")
        head = await client.read_head()
        body = await client.read_until_closed(within=WAIT_S)
    assert head.status == 200
    assert body == b"/old"


@pytest.mark.parametrize(
    ("coding", "status", "code"),
    [
        # httptools would frame this as chunked and hand the app gzip bytes as the body.
        pytest.param(b"gzip, chunked", 501, "unsupported_transfer_coding", id="gzip-chunked"),
        # chunked not last: the body's length is unknown, RFC 9112 6.3 says 400 (httptools).
        pytest.param(b"gzip", 400, "bad_request", id="gzip"),
        # Two transfer-encoding lines: httptools refuses them itself.
        pytest.param(b"chunked\r\ntransfer-encoding: chunked", 400, "bad_request", id="twice"),
    ],
)
async def test_a_transfer_coding_other_than_chunked_is_refused(
    coding: bytes, status: int, code: str
) -> None:
    bodies: list[bytes | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        bodies.append(await read_body(receive))
        if bodies[-1] is not None:
            await respond(send, bodies[-1])

    async with serving(app) as server, connect(server) as client:
        response = await client.request(
            b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: %b\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n" % coding
        )
        assert_error(response, status, code)
        assert await client.read_until_closed() == b""
    assert bodies in ([], [None]), "the app must never read such a body"


async def test_chunked_in_any_case_is_served() -> None:
    async with serving(echo_app) as server, connect(server) as client:
        response = await client.request(
            b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: Chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
    assert response.body == b"hello"


async def _trickle(client: Client, data: bytes, every_s: float) -> None:
    """Send ``data`` one byte at a time until done or the server hangs up."""
    for byte in data:
        try:
            await client.send(bytes([byte]))
        except OSError:
            return
        await asyncio.sleep(every_s)


async def test_a_trickled_request_head_gets_408_at_the_head_deadline() -> None:
    # One byte every 0.1 s is never silent for request_timeout_s: only a deadline on the
    # whole head stops it (a 7 KB head would hold the connection for 12 minutes).
    async with (
        serving(path_app, head_timeout_s=0.5, request_timeout_s=5) as server,
        connect(server) as client,
    ):
        began = time.monotonic()
        trickle = asyncio.create_task(
            _trickle(client, b"GET / HTTP/1.1\r\nhost: t\r\nx-slow: " + b"a" * 100, 0.05)
        )
        try:
            response = await client.read_response(within=4)
        finally:
            trickle.cancel()
        assert 0.4 <= time.monotonic() - began < 4
        assert_error(response, 408, "timeout")
        assert await client.read_until_closed() == b""


async def test_a_trickled_request_body_gets_408_under_the_minimum_rate() -> None:
    outcome: list[bytes | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        outcome.append(await read_body(receive))
        if outcome[-1] is not None:
            await respond(send, b"unexpected")

    async with (
        serving(
            app, min_body_rate_bytes_s=1000, body_rate_grace_s=0.5, request_timeout_s=5
        ) as server,
        connect(server) as client,
    ):
        await client.send(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\n\r\n")
        began = time.monotonic()
        trickle = asyncio.create_task(_trickle(client, b"b" * 200, 0.02))  # ~50 B/s
        try:
            response = await client.read_response(within=4)
        finally:
            trickle.cancel()
        assert 0.4 <= time.monotonic() - began < 4
        assert_error(response, 408, "timeout")
        assert "bytes/s" in response.json()["error"]["message"]
        assert await client.read_until_closed() == b""
    assert outcome == [None], "the app must see the client gone"


async def test_a_body_waiting_for_100_continue_is_not_judged_by_its_rate() -> None:
    # The client sends nothing until the app asks for the body: that silence is ours.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(1.0)  # beyond the grace and two sweeps
        await echo_app(scope, receive, send)

    async with (
        serving(
            app, min_body_rate_bytes_s=1000, body_rate_grace_s=0.3, request_timeout_s=5
        ) as server,
        connect(server) as client,
    ):
        await client.send(
            b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
        )
        interim = await client.read_response()
        assert interim.status == 100
        await client.send(b"hello")
        response = await client.read_response()
    assert response.status == 200
    assert response.body == b"hello"


async def test_connections_past_the_cap_get_503_and_are_closed_at_once() -> None:
    async with serving(path_app, max_connections=2, keep_alive_s=30) as server:
        async with connect(server) as first, connect(server) as second:
            assert (await first.request(get("/1"))).status == 200
            assert (await second.request(get("/2"))).status == 200
            async with connect(server) as third:
                response = await third.read_response()  # nothing sent: nothing read
                assert_error(response, 503, "too_many_connections")
                assert response.header(b"retry-after") == b"1"
                assert response.json()["error"]["type"] == "service_unavailable"
                assert await third.read_until_closed(within=WAIT_S) == b""
            assert server.refused_connections == 1
            assert server.connection_count == 2
            # The refusal did not disturb the connections already open.
            assert (await first.request(get("/again"))).status == 200
        for _ in range(int(WAIT_S / 0.01)):  # the server notices the two closes
            if not server.connection_count:
                break
            await asyncio.sleep(0.01)
        assert server.connection_count == 0
        async with connect(server) as later:
            assert (await later.request(get("/later"))).status == 200


# -- config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"port": 70000},
        {"keep_alive_s": 0},
        {"request_timeout_s": -1},
        {"graceful_shutdown_s": -0.1},
        {"max_headers": 0},
        {"head_timeout_s": 0},
        {"min_body_rate_bytes_s": -1},
        {"body_rate_grace_s": -1},
        {"max_connections": 0},
    ],
)
def test_config_rejects_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ServerConfig(**bad)
