"""A real Prometheus scrapes and parses the gateway's, the coordinator's and the agent's
``/metrics`` (issue 20.2).

What Prometheus 2.42 (Debian 12's package) does with the ``Content-Type`` the components
used to send, ``text/plain; version=1.0.0; charset=utf-8; charset=utf-8``: the scrape
neither fails nor warns. Go's ``mime.ParseMediaType`` refuses the duplicate parameter
("mime: duplicate parameter name"), and Prometheus 2 then falls back to its text parser and
says so only at debug level (``scrape.go``: "Invalid content type on scrape, using
prometheus parser as fallback."); the target stays ``up`` and its samples are stored.
Prometheus 3 fails such a scrape unless ``fallback_scrape_protocol`` is configured. So this
test runs Prometheus at debug level and fails on that line: it fails with the old header.
The strict media-type parser in ``tests/unit/test_metrics_content_type.py`` guards the
header itself; this test guards that a real Prometheus scrapes all three components,
parses their samples, and has nothing to say about their content type.

The gateway runs embedded (its own coordinator and local agent) with admin and agent
tokens: its ``/metrics`` stays public, so Prometheus scrapes it without credentials. The
standalone agent reports to a standalone coordinator; the agent's reads are open on a
loopback bind, and Prometheus sends the agent token anyway, as it must for an agent on a
network bind.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from sage.unified.sdk.states import EngineState

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "scrape-admin-token"
AGENT_TOKEN = "scrape-agent-token"
JOBS = ("gateway", "coordinator", "agent")
# Prometheus 2's note about a Content-Type it cannot parse (debug level), and any warning
# or error about a scrape (logfmt lines; Prometheus 3 writes the level in capitals).
CONTENT_TYPE_NOTE = "Invalid content type on scrape"
SCRAPE_PROBLEM = re.compile(r"level=(warn|error)\b.*scrape", re.IGNORECASE)
DEBUG_LINE = re.compile(r"level=debug\b", re.IGNORECASE)


def wait_until(check: Callable[[], str | None], timeout: float, what: str) -> None:
    """Poll ``check`` (``None`` once satisfied, else why not) for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    why: str | None = "not checked yet"
    while time.monotonic() < deadline:
        why = check()
        if why is None:
            return
        time.sleep(0.25)
    raise AssertionError(f"{what} not within {timeout} s: {why}")


def by_job(result: list[dict[str, Any]]) -> dict[str, float]:
    return {sample["metric"]["job"]: float(sample["value"][1]) for sample in result}


def test_prometheus_scrapes_and_parses_every_component(  # type: ignore[no-untyped-def]
    start_gateway, start_coordinator, start_agent, start_prometheus
) -> None:
    gateway = start_gateway(
        env={"SAGE_GATEWAY_ADMIN_TOKENS": ADMIN_TOKEN, "SAGE_GATEWAY_AGENT_TOKENS": AGENT_TOKEN}
    )
    coordinator = start_coordinator(
        env={
            "SAGE_COORDINATOR_ADMIN_TOKENS": ADMIN_TOKEN,
            "SAGE_COORDINATOR_AGENT_TOKENS": AGENT_TOKEN,
        }
    )
    agent = start_agent(
        coordinator.url,
        "scrape-agent",
        env={"SAGE_AGENT_TOKEN": AGENT_TOKEN, "SAGE_AGENT_HEARTBEAT_INTERVAL_S": "1"},
    )
    servers = {"gateway": gateway, "coordinator": coordinator, "agent": agent}
    prometheus = start_prometheus(
        {job: f"127.0.0.1:{server.port}" for job, server in servers.items()},
        bearer_tokens={"agent": AGENT_TOKEN},
    )

    def every_target_up() -> str | None:
        targets = prometheus.api("targets", state="active")["activeTargets"]
        health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}
        if any(health.get(job) != ("up", "") for job in JOBS):
            return f"targets: {health}"
        scraped = by_job(prometheus.query("scrape_samples_scraped"))
        if any(scraped.get(job, 0) <= 0 for job in JOBS):
            return f"scrape_samples_scraped: {scraped}"
        return None

    wait_until(every_target_up, 30, "every target up with samples")
    assert by_job(prometheus.query("up")) == {job: 1.0 for job in JOBS}

    # One metric of each component, with the value its state implies: parsed, not just fetched.
    assert by_job(prometheus.query('sage_gateway_control_plane_reachable{job="gateway"}')) == {
        "gateway": 1.0
    }

    def agent_live_at_coordinator() -> str | None:
        live = prometheus.query('sage_coordinator_agents{job="coordinator",state="live"}')
        return None if by_job(live) == {"coordinator": 1.0} else f"live agents: {live}"

    wait_until(agent_live_at_coordinator, 15, "the standalone agent live in the coordinator")
    heartbeat = prometheus.query('sage_agent_heartbeat_age_seconds{job="agent"}')
    assert len(heartbeat) == 1, heartbeat
    assert not math.isnan(float(heartbeat[0]["value"][1])), (
        "the agent never reached its coordinator"
    )
    states = {s["metric"]["state"] for s in prometheus.query('sage_agent_engines{job="agent"}')}
    assert states == {state.value for state in EngineState}

    log = prometheus.read_log()
    assert DEBUG_LINE.search(log), (
        "Prometheus logs no debug line: the check below would see nothing"
    )
    complaints = [
        line
        for line in log.splitlines()
        if CONTENT_TYPE_NOTE in line or SCRAPE_PROBLEM.search(line)
    ]
    assert not complaints, "Prometheus complained about a scrape:\n" + "\n".join(complaints)
