"""What `sage gateway start|restart` shows while it waits for the gateway's /readyz."""

from __future__ import annotations

import httpx
import pytest

from sage.unified.cli.gateway import _not_ready_because
from sage.unified.sdk.client import GatewayManagementClient


def _client(answer: httpx.Response | Exception) -> GatewayManagementClient:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/readyz"
        if isinstance(answer, Exception):
            raise answer
        return answer

    return GatewayManagementClient("http://127.0.0.1:8000", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (httpx.Response(200, json={"mode": "embedded"}), None),
        (
            httpx.Response(503, json={"mode": "embedded", "status": "starting"}),
            "/readyz answered 503",
        ),
        (httpx.Response(404, text="<html>no</html>"), "/readyz answered 404"),
        (httpx.ConnectError("refused"), "not listening yet"),
        (httpx.ReadTimeout("slow"), "ReadTimeout: slow"),
    ],
)
def test_why_the_gateway_is_not_ready(answer: httpx.Response | Exception, why: str | None) -> None:
    with _client(answer) as client:
        assert _not_ready_because(client) == why
