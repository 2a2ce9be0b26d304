"""A gateway before its first routing table: 503 + ``Retry-After`` and ``/readyz`` 503,
never 404 (issue 16.3: a restarted gateway said ``404 model_not_found`` for a moment, and
SDKs take a 404 as final)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from sage.unified.gateway.app import GatewayRuntime, create_gateway_app
from sage.unified.gateway.routing import RoutingState
from sage.unified.gateway.settings import GatewaySettings
from sage.unified.sdk.models import Backend, EngineKind, RoutingTable

pytestmark = pytest.mark.anyio

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the gateway's data plane is asyncio


class HeldSource:
    """A table source whose first table arrives only when the test says so (a control
    plane still starting, or a coordinator not answered yet)."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {
            "reachable": False,
            "last_update": None,
            "error": None,
            "mode": "remote",
        }
        self.deliver = anyio.Event()
        self.delivered = anyio.Event()

    def unavailable_models(self) -> frozenset[str]:
        return frozenset()

    def settling(self) -> bool:
        return False

    async def run(self, state: RoutingState) -> None:
        await self.deliver.wait()
        backend = Backend(id="e1", model="m", kind=EngineKind.LLM, url="http://127.0.0.1:9")
        state.update(RoutingTable(revision=1, backends=[backend]))
        self.status.update(reachable=True, last_update=time.time())
        self.delivered.set()
        await anyio.sleep_forever()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, HeldSource]]:
    app = create_gateway_app(
        GatewaySettings(backends=["http://127.0.0.1:9"], sage_home=tmp_path, api_keys=[])
    )
    runtime: GatewayRuntime = app.state.runtime
    source = runtime.source = HeldSource()
    transport = httpx.ASGITransport(app=app)
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        yield client, source


async def test_before_the_first_table_requests_get_503_retry_after_never_404(
    gateway: tuple[httpx.AsyncClient, HeldSource],
) -> None:
    client, source = gateway
    for model in ("m", "never-served"):
        answer = await client.post("/v1/chat/completions", json={**CHAT, "model": model})
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "no_backend_available"
        assert int(answer.headers["retry-after"]) >= 1
    # The model card too: a client checking a model before it chats must not be told it
    # does not exist.
    card = await client.get("/v1/models/never-served")
    assert card.status_code == 503, card.text
    assert int(card.headers["retry-after"]) >= 1
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "starting"

    source.deliver.set()
    with anyio.fail_after(10):
        await source.delivered.wait()
    assert (await client.get("/readyz")).status_code == 200
    # Once the table is in, a model nobody serves is a 404 (it will not come back).
    unknown = await client.post("/v1/chat/completions", json={**CHAT, "model": "never-served"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert (await client.get("/v1/models/never-served")).status_code == 404
    assert (await client.get("/v1/models/m")).status_code == 200
