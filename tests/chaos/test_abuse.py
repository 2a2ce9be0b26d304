"""Abuse of the control plane through a real gateway (embedded coordinator + agent)
with admin and agent tokens configured: nothing unsafe is registered or spawned,
and every rejected control action leaves an audit entry."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import psutil
import pytest

pytestmark = pytest.mark.slow

ADMIN = {"authorization": "Bearer admin-secret"}
AGENT = {"authorization": "Bearer agent-secret"}
TOKENS = {
    "SAGE_GATEWAY_ADMIN_TOKENS": "admin-secret",
    "SAGE_GATEWAY_AGENT_TOKENS": "agent-secret",
    "SAGE_AGENT_TOKEN": "agent-secret",
}


def _table(url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/v1/management/backends", headers=ADMIN, timeout=5)
    assert response.status_code == 200, response.text
    backends: list[dict[str, Any]] = response.json()["backends"]
    return backends


def _engines(url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/v1/management/engines", headers=ADMIN, timeout=5)
    assert response.status_code == 200, response.text
    engines: list[dict[str, Any]] = response.json()["engines"]
    return engines


def _audit(url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/v1/management/audit?limit=1000", headers=ADMIN, timeout=5)
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


def _children(pid: int) -> set[int]:
    return {p.pid for p in psutil.Process(pid).children(recursive=True)}


def _assert_openai_error(response: httpx.Response) -> None:
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}


def test_registration_abuse_is_rejected_and_audited(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = start_gateway(env=TOKENS)
    url = f"{gateway.url}/v1/management/engines/register"

    anonymous = httpx.post(url, json={"model": "m", "url": "http://127.0.0.1:9"}, timeout=5)
    assert anonymous.status_code == 401
    _assert_openai_error(anonymous)
    wrong = httpx.post(
        url,
        json={"model": "m", "url": "http://127.0.0.1:9"},
        headers={"authorization": "Bearer admin-secreT"},
        timeout=5,
    )
    assert wrong.status_code == 401

    for target in (
        "http://169.254.169.254/",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "http://[fe80::1]:80",
        "gopher://127.0.0.1:70/",
        # Zero-padded IPv4 parts (issue 15.1): the system resolver reads them as octal, httpx
        # refused them in the prober, and one such record stopped the control plane.
        "http://127.0.0.01:9/",
        "http://0177.0.0.1:9/",
        "http://10.0.0.05:9/",
    ):
        response = httpx.post(url, json={"model": "evil", "url": target}, headers=ADMIN, timeout=10)
        assert 400 <= response.status_code < 500, (target, response.status_code, response.text)
        _assert_openai_error(response)
    assert _table(gateway.url) == []
    assert [e for e in _engines(gateway.url) if e["model"] == "evil"] == []
    entries = _audit(gateway.url)
    rejected = [
        e
        for e in entries
        if e["action"] == "engine.register" and e["result"].startswith("rejected")
    ]
    assert len(rejected) >= 8, entries
    assert any(e["who"] == "unauthenticated" for e in entries), entries
    assert httpx.get(f"{gateway.url}/readyz", timeout=5).status_code == 200


def _raw_status(url: str, request: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):  # "Connection: close": the gateway closes
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_an_authorization_sent_only_as_a_chunked_trailer_is_401(start_gateway) -> None:  # type: ignore[no-untyped-def]
    # Issue 15.9: trailer fields were merged into the request's headers, so a key that
    # only arrived after the body authenticated.
    gateway = start_gateway(env={**TOKENS, "SAGE_GATEWAY_API_KEYS": "client-key"})
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
    ).encode()
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n"
    trailer = b"Authorization: Bearer client-key\r\n\r\n"
    status, answer = _raw_status(
        gateway.url, head + b"Trailer: Authorization\r\n\r\n" + chunked + trailer
    )
    assert status == 401, answer
    assert json.loads(answer)["error"]["code"] == "invalid_api_key"
    # The same request with the key in its head gets past the key check (to "no such model").
    status, answer = _raw_status(
        gateway.url, head + b"Authorization: Bearer client-key\r\n\r\n" + chunked + b"\r\n"
    )
    assert status == 404, answer


def test_agent_reports_about_other_hosts_or_ports_are_rejected(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = start_gateway(env=TOKENS)
    base = {
        "agent_id": "intruder",
        "host": "127.0.0.1",
        "url": "http://127.0.0.1:1",
        "incarnation": 1,
        "port_range": [8900, 8999],
    }
    engine = {"id": "stolen", "model": "tiny", "state": "READY"}
    bad_reports = [
        # An engine on another host than the reporting agent's.
        {**engine, "host": "10.1.2.3", "port": 8900, "url": "http://10.1.2.3:8900"},
        # A port outside the agent's declared range.
        {**engine, "host": "127.0.0.1", "port": 9500, "url": "http://127.0.0.1:9500"},
        # A URL that does not point at the engine's own host and port.
        {**engine, "host": "127.0.0.1", "port": 8900, "url": "http://169.254.169.254:8900"},
    ]
    for bad in bad_reports:
        response = httpx.put(
            f"{gateway.url}/v1/agents/intruder",
            json={**base, "engines": [bad]},
            headers=AGENT,
            timeout=5,
        )
        assert 400 <= response.status_code < 500, (bad, response.text)
        _assert_openai_error(response)
    no_token = httpx.put(
        f"{gateway.url}/v1/agents/intruder", json={**base, "engines": []}, timeout=5
    )
    assert no_token.status_code == 401
    admin_is_not_agent = httpx.put(
        f"{gateway.url}/v1/agents/intruder", json={**base, "engines": []}, headers=ADMIN, timeout=5
    )
    assert admin_is_not_agent.status_code == 401
    assert "stolen" not in {e["id"] for e in _engines(gateway.url)}
    assert _table(gateway.url) == []
    reports = [e for e in _audit(gateway.url) if e["action"] == "report"]
    assert len([e for e in reports if e["result"].startswith("rejected")]) >= 3, reports


def test_launch_abuse_spawns_nothing_and_is_audited(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = start_gateway(env=TOKENS)
    children_before = _children(gateway.proc.pid)
    url = f"{gateway.url}/v1/management/engines/start"
    simulated = {"model": "tiny", "runtime": "simulated"}
    bodies: list[dict[str, Any]] = [
        {"spec": {**simulated, "command": ["/bin/sh", "-c", "touch /tmp/pwned"]}},
        {"spec": {**simulated, "env": {"LD_PRELOAD": "/tmp/evil.so"}}},
        {"spec": {**simulated, "extra_args": ["--trust-remote-code"]}},
        {"spec": {**simulated, "model": "../../etc/passwd"}},
        {"spec": {**simulated, "model": "/srv/models/../../etc/passwd"}},
        {"spec": {**simulated, "model": "--trust-remote-code"}},
        {"spec": {**simulated, "served_model_name": "--api-key=x"}},
        {"spec": {**simulated, "model": "tiny; rm -rf /"}},
        {"spec": simulated, "command": "sh"},
    ]
    for body in bodies:
        response = httpx.post(url, json=body, headers=ADMIN, timeout=10)
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
        _assert_openai_error(response)
    for headers in ({}, {"authorization": "Bearer wrong"}, AGENT):
        response = httpx.post(url, json={"spec": simulated}, headers=headers, timeout=10)
        assert response.status_code == 401, response.text
    assert _engines(gateway.url) == []
    agent_engines = httpx.get(f"{gateway.url}/v1/management/agents", headers=ADMIN, timeout=5)
    assert [a["engines"] for a in agent_engines.json()["agents"]] == [0]
    assert _children(gateway.proc.pid) <= children_before
    entries = _audit(gateway.url)
    starts = [e for e in entries if e["action"] == "engine.start"]
    assert len([e for e in starts if e["result"].startswith("rejected")]) >= len(bodies), entries
    assert len([e for e in entries if e["who"] == "unauthenticated"]) >= 3, entries


def test_admin_token_only_setup_leaves_no_open_agent_api(start_gateway) -> None:  # type: ignore[no-untyped-def]
    # As docs/operations.md describes "admin token only": API keys and an admin token, no
    # agent token. The embedded agent's own port used to take launches with no token.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        agent_port = probe.getsockname()[1]
    env = {
        "SAGE_ADMIN_TOKEN": "admin-secret",
        "SAGE_API_KEYS": "key-1",
        "SAGE_GATEWAY_AGENT_PORT": str(agent_port),
    }
    gateway = start_gateway(env=env)
    agent = f"http://127.0.0.1:{agent_port}"
    spec = {"model": "tiny", "runtime": "simulated"}
    for method, path in (("POST", "/v1/engines"), ("DELETE", "/v1/engines/anything")):
        response = httpx.request(method, f"{agent}{path}", json=spec, timeout=10)
        assert response.status_code == 401, (method, path, response.text)
        _assert_openai_error(response)
    assert _engines(gateway.url) == []
    # Nor may anyone report an agent to the control plane: a report lists engines, and
    # those would be routed under any model name they claim.
    forged = {
        "agent_id": "forged",
        "host": "127.0.0.1",
        "url": "http://127.0.0.1:9",
        "engines": [
            {
                "id": "forged-engine",
                "model": "victim",
                "runtime": "simulated",
                "host": "127.0.0.1",
                "port": 9,
                "url": "http://127.0.0.1:9",
                "state": "READY",
                "agent_id": "forged",
            }
        ],
    }
    report = httpx.put(f"{gateway.url}/v1/agents/forged", json=forged, timeout=10)
    assert report.status_code == 401, report.text
    _assert_openai_error(report)
    assert "victim" not in {b["model"] for b in _table(gateway.url)}
    # The control plane still commands its own agent (it knows the agent's token).
    started = httpx.post(
        f"{gateway.url}/v1/management/engines/start", json={"spec": spec}, headers=ADMIN, timeout=15
    )
    assert started.status_code == 202, started.text
    assert [e["id"] for e in _engines(gateway.url)] == [started.json()["id"]]


def test_a_web_page_cannot_drive_a_token_less_gateway_or_agent(start_gateway) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        agent_port = probe.getsockname()[1]
    gateway = start_gateway(env={"SAGE_GATEWAY_AGENT_PORT": str(agent_port)})
    spec = json.dumps({"spec": {"model": "tiny", "runtime": "simulated"}})
    page = {"origin": "http://evil.example", "content-type": "text/plain"}
    # What a <form> or fetch(..., {mode: "no-cors"}) on any web page can send: no preflight.
    start = httpx.post(
        f"{gateway.url}/v1/management/engines/start", content=spec, headers=page, timeout=10
    )
    assert start.status_code == 403, start.text
    _assert_openai_error(start)
    launch = httpx.post(
        f"http://127.0.0.1:{agent_port}/v1/engines",
        content=json.dumps({"model": "tiny", "runtime": "simulated"}),
        headers=page,
        timeout=10,
    )
    assert launch.status_code == 403, launch.text
    rebound = httpx.get(
        f"{gateway.url}/v1/management/engines", headers={"host": "evil.example"}, timeout=10
    )
    assert rebound.status_code == 403, rebound.text
    not_json = httpx.post(
        f"{gateway.url}/v1/management/engines/start",
        content=spec,
        headers={"content-type": "text/plain"},
        timeout=10,
    )
    assert not_json.status_code == 415, not_json.text
    assert _engines(gateway.url) == []


def test_a_gateway_never_proxies_to_itself_or_in_a_loop(start_gateway) -> None:  # type: ignore[no-untyped-def]
    one = start_gateway()
    two = start_gateway()
    register = "/v1/management/engines/register"
    itself = httpx.post(f"{one.url}{register}", json={"model": "loop", "url": one.url}, timeout=10)
    assert itself.status_code == 422, itself.text
    assert "itself" in itself.json()["error"]["message"]
    # Each registers the other as an engine (an operator's mistake): one client request
    # used to become hundreds of proxied ones.
    for here, there in ((one, two), (two, one)):
        response = httpx.post(
            f"{here.url}{register}", json={"model": "loop", "url": there.url}, timeout=10
        )
        assert response.status_code == 201, response.text
    # Both must route "loop" before the request: while two has not probed one yet it answers
    # 503 (no ready backend) and one reports a plain 502 instead of the loop.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(
        "loop" in {b["model"] for b in _table(gateway.url)} for gateway in (one, two)
    ):
        time.sleep(0.1)
    answer = httpx.post(
        f"{one.url}/v1/chat/completions",
        json={"model": "loop", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert answer.status_code == 508, answer.text
    assert answer.json()["error"]["code"] == "loop_detected"
