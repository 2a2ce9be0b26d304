"""The declarative fleet on emulated hosts: a lost agent host's replicas are replaced on
the other host while SDK clients of both gateways see no error.

The deployment of ``conftest.py`` (three etcd members, two gateways and a standalone
coordinator on that store, agents on ``host1`` and ``host2``) gets a deployment of
:data:`REPLICAS` simulated replicas of its own model (:data:`MODEL`, distinct from the
fixture's engines of ``m``, which the assertions leave out), spread over both hosts.
Once both gateways route the replicas (before, the model does not exist), the SDK's
client sends chats for it through both gateway URLs, and every process of ``host2``'s namespace (its agent
and its engines) is SIGKILLed at once, as a host that dies. The lost host's replicas
come back on ``host1`` once the lease (4 s here) has lapsed plus one engine start; a
sampler asks the agents what they run the whole time, and never sees more replicas than
the spec.

Simulated engines take no GPU and each host's namespace has its own engine ports
(8900-8999): ``host1`` holds its two engines of ``m`` and all four replicas with room to
spare, so the deployment keeps its four replicas after the loss. The cluster fixture is
per module: the dead host does not reach the scenarios of ``test_scenarios.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any

import httpx

from sage.unified.sdk.client import GatewayManagementClient
from sage.unified.sdk.fleet import DeploymentSpec, Placement, UpdateStrategy
from sage.unified.sdk.models import EngineSpec, Runtime, SimulatorOptions

DEPLOYMENT = "fleet"
MODEL = "fleet-m"
REPLICAS = 4
MAX_SURGE = 1
RECONCILE_INTERVAL_S = 2.0
"""The control plane's default ``reconcile_interval_s`` (the fixture keeps it)."""
MARGIN_S = 10.0
"""Beyond the lease TTL and one engine start (as measured for the first four): the etcd
lease check (500 ms), one reconcile pass, the agent's report and the gateways' watch take
about a second together; the rest is room for a loaded two-core machine."""


def _spec() -> DeploymentSpec:
    return DeploymentSpec(
        name=DEPLOYMENT,
        replicas=REPLICAS,
        engine=EngineSpec(
            model=MODEL,
            runtime=Runtime.SIMULATED,
            simulator=SimulatorOptions(ttft_ms=2, itl_ms=1, output_tokens=4),
            drain_timeout_s=30,
        ),
        placement=Placement(spread=True),
        strategy=UpdateStrategy(max_surge=MAX_SURGE, max_unavailable=0),
    )


def _ready(ha: Any) -> dict[str, str]:
    """The deployment's READY replicas, engine id -> agent id, as the control plane says."""
    status = ha.admin_get(ha.gateway_urls[0], f"/v1/management/deployments/{DEPLOYMENT}")
    return {
        r["engine_id"]: r["agent_id"] for r in status["status"]["replicas"] if r["state"] == "READY"
    }


def _routed(ha: Any, expected: set[str]) -> bool:
    """Both gateways route exactly ``expected`` for :data:`MODEL`."""
    for url in ha.gateway_urls:
        backends = ha.admin_get(url, "/v1/management/backends")["backends"]
        if {b["id"] for b in backends if b["model"] == MODEL} != expected:
            return False
    return True


class ReplicaSampler:
    """Counts, every ``period_s``, the deployment's replicas that run (any state but
    STOPPED) on the hosts in :attr:`hosts`, asking each agent itself."""

    def __init__(self, ha: Any, period_s: float = 0.2) -> None:
        self._ha = ha
        self._period_s = period_s
        self.hosts = dict(ha.agents)
        self.counts: list[int] = []
        self.missed = 0
        """Samples skipped because an agent did not answer in time."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReplicaSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def forget(self, name: str) -> None:
        """Stop asking the agent ``name`` (the dict is replaced: the thread reads it)."""
        self.hosts = {n: agent for n, agent in self.hosts.items() if n != name}

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            try:
                running = [
                    e
                    for agent in self.hosts.values()
                    for e in self._ha.agent_engines(agent)
                    if (e.get("spec") or {}).get("deployment") == DEPLOYMENT
                    and e["state"] != "STOPPED"
                ]
            except httpx.HTTPError:
                self.missed += 1
                continue
            self.counts.append(len(running))


def _kill_host(host: Any) -> int:
    """SIGKILL every process in ``host``'s namespace, again until none is left (one forked
    meanwhile included); returns how many were killed."""
    killed: set[int] = set()
    for _ in range(50):
        listed = subprocess.run(
            ["ip", "netns", "pids", host.namespace], capture_output=True, text=True, timeout=10
        )
        pids = {int(pid) for pid in listed.stdout.split()}
        if not pids:
            return len(killed)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.add(pid)
        time.sleep(0.05)
    raise AssertionError(f"processes left in {host.name}'s namespace: {sorted(pids)}")


def test_a_lost_host_s_replicas_are_replaced_on_the_other_within_the_lease_and_a_start(
    ha: Any,
) -> None:
    ready: dict[str, str] = {}

    def ready_on(*hosts: str) -> bool:
        ready.clear()
        ready.update(_ready(ha))
        return sorted(ready.values()) == sorted(hosts)

    with ReplicaSampler(ha) as sampler:
        with GatewayManagementClient(ha.gateway_urls, ha.admin_token) as management:
            applied = time.monotonic()
            management.apply_deployment(_spec())
        spread = ["host1", "host2"] * (REPLICAS // 2)
        ha.wait_for(lambda: ready_on(*spread), 90, "replicas READY spread over both", 0.1)
        first = dict(ready)
        startup_s = time.monotonic() - applied
        ha.wait_for(lambda: _routed(ha, set(first)), 30, "both gateways routing the replicas")
        victims = {e for e, agent in first.items() if agent == "host2"}
        host2 = ha.agents["host2"]
        with ha.load(model=MODEL) as load:
            load.wait_for_requests(30)
            sampler.forget("host2")  # its processes are gone from here on (checked below)
            killed = time.monotonic()
            killed_processes = _kill_host(host2.host)
            assert host2.proc is not None
            host2.proc.wait(timeout=10)
            bound_s = ha.lease_ttl_s + startup_s + MARGIN_S
            only_host1 = ["host1"] * REPLICAS
            ha.wait_for(lambda: ready_on(*only_host1), bound_s + 30, "replacements READY", 0.1)
            replaced_s = time.monotonic() - killed
            replaced = dict(ready)
            ha.wait_for(lambda: _routed(ha, set(replaced)), 30, "gateways routing them")
            routed_s = time.monotonic() - killed
            load.wait_for_requests(60)
            time.sleep(2 * RECONCILE_INTERVAL_S)  # two passes more: nothing else starts
            settled = _ready(ha)
    errors = load.errors()
    ha.record(
        f"kill -9 an agent host holding {len(victims)} of {REPLICAS} deployment replicas",
        requests=load.sent,
        errors=len(errors),
        first_ready_after_apply_s=round(startup_s, 2),
        processes_killed=killed_processes,
        replaced_ready_s=round(replaced_s, 2),
        routed_s=round(routed_s, 2),
        lease_ttl_s=ha.lease_ttl_s,
        bound_s=round(bound_s, 1),
        max_replicas_sampled=max(sampler.counts),
        samples=len(sampler.counts),
        missed_samples=sampler.missed,
    )
    assert errors == []
    assert not set(replaced) & victims
    assert replaced_s <= bound_s
    # Never above the spec (let alone spec + surge); the sampler did see all four running.
    assert max(sampler.counts) == REPLICAS
    assert len(sampler.counts) >= 20
    assert settled == replaced  # the same four, nothing started twice
    running = [
        e
        for e in ha.agent_engines(ha.agents["host1"])
        if (e.get("spec") or {}).get("deployment") == DEPLOYMENT and e["state"] != "STOPPED"
    ]
    assert sorted(e["id"] for e in running) == sorted(replaced)
