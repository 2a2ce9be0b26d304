"""The SDK's stall deadline: a server that accepts and never answers (a hung engine or
gateway) holds a call for ``stall_timeout_s``, not for the whole ``timeout``."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sage.unified.sdk.client import UnifiedInferenceClient

ANSWER = {
    "id": "x",
    "object": "chat.completion",
    "model": "tiny",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
}


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A port whose connections are accepted (by the kernel) and never answered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


class _Answer(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps(ANSWER).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def live_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_hung_server_is_left_after_the_stall_deadline(hung_port: int, live_url: str) -> None:
    urls = [f"http://127.0.0.1:{hung_port}", live_url]
    with UnifiedInferenceClient(
        urls, timeout=60, stall_timeout_s=0.5, refresh_interval_s=0
    ) as client:
        started = time.monotonic()
        result = client.chat([{"role": "user", "content": "hi"}], model="tiny")
        took = time.monotonic() - started
    assert result.text == "ok"
    assert took < 5.0  # the stall deadline, not the 60 s timeout
