"""The protocol executor: failover between URLs by retry class, error mapping, translation."""

from __future__ import annotations

import httpx
import pytest

from sage.unified.sdk.client import (
    AsyncCaller,
    GatewayUnreachableError,
    ServerError,
    SyncCaller,
    UnprocessableEntityError,
)
from sage.unified.sdk.client._errors import SageClientError
from sage.unified.sdk.models import EngineSpec, encode
from sage.unified.sdk.protocol import AgentApi, ControlPlaneApi

ENGINE = {"id": "e1", "model": "m"}


class Hosts:
    """A MockTransport handler: each host refuses, answers 503 or answers 200."""

    def __init__(self, **behaviour: str) -> None:
        self.behaviour = behaviour
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.seen.append(host)
        what = self.behaviour[host]
        if what == "refuse":
            raise httpx.ConnectError("refused", request=request)
        if what == "reset":
            raise httpx.ReadError("reset", request=request)
        if what == "503":
            return httpx.Response(503, json={"error": {"message": "busy", "type": "x"}})
        if what == "422":
            return httpx.Response(
                422, json={"error": {"message": "bad", "type": "invalid_request_error"}}
            )
        return httpx.Response(200, content=encode(ENGINE))


def caller(hosts: Hosts, *names: str) -> SyncCaller:
    return SyncCaller([f"http://{n}:1" for n in names], transport=httpx.MockTransport(hosts))


def test_a_refused_connection_moves_on_even_for_a_start() -> None:
    hosts = Hosts(a="refuse", b="ok")
    info = caller(hosts, "a", "b").call(AgentApi.START_ENGINE, EngineSpec(model="m"))
    assert info.id == "e1"
    assert hosts.seen == ["a", "b"]


@pytest.mark.parametrize("failure", ["503", "reset"])
def test_a_start_that_may_have_arrived_is_never_sent_again(failure: str) -> None:
    hosts = Hosts(a=failure, b="ok")
    with pytest.raises(SageClientError):
        caller(hosts, "a", "b").call(AgentApi.START_ENGINE, EngineSpec(model="m"))
    assert hosts.seen == ["a"]


@pytest.mark.parametrize("failure", ["503", "reset", "refuse"])
def test_safe_calls_move_on_to_the_next_url(failure: str) -> None:
    hosts = Hosts(a=failure, b="ok")
    assert caller(hosts, "a", "b").call(AgentApi.ENGINE, path={"engine_id": "e1"}).id == "e1"
    assert hosts.seen == ["a", "b"]


def test_a_client_error_is_final_and_failed_urls_go_last() -> None:
    hosts = Hosts(a="422", b="ok")
    c = caller(hosts, "a", "b")
    with pytest.raises(UnprocessableEntityError, match="bad"):
        c.call(AgentApi.ENGINE, path={"engine_id": "e1"})
    assert hosts.seen == ["a"]
    down = Hosts(a="503", b="ok")
    c = caller(down, "a", "b")
    c.call(AgentApi.ENGINE, path={"engine_id": "e"})
    c.call(AgentApi.ENGINE, path={"engine_id": "e"})
    assert down.seen == ["a", "b", "b"]  # a failed recently: b first


def test_every_url_failing_raises_the_last_error() -> None:
    with pytest.raises(GatewayUnreachableError, match="http://b:1"):
        caller(Hosts(a="refuse", b="refuse"), "a", "b").call(ControlPlaneApi.ENGINES)
    with pytest.raises(ServerError):
        caller(Hosts(a="503", b="503"), "a", "b").call(ControlPlaneApi.ENGINES)


class Mine(Exception):
    pass


@pytest.mark.anyio
async def test_translate_error_hook() -> None:
    hosts = Hosts(a="refuse")
    c = AsyncCaller(
        "http://a:1",
        transport=httpx.MockTransport(hosts),
        translate_error=lambda error: Mine(str(error)),
    )
    with pytest.raises(Mine, match="cannot reach") as info:
        await c.call(AgentApi.ENGINES)
    assert isinstance(info.value.__cause__, GatewayUnreachableError)
    await c.aclose()


@pytest.mark.parametrize(
    ("failure", "timed_out", "connect_failed"),
    [
        (httpx.ConnectError("refused"), False, True),
        (httpx.ReadTimeout("no answer"), True, False),
        (httpx.ConnectTimeout("no SYN-ACK"), True, False),
        (httpx.RemoteProtocolError("cut"), False, False),
    ],
)
def test_an_unreachable_url_says_whether_it_hung_or_refused(
    failure: httpx.TransportError, timed_out: bool, connect_failed: bool
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    c = SyncCaller("http://a:1", transport=httpx.MockTransport(fail))
    with pytest.raises(GatewayUnreachableError) as info:
        c.call(ControlPlaneApi.ENGINES)
    assert (info.value.timed_out, info.value.connect_failed) == (timed_out, connect_failed)
    assert info.value.__cause__ is failure
