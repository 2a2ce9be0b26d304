"""The simulator's prefix cache, prefill timing and KV events, as a real process on loopback."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import msgpack
import pytest
import zmq

BLOCK = 16


def _words(prefix: str, count: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(count))


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _chat(url: str, content: str, **extra: Any) -> tuple[dict[str, Any], float]:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 2, **extra}
    started = time.monotonic()
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    return response.json(), elapsed


def test_cache_hits_show_in_usage_metrics_and_time_to_first_token(
    start_simulator: Callable[..., Any],
) -> None:
    # 2,000 uncached prompt tokens at 2,000 tokens/s: one second of prefill.
    sim = start_simulator(
        "m", prefill_tokens_per_s=2000, enable_prompt_tokens_details=True, max_model_len=4096
    )
    content = _words("w", 1990)
    first, first_s = _chat(sim.url, content)
    prompt = first["usage"]["prompt_tokens"]
    assert 1990 < prompt < 2010
    assert first["usage"]["prompt_tokens_details"] is None  # nothing cached yet
    assert first_s >= 0.9

    second, second_s = _chat(sim.url, content)
    cached = (prompt - 1) // BLOCK * BLOCK
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": cached}
    assert second_s < first_s / 2
    assert _metric(sim.url, "vllm:prefix_cache_queries_total") == 2 * prompt
    assert _metric(sim.url, "vllm:prefix_cache_hits_total") == cached

    # The final usage chunk of a stream reports it too.
    body = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{sim.url}/v1/chat/completions", json=body, timeout=30) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: {")]
    usage = json.loads(events[-1].removeprefix("data: "))["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": cached}

    # A conversation's next turn reuses the blocks of the previous prompt and answer.
    answer = second["choices"][0]["message"]["content"]
    turn = {
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "and then?"},
        ],
        "max_tokens": 2,
    }
    third = httpx.post(f"{sim.url}/v1/chat/completions", json=turn, timeout=30).json()
    assert third["usage"]["prompt_tokens_details"]["cached_tokens"] >= cached


def test_queued_prefill_work_delays_time_to_first_token(
    start_simulator: Callable[..., Any],
) -> None:
    sim = start_simulator("m", prefill_tokens_per_s=2000, max_num_seqs=4)
    # Three different 1,000-token prompts at once: 0.5 s of prefill each, one at a time.
    with ThreadPoolExecutor(3) as pool:
        times = sorted(pool.map(lambda i: _chat(sim.url, _words(f"p{i}-", 990))[1], range(3)))
    assert times[0] >= 0.45
    assert times[2] >= 1.4
    assert _metric(sim.url, "vllm:num_requests_running") == 0.0
    assert _metric(sim.url, "vllm:kv_cache_usage_perc") == 0.0


def _block_hash(parent: int | None, tokens: list[int]) -> int:
    # The documented hash, written out independently of the simulator's code.
    data = (parent or 0).to_bytes(8, "big") + struct.pack(f">{len(tokens)}I", *tokens)
    return int.from_bytes(hashlib.sha256(data).digest(), "big") & (2**64 - 1)


class _Subscriber:
    def __init__(self) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt_string(zmq.SUBSCRIBE, "kv-events")
        self.port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.seqs: list[int] = []

    def receive(self, timeout_ms: int) -> list[dict[str, Any]]:
        """The events of every batch that arrives within ``timeout_ms``."""
        events: list[dict[str, Any]] = []
        while self.socket.poll(timeout_ms):
            topic, seq, payload = self.socket.recv_multipart()
            assert topic == b"kv-events"
            self.seqs.append(int.from_bytes(seq, "big"))
            ts, batch, rank = msgpack.unpackb(payload)
            assert isinstance(ts, float)
            assert rank == 0
            events.extend(batch)
            timeout_ms = 300
        return events

    def close(self) -> None:
        self.socket.close()
        self.context.term()


@pytest.fixture
def subscriber() -> Any:
    sub = _Subscriber()
    yield sub
    sub.close()


def test_kv_events_over_zmq(start_simulator: Callable[..., Any], subscriber: _Subscriber) -> None:
    config = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        # Not a wildcard, so the simulator connects to our socket (vLLM's rule).
        "endpoint": f"tcp://127.0.0.1:{subscriber.port}",
        "topic": "kv-events",
    }
    sim = start_simulator(
        "m", kv_events_config=json.dumps(config), kv_blocks=300, enable_control=True
    )
    # ZMQ drops what is published before the connection is up: warm up until events flow.
    deadline = time.monotonic() + 20
    warm = 0
    while not subscriber.receive(200):
        assert time.monotonic() < deadline, "no KV events arrived"
        warm += 1
        _chat(sim.url, _words(f"warm{warm}-", 40))
    assert httpx.post(f"{sim.url}/reset_prefix_cache", timeout=5).status_code == 200
    assert {"type": "AllBlocksCleared"} in subscriber.receive(2000)

    content = _words("e", 60)
    tokens = httpx.post(
        f"{sim.url}/tokenize",
        json={"messages": [{"role": "user", "content": content}]},
        timeout=5,
    ).json()["tokens"]
    _chat(sim.url, content)
    stored = [e for e in subscriber.receive(2000) if e["type"] == "BlockStored"]
    hashes = [h for e in stored for h in e["block_hashes"]]
    full = len(tokens) // BLOCK
    parent = None
    for index in range(full):
        parent = _block_hash(parent, tokens[index * BLOCK : (index + 1) * BLOCK])
        assert hashes[index] == parent
    first = stored[0]
    assert first["parent_block_hash"] is None
    assert first["token_ids"] == tokens[: len(first["block_hashes"]) * BLOCK]
    assert (first["block_size"], first["medium"]) == (BLOCK, "GPU")

    # 300 blocks: twenty more different 400-token prompts evict the oldest blocks.
    for i in range(20):
        _chat(sim.url, _words(f"fill{i}-", 390))
    events = subscriber.receive(2000)
    removed = {h for e in events if e["type"] == "BlockRemoved" for h in e["block_hashes"]}
    assert set(hashes) & removed
    assert subscriber.seqs == list(range(subscriber.seqs[0], subscriber.seqs[-1] + 1))
