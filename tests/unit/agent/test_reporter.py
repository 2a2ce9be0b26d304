"""Reporter: full snapshots, bearer token, backoff while the coordinator is down, resend."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import httpx
import msgspec
import pytest

from sage.unified.agent.reporter import Backoff, Reporter
from sage.unified.sdk.client import AsyncGatewayManagementClient
from sage.unified.sdk.models import AgentReport, EngineInfo

pytestmark = pytest.mark.anyio


def test_backoff_doubles_with_jitter_and_caps() -> None:
    top = Backoff(0.5, 10.0, rng=lambda: 1.0)
    assert [top.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    bottom = Backoff(0.5, 10.0, rng=lambda: 0.0)
    assert [bottom.next_delay() for _ in range(3)] == [0.25, 0.5, 1.0]
    top.reset()
    assert top.next_delay() == 0.5


class Coordinator:
    """A coordinator that is down for the first ``down`` calls."""

    def __init__(self, down: int = 0, interval: float = 3.0) -> None:
        self.down = down
        self.interval = interval
        self.calls: list[httpx.Request] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        if len(self.calls) <= self.down:
            if len(self.calls) % 2:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(503, json={"error": {"message": "starting", "type": "x"}})
        return httpx.Response(
            200, json={"lease_ttl_s": 10.0, "heartbeat_interval_s": self.interval, "revision": 1}
        )


def _reporter(coord: Coordinator, sleeps: list[float], engines: list[EngineInfo]) -> Reporter:
    async def sleep(seconds: float, wake: anyio.Event) -> None:
        sleeps.append(seconds)
        await anyio.lowlevel.checkpoint()

    client = AsyncGatewayManagementClient(
        "http://coord:8000/", "s3cret", transport=httpx.MockTransport(coord.handler)
    )
    return Reporter(
        client,
        "host a",
        lambda: AgentReport(
            agent_id="host a", host="127.0.0.1", url="http://127.0.0.1:8200", engines=list(engines)
        ),
        backoff=Backoff(0.5, 10.0, rng=lambda: 1.0),
        sleep=sleep,
    )


async def _run_until(reporter: Reporter, coord: Coordinator, calls: int) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(reporter.run)
        for _ in range(10_000):
            if len(coord.calls) >= calls:
                break
            await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()


async def test_reports_full_snapshot_with_token_and_follows_reply_interval() -> None:
    coord = Coordinator(interval=1.5)
    sleeps: list[float] = []
    engines = [EngineInfo(id="e-1", model="m")]
    reporter = _reporter(coord, sleeps, engines)
    await _run_until(reporter, coord, 2)
    request = coord.calls[0]
    assert request.method == "PUT"
    assert request.url == "http://coord:8000/v1/agents/host%20a"
    assert request.headers["authorization"] == "Bearer s3cret"
    sent = msgspec.json.decode(request.content, type=AgentReport)
    assert [e.id for e in sent.engines] == ["e-1"]
    assert reporter.reachable
    assert sleeps[0] == 1.5  # the reply's heartbeat interval replaces the default


async def test_backoff_while_down_then_full_resend() -> None:
    coord = Coordinator(down=7)
    sleeps: list[float] = []
    engines: list[EngineInfo] = []
    reporter = _reporter(coord, sleeps, engines)
    async with anyio.create_task_group() as tg:
        tg.start_soon(reporter.run)
        for _ in range(10_000):
            if len(coord.calls) >= 3:
                break
            await anyio.lowlevel.checkpoint()
        assert not reporter.reachable
        assert reporter.last_error is not None
        # The state changes while the coordinator is down ...
        engines.append(EngineInfo(id="e-2", model="m"))
        for _ in range(10_000):
            if len(coord.calls) >= 9:
                break
            await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    assert sleeps[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert reporter.failures == 7
    assert reporter.reachable
    # ... and the first accepted report carries it in full.
    first_ok = msgspec.json.decode(coord.calls[7].content, type=AgentReport)
    assert [e.id for e in first_ok.engines] == ["e-2"]
    assert sleeps[7] == 3.0  # back on the heartbeat schedule, backoff reset


async def _calls(coord: Coordinator, n: int) -> None:
    while len(coord.calls) < n:  # noqa: ASYNC110 - the mock handler is synchronous
        await anyio.sleep(0.001)


async def test_report_now_wakes_the_heartbeat_wait() -> None:
    coord = Coordinator(interval=3600.0)
    client = AsyncGatewayManagementClient(
        "http://coord", transport=httpx.MockTransport(coord.handler)
    )
    reporter = Reporter(
        client,
        "a",
        lambda: AgentReport(agent_id="a", host="h", url="u"),
        interval_s=3600.0,
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reporter.run)
            await _calls(coord, 1)
            reporter.report_now()
            await _calls(coord, 2)
            tg.cancel_scope.cancel()
    await client.aclose()
    assert "authorization" not in coord.calls[0].headers


class _Recorder:
    """A control-plane client that records each report's attempt timeout."""

    url = "http://a:8000,http://b:8000"

    def __init__(self, lease_ttl_s: float) -> None:
        self.lease_ttl_s = lease_ttl_s
        self.timeouts: list[float | None] = []

    async def report(
        self, agent_id: str, report: AgentReport, *, timeout_s: float | None = None
    ) -> object:
        from sage.unified.sdk.models import AgentReportReply

        self.timeouts.append(timeout_s)
        return AgentReportReply(lease_ttl_s=self.lease_ttl_s, heartbeat_interval_s=1.0, revision=1)


@pytest.mark.parametrize(("ttl", "bound"), [(4.0, 1.0), (10.0, 2.5), (60.0, 5.0), (1.0, 0.5)])
async def test_after_the_first_reply_no_url_may_take_more_than_a_quarter_of_the_lease(
    ttl: float, bound: float
) -> None:
    """A first URL that hangs (a paused coordinator) must not cost the agent its lease:
    the next URL is tried in time."""
    client = _Recorder(ttl)
    reporter = Reporter(
        client,  # type: ignore[arg-type]
        "a1",
        lambda: AgentReport(agent_id="a1", host="127.0.0.1", url="http://127.0.0.1:8200"),
    )
    assert await reporter.send_once()
    assert await reporter.send_once()
    assert client.timeouts == [None, bound]
