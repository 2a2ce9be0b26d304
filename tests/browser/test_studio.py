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
AGENT = {"authorization": "Bearer studio-agent-token"}  # conftest.AGENT_TOKEN
pytestmark = pytest.mark.slow


def _engines(url: str) -> list[dict[str, Any]]:
    data: dict[str, Any] = httpx.get(
        f"{url}/v1/management/engines", headers=ADMIN, timeout=10
    ).json()
    return list(data["engines"])


def _agents(url: str) -> list[dict[str, Any]]:
    data: dict[str, Any] = httpx.get(
        f"{url}/v1/management/agents", headers=ADMIN, timeout=10
    ).json()
    return list(data["agents"])


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

    # Clear the conversation: it stays, with no messages.
    clear = item.get_by_role("button", name=re.compile("^Clear"))
    clear.click()
    expect(clear).to_have_text("Confirm clear")
    clear.click()
    # What the action did stays in view after the list refreshes.
    expect(page.locator("#sessions-status")).to_contain_text("Cleared")
    expect(page.locator("#sessions-status")).to_contain_text("1 conversation(s), 0 message(s)")
    expect(page.locator("#session-list li.session").first).to_contain_text("0 msg")
    expect(page.locator("#chat-log .bubble")).to_have_count(0)
    sessions = httpx.get(f"{url}/sessions", timeout=10).json()["sessions"]
    assert len(sessions) == 1
    assert httpx.get(f"{url}/sessions/{sessions[0]['id']}", timeout=10).json()["messages"] == []

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


def test_start_on_a_chosen_host_restart_and_stop(
    studio_gateway, page: Page, login: Callable[..., None]
) -> None:
    url = studio_gateway.url
    _open(page, url)
    login(page)
    expect(page.locator("#hosts article")).to_have_count(1)
    (agent,) = _agents(url)

    # Start on the host chosen in the form: the request names it, the engine runs there.
    page.locator("#start-model").fill("hosted-chat")
    page.get_by_label("Runtime").select_option("simulated")
    page.get_by_label("Host", exact=True).select_option(agent["agent_id"])
    with page.expect_request("**/v1/management/engines/start") as sent:
        page.get_by_role("button", name="Start engine").click()
    body: dict[str, Any] = json.loads(sent.value.post_data or "{}")
    assert body["host"] == agent["agent_id"]
    expect(page.locator("#activity li").first).to_contain_text("READY at", timeout=60_000)
    (first,) = _engines(url)
    assert first["agent_id"] == agent["agent_id"]
    assert first["state"] == "READY"

    # Restart (replaces the engine): the old one STOPPED, a new one READY on the same host.
    row = page.locator(f'#engines-table tbody tr[data-engine="{first["id"]}"]')
    restart = row.get_by_role("button", name=re.compile("^Restart"))
    restart.click()
    expect(restart).to_have_text("Confirm restart")
    restart.click()
    newest = page.locator("#activity li").first
    expect(newest).to_contain_text("Restart: start hosted-chat")
    expect(newest).to_contain_text("READY at", timeout=60_000)
    expect(newest).to_have_attribute("data-status", "done")
    expect(page.locator("#activity li").nth(1)).to_contain_text(f"Restart: stop {first['id']}")
    expect(page.locator("#activity li").nth(1)).to_have_attribute("data-status", "done")
    engines = {e["id"]: e for e in _engines(url)}
    assert engines[first["id"]]["state"] == "STOPPED"
    (second,) = [e for e in engines.values() if e["id"] != first["id"]]
    assert second["state"] == "READY"
    assert second["model"] == "hosted-chat"
    assert second["agent_id"] == agent["agent_id"]
    expect(row).to_have_attribute("data-state", "STOPPED")

    # Stop the new engine (no drain): STOPPED, out of routing.
    row = page.locator(f'#engines-table tbody tr[data-engine="{second["id"]}"]')
    expect(row).to_have_attribute("data-state", "READY")
    stop = row.get_by_role("button", name=re.compile("^Stop"))
    stop.click()
    expect(stop).to_have_text("Confirm stop")
    stop.click()
    newest = page.locator("#activity li").first
    expect(newest).to_contain_text(f"Stop {second['id']}")
    expect(newest).to_contain_text("STOPPED", timeout=60_000)
    expect(newest).to_have_attribute("data-status", "done")
    expect(row).to_have_attribute("data-state", "STOPPED")
    expect(row.locator("td.no")).to_have_text("no")
    assert {e["id"]: e["state"] for e in _engines(url)}[second["id"]] == "STOPPED"
    table = httpx.get(f"{url}/v1/management/backends", headers=ADMIN, timeout=10).json()
    assert table["backends"] == []


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
            GpuInfo(
                index=2,
                name="NVIDIA H100 80GB HBM3",
                memory_total_bytes=80 * gib,
                memory_used_bytes=1 * gib,
                utilization_percent=0,
                temperature_c=41,
                healthy=False,
                fault="XID 79: GPU has fallen off the bus",
            ),
        ],
    )
    answer = httpx.put(
        f"{url}/v1/agents/gpu-node-1",
        content=msgspec.json.encode(report),
        headers={"content-type": "application/json", **AGENT},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    cordon = httpx.post(f"{url}/v1/management/agents/gpu-node-1/cordon", headers=ADMIN, timeout=10)
    assert cordon.status_code == 200, cordon.text
    _start_engine_api(url, "demo-chat")
    local = next(a for a in _agents(url) if a["agent_id"] != "gpu-node-1")
    _open(page, url)
    login(page)
    card = page.get_by_role("article", name="Agent gpu-node-1")
    expect(card).to_contain_text("H100")
    expect(card.locator("h3")).to_contain_text("CORDONED")
    expect(card).to_contain_text("Cordoned: no new engines are placed here")
    expect(card.locator("dl.facts")).to_contain_text(re.compile(r"Version\s*0\.1\.0"))
    expect(card.locator("dl.facts")).to_contain_text(re.compile(r"Last report\s*\d+(s|m \d+s) ago"))
    held = card.locator("tbody tr").first
    expect(held).to_contain_text("71.0 GiB / 80.0 GiB")
    expect(held).to_contain_text("87 %")
    expect(held).to_contain_text("64 °C")
    expect(held).to_contain_text("qwen-7b-a1b2")
    free = card.locator("tbody tr").nth(1)
    expect(free).to_contain_text("35 °C")
    expect(free.locator("td").last).to_have_text("free")
    expect(free).not_to_contain_text("QUARANTINED")
    # A quarantined GPU is never shown as free, and says why.
    faulty = card.locator("tbody tr").nth(2)
    expect(faulty.locator(".badge")).to_have_text("QUARANTINED")
    expect(faulty).to_contain_text("Fault: XID 79: GPU has fallen off the bus")
    expect(faulty.locator("td").last).to_have_text("none (quarantined)")
    # The local agent: its lease counts down while it reports, with its version.
    live = page.get_by_role("article", name=f"Agent {local['agent_id']}")
    expect(live.locator("h3")).to_contain_text(re.compile(r"lease \d+s"))
    expect(live.locator("h3")).not_to_contain_text("CORDONED")
    expect(live.locator("dl.facts")).to_contain_text(f"Version{local['version']}")
    expect(page.locator("#engines-table")).to_contain_text("loading weights")
    expect(page.locator("#engines-table tbody tr", has_text="demo-chat")).to_contain_text("READY")
    shoot(page, "fleet", docs=True, full_page=True)

    # Draining the local host: its card says so.
    drained = httpx.post(
        f"{url}/v1/management/agents/{local['agent_id']}/drain", headers=ADMIN, timeout=30
    )
    assert drained.status_code == 200, drained.text
    expect(live.locator("h3")).to_contain_text("DRAINING")
    expect(live).to_contain_text("Draining: no new engines are placed here")


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
