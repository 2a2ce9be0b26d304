"""Every backend of a model failing: no retry storm, and recovery without an operator.

(The fast 503 + ``Retry-After`` when every backend is unreachable is
``tests/integration/test_gateway_proxy.py::test_all_backends_unreachable_is_a_fast_503_with_retry_after``.)

Static mode (``--backend``), so only the gateway's own data plane is involved: its
retries, retry budget, token bucket and passive ejection.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
FAST_EJECTION = {"SAGE_GATEWAY_EJECTION_BASE_S": "1", "SAGE_GATEWAY_EJECTION_MAX_S": "2"}


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout} s")


def _inference_requests(url: str) -> int:
    return int(httpx.get(f"{url}/sim/stats", timeout=5).json()["inference_requests"])


def test_failing_backends_see_at_most_1_2x_the_client_load_and_recover_alone(
    start_simulator, start_gateway, models_ready
) -> None:  # type: ignore[no-untyped-def]
    sims = [
        start_simulator("tiny", failure_rate=1.0, enable_control=True, ttft_ms=1, itl_ms=1)
        for _ in range(2)
    ]
    gateway = start_gateway("--backend", sims[0].url, "--backend", sims[1].url, env=FAST_EJECTION)
    models_ready(gateway.url, {"tiny"})
    before = sum(_inference_requests(sim.url) for sim in sims)

    statuses: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                status = client.post(f"{gateway.url}/v1/chat/completions", json=CHAT).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=client_loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    attempts = sum(_inference_requests(sim.url) for sim in sims) - before
    sent = len(statuses)
    print(f"client requests {sent}, backend attempts {attempts}, statuses {set(statuses)}")
    assert sent > 20
    assert 200 not in statuses
    assert all(status >= 500 for status in statuses)
    assert attempts <= 1.2 * sent, (attempts, sent)

    # Heal both engines; no operator action: the gateway probes them back after the
    # (1 s) ejection and traffic flows again.
    for sim in sims:
        assert httpx.post(f"{sim.url}/sim/config", json={"failure_rate": 0}).status_code == 200
    healed = time.monotonic()
    _wait(
        lambda: (
            httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10).status_code
            == 200
        ),
        15,
        "a request succeeds after the engines heal",
    )
    recovered_after = time.monotonic() - healed
    print(f"recovered after {recovered_after:.2f} s")
    assert recovered_after < 5.0
    with httpx.Client(timeout=10) as client:
        assert {
            client.post(f"{gateway.url}/v1/chat/completions", json=CHAT).status_code
            for _ in range(10)
        } == {200}


class _Overloaded:
    """An engine stand-in that lists model ``tiny`` but answers every inference 503
    (retryable for the gateway, unlike the simulator's injected 500s)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.startswith("/v1/models"):
                    self._send(200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]})
                else:
                    self._send(200, {})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                with outer.lock:
                    outer.attempts += 1
                self._send(503, {"error": {"message": "overloaded", "type": "x", "code": 503}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def overloaded() -> Iterator[list[_Overloaded]]:
    servers = [_Overloaded(), _Overloaded()]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def test_retryable_failures_everywhere_cause_no_retry_storm(
    overloaded: list[_Overloaded], start_gateway, models_ready
) -> None:  # type: ignore[no-untyped-def]
    gateway = start_gateway(
        "--backend", overloaded[0].url, "--backend", overloaded[1].url, env=FAST_EJECTION
    )
    models_ready(gateway.url, {"tiny"})
    statuses: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                status = client.post(f"{gateway.url}/v1/chat/completions", json=CHAT).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=client_loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    attempts = sum(server.attempts for server in overloaded)
    sent = len(statuses)
    assert sent > 20
    assert set(statuses) <= {502, 503}, set(statuses)  # the engines' 503 or the gateway's
    print(f"client requests {sent}, backend attempts {attempts}")
    # Every 503 is retryable, yet the retry budget and token bucket keep the extra
    # load the failing backends see within 20 % of what the clients send.
    assert attempts <= 1.2 * sent, (attempts, sent)
