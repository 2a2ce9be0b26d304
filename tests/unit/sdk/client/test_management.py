"""Management and agent clients against httpx.MockTransport."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from sage.unified.sdk.client import (
    AgentClient,
    AsyncAgentClient,
    AsyncGatewayManagementClient,
    ConflictError,
    GatewayManagementClient,
    GatewayUnreachableError,
    InvalidResponseError,
    NotFoundError,
)
from sage.unified.sdk.models import (
    AgentSummary,
    EngineInfo,
    EngineKind,
    EngineSpec,
    GpuInfo,
    Runtime,
    encode,
)

ENGINE = EngineInfo(id="e1", model="m", runtime=Runtime.SIMULATED, url="http://h:8900")


class Recorder:
    def __init__(self, answers: dict[tuple[str, str], httpx.Response]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.get((request.method, request.url.path))
        if answer is None:
            return httpx.Response(
                404, json={"error": {"message": "no route", "type": "not_found_error"}}
            )
        return answer


def j(data: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status, content=encode(data), headers={"content-type": "application/json"}
    )


def test_management_client_calls_and_decodes() -> None:
    table = {
        "revision": 5,
        "backends": [{"id": "e1", "model": "m", "kind": "llm", "url": "http://h:8900"}],
    }
    rec = Recorder(
        {
            ("GET", "/v1/management/engines"): j({"engines": [ENGINE], "count": 1}),
            ("POST", "/v1/management/engines/start"): j(ENGINE, 202),
            ("POST", "/v1/management/engines/stop"): j(ENGINE),
            ("POST", "/v1/management/engines/register"): j(ENGINE, 201),
            ("GET", "/v1/management/backends"): j(table),
            ("GET", "/v1/management/gpu"): j(
                {"hosts": [{"agent_id": "a", "host": "h", "gpus": [GpuInfo(index=0)]}]}
            ),
            ("GET", "/v1/management/agents"): j(
                {"agents": [AgentSummary(agent_id="a", host="h", url="u")]}
            ),
            ("GET", "/health"): j({"status": "ok"}),
            ("GET", "/readyz"): j({"ready": False}, 503),
        }
    )
    with GatewayManagementClient(
        "http://gw:8000/v1", "admin-token", transport=httpx.MockTransport(rec)
    ) as c:
        assert [e.id for e in c.engines()] == ["e1"]
        spec = EngineSpec(model="m", runtime=Runtime.SIMULATED)
        assert c.start_engine(spec, host="a").id == "e1"
        assert json.loads(rec.requests[-1].content) == {
            "spec": json.loads(encode(spec)),
            "host": "a",
        }
        c.stop_engine("e1", drain=False, timeout_s=5)
        assert json.loads(rec.requests[-1].content) == {
            "engine_id": "e1",
            "drain": False,
            "timeout_s": 5,
        }
        c.register_engine("m", "http://h:9000", EngineKind.EMBEDDING)
        assert json.loads(rec.requests[-1].content)["kind"] == "embedding"
        assert c.backends(after=4, wait=1.5).revision == 5
        assert dict(rec.requests[-1].url.params) == {"after": "4", "wait": "1.5"}
        assert c.gpus()[0].gpus[0].index == 0
        assert c.agents()[0].agent_id == "a"
        assert c.health() == {"status": "ok"}
        assert c.readyz() is False
    assert all(r.headers["authorization"] == "Bearer admin-token" for r in rec.requests)


def test_management_errors() -> None:
    rec = Recorder(
        {
            ("POST", "/v1/management/engines/start"): j(
                {
                    "error": {
                        "message": "no GPU free",
                        "type": "conflict_error",
                        "code": "placement",
                    }
                },
                409,
            ),
            ("GET", "/v1/management/engines"): httpx.Response(200, content=b"<html>"),
        }
    )
    with GatewayManagementClient("http://gw:8000", transport=httpx.MockTransport(rec)) as c:
        with pytest.raises(ConflictError, match="no GPU free") as info:
            c.start_engine(EngineSpec(model="m"))
        assert info.value.error_code == "placement"
        with pytest.raises(InvalidResponseError):
            c.engines()


def test_unreachable_is_one_line() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused\nmore", request=request)

    c = GatewayManagementClient("http://gw:8000", transport=httpx.MockTransport(refuse))
    with c, pytest.raises(GatewayUnreachableError) as info:
        c.engines()
    assert info.value.url == "http://gw:8000"
    assert "\n" not in str(info.value)
    assert "Connection refused" in str(info.value)


def test_agent_client_paths() -> None:
    rec = Recorder(
        {
            ("GET", "/v1/engines"): j({"engines": [ENGINE]}),
            ("POST", "/v1/engines"): j(ENGINE, 201),
            ("POST", "/v1/engines/e1/drain"): j(ENGINE),
            ("DELETE", "/v1/engines/e1"): j(ENGINE),
            ("GET", "/v1/engines/e1/logs"): j({"engine_id": "e1", "lines": ["a", "b"]}),
            ("GET", "/v1/gpus"): j({"gpus": [GpuInfo(index=1)]}),
            ("GET", "/healthz"): j({"status": "ok"}),
            ("GET", "/readyz"): j({"ready": True}),
        }
    )
    with AgentClient("http://agent:8200", "t", transport=httpx.MockTransport(rec)) as c:
        assert c.engines()[0].model == "m"
        c.start_engine(EngineSpec(model="m"))
        assert json.loads(rec.requests[-1].content)["model"] == "m"
        c.drain("e1", wait=True, timeout_s=10)
        assert dict(rec.requests[-1].url.params) == {"wait": "true", "timeout_s": "10"}
        c.stop("e1")
        assert c.logs("e1", tail=2) == ["a", "b"]
        assert rec.requests[-1].url.params["tail"] == "2"
        assert c.gpus()[0].index == 1
        assert c.healthz() == {"status": "ok"}
        assert c.readyz() is True


@pytest.mark.anyio
async def test_async_clients() -> None:
    rec = Recorder(
        {
            ("GET", "/v1/management/engines"): j({"engines": [ENGINE]}),
            ("GET", "/v1/engines/e1/logs"): j({"engine_id": "e1", "lines": ["line1", "line2"]}),
        }
    )
    async with AsyncGatewayManagementClient(
        "http://gw:8000", transport=httpx.MockTransport(rec)
    ) as c:
        assert (await c.engines())[0].id == "e1"
    async with AsyncAgentClient("http://agent:8200", transport=httpx.MockTransport(rec)) as a:
        assert await a.logs("e1") == ["line1", "line2"]


@pytest.mark.anyio
async def test_gateway_readiness_gives_the_body_ready_or_not() -> None:
    body = {"mode": "embedded", "status": "starting", "backends": 0}
    for status, ready in ((200, True), (503, False)):
        rec = Recorder({("GET", "/readyz"): j(body, status)})
        with GatewayManagementClient("http://gw:8000", transport=httpx.MockTransport(rec)) as c:
            assert c.readiness() == (ready, body)
        rec = Recorder({("GET", "/readyz"): j(body, status)})
        async_client = AsyncGatewayManagementClient(
            "http://gw:8000", transport=httpx.MockTransport(rec)
        )
        assert await async_client.readiness() == (ready, body)
        await async_client.aclose()


def test_gateway_readiness_of_something_else_is_an_error() -> None:
    page = httpx.Response(200, text="<html>Welcome</html>")
    transport = httpx.MockTransport(Recorder({("GET", "/readyz"): page}))
    with (
        GatewayManagementClient("http://gw:8000", transport=transport) as c,
        pytest.raises(InvalidResponseError, match="not a JSON object"),
    ):
        c.readiness()
    with (
        GatewayManagementClient("http://gw:8000", transport=httpx.MockTransport(Recorder({}))) as c,
        pytest.raises(NotFoundError),
    ):
        c.readiness()
