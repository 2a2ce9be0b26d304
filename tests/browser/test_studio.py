"""Studio in a real browser against a real gateway, agent and simulated engines."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
from playwright.sync_api import Page, expect

from sage.unified.sdk.models import AgentReport, EngineInfo, EngineState, GpuInfo, Runtime

ADMIN = {"authorization": "Bearer studio-admin-token"}
pytestmark = pytest.mark.slow


def _engines(url: str) -> list[dict[str, Any]]:
    data: dict[str, Any] = httpx.get(
        f"{url}/v1/management/engines", headers=ADMIN, timeout=10
    ).json()
    return list(data["engines"])


def _start_engine_api(url: str, model: str, **simulator: Any) -> str:
    spec = {"model": model, "runtime": "simulated", "simulator": simulator}
    response = httpx.post(
        f"{url}/v1/management/engines/start", json={"spec": spec}, headers=ADMIN, timeout=30
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _open(page: Page, url: str, tab: str = "fleet") -> None:
    page.goto(f"{url}/studio/#{tab}")


def test_start_an_engine_chat_rename_delete_and_drain(
    studio_gateway, page: Page, login: Callable[..., None], shoot: Callable[..., Any]
) -> None:
    url = studio_gateway.url
    _open(page, url)
    login(page)
    expect(page.locator("#hosts article")).to_have_count(1)

    # Start an engine from the form and watch it turn READY.
    page.locator("#start-model").fill("demo-chat")
    page.get_by_label("Runtime").select_option("simulated")
    page.get_by_role("button", name="Start engine").click()
    expect(page.locator("#activity li").first).to_contain_text("READY at", timeout=60_000)
    row = page.locator("#engines-table tbody tr", has_text="demo-chat")
    expect(row.locator("td").nth(2)).to_have_text("READY")
    expect(row.locator("td.yes")).to_have_text("yes")
    shoot(page, "fleet-engine-ready")

    # Chat, streamed, in a new conversation.
    slow = _start_engine_api(url, "slow-chat", itl_ms=60, output_tokens=400)
    page.get_by_role("tab", name="Playground").click()
    expect(page.locator("#chat-model option", has_text="demo-chat")).to_have_count(1)
    page.locator("#chat-model").select_option("demo-chat")
    page.get_by_label("Message").fill("What does the SAGE gateway do?")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("#chat-log .bubble.assistant .text").last
    expect(page.locator("#chat-stats")).to_contain_text("tokens/s")
    expect(page.locator("#chat-stats")).to_contain_text("Time to first token")
    assert answer.inner_text().strip() not in {"", "…"}
    item = page.locator("#session-list li.session").first
    expect(item).to_contain_text("What does the SAGE gateway do?")
    shoot(page, "playground", docs=True)

    # Stop a generation: what arrived is kept, marked incomplete.
    for _ in range(100):
        if any(e["id"] == slow and e["state"] == "READY" for e in _engines(url)):
            break
        time.sleep(0.2)
    page.locator("#chat-model").select_option("slow-chat")
    page.get_by_label("Message").fill("Tell me a long story.")
    page.get_by_role("button", name="Send").click()
    expect(answer.or_(page.locator("#chat-log .bubble.assistant .text").last)).not_to_have_text("…")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#chat-log .bubble.assistant").last).to_contain_text("(stopped)")
    sessions = httpx.get(f"{url}/sessions", timeout=10).json()["sessions"]
    stored = httpx.get(f"{url}/sessions/{sessions[0]['id']}", timeout=10).json()["messages"]
    assert stored[-1]["metadata"]["incomplete"] is True

    # Rename, then delete the conversation.
    item.get_by_role("button", name=re.compile("^Rename")).click()
    page.get_by_label("New title").fill("Gateway questions")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#session-list")).to_contain_text("Gateway questions")
    assert (
        httpx.get(f"{url}/sessions", timeout=10).json()["sessions"][0]["title"]
        == "Gateway questions"
    )
    delete = page.locator("#session-list li.session").first.get_by_role(
        "button", name=re.compile("^Delete")
    )
    delete.click()
    expect(delete).to_have_text("Confirm delete")
    delete.click()
    expect(page.locator("#session-list")).to_contain_text("No conversations yet")
    assert httpx.get(f"{url}/sessions", timeout=10).json()["sessions"] == []

    # Routing: per-engine rates from /metrics, the chats above among the recent decisions.
    page.get_by_role("tab", name="Routing").click()
    expect(page.locator("#rates-table")).to_contain_text("demo-chat")
    expect(page.locator("#routing-decisions table")).to_contain_text("demo-chat")
    shoot(page, "routing", docs=True)

    # Drain the engine and watch it leave routing.
    page.get_by_role("tab", name="Fleet").click()
    row.get_by_role("button", name=re.compile("^Drain")).click()
    expect(page.locator("#activity li").first).to_contain_text("STOPPED", timeout=60_000)
    expect(page.locator("#activity li").first).to_have_attribute("data-status", "done")
    table = httpx.get(f"{url}/v1/management/backends", headers=ADMIN, timeout=10).json()
    assert "demo-chat" not in {b["model"] for b in table["backends"]}
    expect(row.locator("td.no")).to_have_text("no")


def test_actions_and_the_fleet_are_refused_without_the_token(
    studio_gateway, page: Page, login: Callable[..., None], shoot: Callable[..., Any]
) -> None:
    _open(page, studio_gateway.url)
    expect(page.locator("#fleet-summary")).to_contain_text("The fleet cannot be read")
    expect(page.locator("#gateway-status")).to_have_text("token needed")
    page.locator("#start-model").fill("demo-chat")
    page.get_by_label("Runtime").select_option("simulated")
    page.get_by_role("button", name="Start engine").click()
    result = page.locator("#start-result")
    expect(result).to_contain_text("refused")
    expect(result).to_contain_text("Bearer")  # the API's own message
    expect(page.locator("#activity li").first).to_have_attribute("data-status", "failed")
    shoot(page, "refused-without-token")
    assert _engines(studio_gateway.url) == []

    login(page, "wrong-token")
    expect(page.locator("#fleet-summary")).to_contain_text("token not valid")


def test_bad_input_gets_a_clear_message(
    studio_gateway, page: Page, login: Callable[..., None]
) -> None:
    _open(page, studio_gateway.url)
    login(page)
    page.get_by_role("button", name="Start engine").click()
    expect(page.locator("#start-result")).to_contain_text("Model is required")
    page.locator("#start-model").fill("../../etc/passwd")
    page.locator("#start-gpus").fill("zero")
    page.get_by_role("button", name="Start engine").click()
    expect(page.locator("#start-result")).to_contain_text("GPUs must be indices")
    page.locator("#start-gpus").fill("")
    page.get_by_role("button", name="Start engine").click()
    expect(page.locator("#start-result")).to_contain_text("refused")
    expect(page.locator("#start-result")).to_contain_text("model")
    page.get_by_role("tab", name="Playground").click()
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#chat-stats")).to_contain_text("Type a message first")


def test_hosts_show_gpus_and_which_engine_holds_them(
    studio_gateway, page: Page, login: Callable[..., None], shoot: Callable[..., Any]
) -> None:
    url = studio_gateway.url
    gib = 2**30
    engine = EngineInfo(
        id="qwen-7b-a1b2",
        model="Qwen/Qwen2.5-7B-Instruct",
        runtime=Runtime.VLLM,
        host="127.0.0.1",
        port=8900,
        url="http://127.0.0.1:8900",
        state=EngineState.STARTING,
        reason="loading weights",
        agent_id="gpu-node-1",
        gpu_ids=[0],
        created_at=time.time() - 90,
    )
    report = AgentReport(
        agent_id="gpu-node-1",
        host="127.0.0.1",
        url="http://127.0.0.1:9",
        version="0.1.0",
        incarnation=1,
        sent_at=time.time(),
        engines=[engine],
        gpus=[
            GpuInfo(
                index=0,
                name="NVIDIA H100 80GB HBM3",
                memory_total_bytes=80 * gib,
                memory_used_bytes=71 * gib,
                utilization_percent=87,
                temperature_c=64,
            ),
            GpuInfo(
                index=1,
                name="NVIDIA H100 80GB HBM3",
                memory_total_bytes=80 * gib,
                memory_used_bytes=1 * gib,
                utilization_percent=0,
                temperature_c=35,
            ),
        ],
    )
    answer = httpx.put(
        f"{url}/v1/agents/gpu-node-1",
        content=msgspec.json.encode(report),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    _start_engine_api(url, "demo-chat")
    _open(page, url)
    login(page)
    card = page.locator("article", has_text="gpu-node-1")
    expect(card).to_contain_text("H100")
    expect(card.locator("tbody tr").first).to_contain_text("71.0 GiB / 80.0 GiB")
    expect(card.locator("tbody tr").first).to_contain_text("qwen-7b-a1b2")
    expect(card.locator("tbody tr").nth(1)).to_contain_text("free")
    expect(page.locator("#engines-table")).to_contain_text("loading weights")
    expect(page.locator("#engines-table tbody tr", has_text="demo-chat")).to_contain_text("READY")
    shoot(page, "fleet", docs=True, full_page=True)


def test_an_unreachable_gateway_is_said_clearly(
    studio_gateway, page: Page, login: Callable[..., None], shoot: Callable[..., Any]
) -> None:
    _open(page, studio_gateway.url)
    login(page)
    expect(page.locator("#gateway-status")).to_have_text("live")
    studio_gateway.proc.send_signal(signal.SIGTERM)
    studio_gateway.proc.wait(timeout=30)
    banner = page.locator("#banner")
    expect(banner).to_be_visible(timeout=30_000)
    expect(banner).to_contain_text("The gateway is unreachable")
    expect(page.locator("#gateway-status")).to_have_text("gateway unreachable")
    shoot(page, "unreachable")


def test_keyboard_and_a_phone_width(
    studio_gateway, page: Page, login: Callable[..., None], shoot: Callable[..., Any]
) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    _open(page, studio_gateway.url)
    login(page)
    expect(page.locator("#hosts article")).to_have_count(1)
    fleet_tab = page.get_by_role("tab", name="Fleet")
    fleet_tab.focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Routing")).to_be_focused()
    expect(page.locator("#panel-routing")).to_be_visible()
    page.keyboard.press("End")
    expect(page.locator("#panel-playground")).to_be_visible()
    for tab in ("Fleet", "Routing", "Playground"):
        page.get_by_role("tab", name=tab).click()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{tab} is wider than a phone screen by {overflow}px"
    page.get_by_role("tab", name="Fleet").click()
    shoot(page, "phone", docs=True)
    # Every form control has a label a screen reader can read.
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input, select, textarea')]
             .filter((el) => !el.labels?.length && !el.getAttribute('aria-label'))
             .map((el) => el.id || el.name)"""
    )
    assert unlabelled == []


def test_routing_decisions_are_shown_when_the_gateway_records_them(
    studio_gateway, page: Page, login: Callable[..., None]
) -> None:
    # A decision of every kind the table shows (the route is stubbed: a retried pick).
    decisions = {
        "decisions": [
            {
                "at": time.time(),
                "request_id": "r1",
                "model": "demo-chat",
                "engine_id": "demo-chat-1",
                "policy": "cache_aware",
                "reason": "longest prefix match (512 tokens)",
                "attempts": 2,
                "retried": True,
                "status": 200,
                "prompt_tokens": 600,
                "available_tokens": 512,
                "captured_tokens": 512,
                "delivered_tokens": 500,
                "ttft_s": 0.042,
            }
        ]
    }

    def fulfil(route: Any) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(decisions))

    page.route("**/v1/management/routing/decisions*", fulfil)
    _open(page, studio_gateway.url, "routing")
    login(page)
    table = page.locator("#routing-decisions table")
    expect(table).to_contain_text("longest prefix match (512 tokens)")
    expect(table).to_contain_text("2 (retried)")
    expect(table).to_contain_text("512/512")
    expect(table).to_contain_text("42 ms")
    page.locator("#filter-model").fill("demo-chat")
    with page.expect_request(lambda request: "model=demo-chat" in request.url):
        page.get_by_role("button", name="Filter").click()
