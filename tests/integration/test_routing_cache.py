"""cache_aware routing through a real gateway to simulated engines with prefix caches.

A multi-turn conversation must return to the engine that holds it (the engines report
the cached prompt tokens), and the gateway's cache-capture ledger must record exactly
what the engines reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from sage.unified.sdk.client import GatewayManagementClient

SAGE = str(Path(sys.executable).parent / "sage")
SYSTEM = " ".join(f"rule{i}" for i in range(300))
SIM_FLAGS: dict[str, object] = {
    "enable_prompt_tokens_details": True,
    "block_size": 16,
    "kv_blocks": 512,
    "max_model_len": 4096,
}


def stream(
    client: httpx.Client, path: str, body: dict[str, Any]
) -> tuple[httpx.Response, str, dict[str, Any]]:
    """Send a streamed request asking for usage and the routing decision."""
    body = {**body, "model": "chat", "stream": True, "stream_options": {"include_usage": True}}
    text: list[str] = []
    usage: dict[str, Any] = {}
    with client.stream("POST", path, json=body, headers={"X-Sage-Route": "1"}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            for choice in event["choices"]:
                text.append(choice.get("delta", {}).get("content") or choice.get("text") or "")
            if event.get("usage"):
                usage = event["usage"]
    return response, "".join(text), usage


def cached(usage: dict[str, Any]) -> int:
    return int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))


def engine_hits(urls: list[str]) -> float:
    total = 0.0
    for url in urls:
        for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
            if line.startswith("vllm:prefix_cache_hits_total"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_conversation_stays_with_its_cache_and_the_ledger_agrees(
    start_simulator: Callable[..., Any],
    start_gateway: Callable[..., Any],
    models_ready: Callable[[str, set[str]], None],
) -> None:
    sims = [start_simulator("chat", **SIM_FLAGS) for _ in range(3)]
    flags = [flag for sim in sims for flag in ("--backend", sim.url)]
    gateway = start_gateway(*flags, "--policy", "cache_aware")
    models_ready(gateway.url, {"chat"})
    engines: list[str] = []
    reported: list[int] = []
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for turn in range(4):
            messages.append({"role": "user", "content": f"question number {turn} " * 20})
            response, answer, usage = stream(
                client, "/v1/chat/completions", {"messages": messages, "max_tokens": 8}
            )
            engines.append(response.headers["x-sage-backend"])
            reported.append(cached(usage))
            decision = response.headers["x-sage-route-decision"]
            assert f"engine={engines[-1]}" in decision
            if turn:
                assert "reason=prefix" in decision
            messages.append({"role": "assistant", "content": answer})
        # Completions: a prompt sharing a long prefix with an earlier one.
        prompt = " ".join(f"doc{i}" for i in range(400))
        first, _, _ = stream(client, "/v1/completions", {"prompt": prompt, "max_tokens": 4})
        second, _, usage = stream(
            client, "/v1/completions", {"prompt": prompt + " and more", "max_tokens": 4}
        )
        assert second.headers["x-sage-backend"] == first.headers["x-sage-backend"]
        assert cached(usage) >= 384
        reported += [0, cached(usage)]
    assert len(set(engines)) == 1
    assert reported[0] == 0
    # Each turn reuses the previous prompt and answer: the cached prefix grows.
    assert 0 < reported[1] < reported[2] < reported[3]
    with GatewayManagementClient(gateway.url) as admin:
        decisions = admin.routing_decisions(model="chat")
        stats = admin.routing_stats()
    assert [d.delivered_tokens for d in reversed(decisions)] == reported
    assert all(d.policy == "cache_aware" and d.status == 200 for d in decisions)
    (model,) = stats.models
    assert model.total.delivered_tokens == sum(reported) == engine_hits([s.url for s in sims])
    assert model.total.captured_tokens > 0

    # The operator's view: `sage llm routing` (a table, or JSON for scripts).
    shown = subprocess.run(
        [SAGE, "llm", "routing", "--url", gateway.url, "--decisions", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "policy cache_aware" in shown.stdout
    assert engines[0] in shown.stdout
    assert "prefix" in shown.stdout
    as_json = subprocess.run(
        [SAGE, "llm", "routing", "--url", gateway.url, "--json", "--model", "chat"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["stats"]["models"][0]["total"]["delivered_tokens"] == sum(reported)
