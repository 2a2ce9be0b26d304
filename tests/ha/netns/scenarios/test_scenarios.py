"""The failure scenarios of a highly available deployment, on emulated hosts, under load.

Every scenario runs while the SDK's client (given both gateway URLs) sends chat requests,
and records its figures (requests sent, client errors, times) for the session summary
and docs/reliability.md. The deployment is described in ``conftest.py``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

ELECTION_TIMEOUT_S = 0.5


def _etcd_leader(ha: Any) -> Any:
    for member in ha.members:
        status = httpx.post(f"{member.client_url}/v3/maintenance/status", json={}, timeout=2)
        body = status.json()
        if body.get("leader") and body["leader"] == body["header"]["member_id"]:
            return member
    raise AssertionError("no etcd member says it leads")


def _management_write(ha: Any, url: str, attempt: int) -> bool:
    """Register and unregister a canary engine through ``url``; whether both worked."""
    headers = {"authorization": f"Bearer {ha.admin_token}"}
    engine_id = f"canary-{attempt}"
    address = ha.agents["host1"].host.address
    try:
        answer = httpx.post(
            f"{url}/v1/management/engines/register",
            json={"model": "canary", "url": f"http://{address}:8999", "id": engine_id},
            headers=headers,
            timeout=5,
        )
        if answer.status_code != 201:
            return False
        httpx.post(
            f"{url}/v1/management/engines/stop",
            json={"engine_id": engine_id, "drain": False},
            headers=headers,
            timeout=5,
        ).raise_for_status()
    except httpx.HTTPError:
        return False
    return True


def _identity(ha: Any, agent: str) -> dict[str, tuple[Any, ...]]:
    """The agent's engines: id -> (pid, incarnation, restarts)."""
    return {
        e["id"]: (e["pid"], e["incarnation"], e["restarts"])
        for e in ha.engines().values()
        if e["agent_id"] == agent and e["model"] == ha.model
    }


def test_killing_the_etcd_leader_fails_no_request_and_writes_resume_within_the_election(
    ha: Any,
) -> None:
    victim = _etcd_leader(ha)
    with ha.load() as load:
        load.wait_for_requests(30)
        killed = time.monotonic()
        victim.kill()
        attempt = 0
        while not _management_write(ha, ha.gateway_urls[attempt % 2], attempt):
            attempt += 1
            time.sleep(0.05)
        resumed_s = time.monotonic() - killed
        load.wait_for_requests(30)
    errors = load.errors()
    ha.record(
        "kill -9 the etcd leader",
        requests=load.sent,
        errors=len(errors),
        writes_resumed_s=round(resumed_s, 2),
        failed_writes=attempt,
    )
    assert errors == []
    assert resumed_s <= ELECTION_TIMEOUT_S + 2.0


def test_killing_one_gateway_of_two_fails_no_request_of_a_client_given_both(ha: Any) -> None:
    victim = ha.gateways["gw1"]  # the first URL the clients prefer
    with ha.load() as load:
        load.wait_for_requests(30)
        victim.kill()
        load.wait_for_requests(60)
        restarted = time.monotonic()
        victim.start()
        ha.wait_ready(victim)
        ha.wait_tables(ha.engine_ids, 30)
        back_s = time.monotonic() - restarted
        load.wait_for_requests(30)
    errors = load.errors()
    ha.record(
        "kill -9 one gateway of two",
        requests=load.sent,
        errors=len(errors),
        restarted_gateway_routing_s=round(back_s, 2),
    )
    assert errors == []


@dataclass(frozen=True)
class _Avoidance:
    """What one gateway did about the killed engine, from its ``/metrics``."""

    ejected: bool
    """The engine is out of this gateway's rotation now (passive ejection)."""
    ejections: float
    """Times this gateway ejected it (a failed half-open probe ejects it again)."""
    retries: float
    """Requests this gateway retried on another engine (a failed attempt on the engine)."""


def _avoidance(ha: Any, gateway: Any, engine_id: str) -> _Avoidance:
    return _Avoidance(
        ejected=ha.metric(gateway, "sage_gateway_backend_ejected", backend=engine_id) == 1,
        ejections=ha.metric(gateway, "sage_gateway_ejections_total", backend=engine_id),
        retries=ha.metric(gateway, "sage_gateway_retries_total", model=ha.model),
    )


def test_all_etcd_members_down_routing_goes_on_and_writes_get_503(ha: Any) -> None:
    engines = ha.engines()
    victim = next(e for e in engines.values() if e["agent_id"] == "host1")
    gateways = list(ha.gateways.values())
    with ha.load() as load:
        load.wait_for_requests(30)
        for member in ha.members:
            member.kill()
        down = time.monotonic()
        degraded_s = ha.wait_for(
            lambda: not any(ha.readyz(g)["control_plane_reachable"] for g in gateways),
            15,
            "gateways degraded",
        )
        refused = httpx.post(
            f"{ha.gateway_urls[1]}/v1/management/engines/register",
            json={"model": "canary", "url": "http://10.77.0.1:8999"},
            headers={"authorization": f"Bearer {ha.admin_token}"},
            timeout=10,
        )
        # An engine dies while etcd is down and stays dead until the outage ends. Its agent
        # is frozen first (SIGSTOP to the agent's process group; each engine runs in its
        # own): left running, it would restart the engine at the same address 2 s later and
        # a half-open probe would find it healthy, which would prove nothing about
        # avoidance. Frozen, it changes nothing else: its reports could not reach the
        # store anyway.
        agent = ha.agents["host1"]
        agent.send(signal.SIGSTOP)
        try:
            os.kill(victim["pid"], signal.SIGKILL)
            killed = time.monotonic()
            ejected_s = ha.wait_for(
                lambda: any(_avoidance(ha, g, victim["id"]).ejected for g in gateways),
                15,
                "the killed engine ejected",
                poll=0.1,
            )
            time.sleep(1.0)  # requests already on their way to it when it was ejected end
            at_ejection = [_avoidance(ha, g, victim["id"]) for g in gateways]
            while time.monotonic() - down < ha.outage_s:
                assert all(ha.table(url) == ha.engine_ids for url in ha.gateway_urls)
                time.sleep(0.5)
            at_end = [_avoidance(ha, g, victim["id"]) for g in gateways]
            during = len(load.errors())
        finally:
            agent.send(signal.SIGCONT)
        back = time.monotonic()
        for member in ha.members:
            member.start()
        ha.wait_for(
            lambda: all(ha.readyz(g)["control_plane_reachable"] for g in gateways),
            60,
            "gateways reaching etcd again",
        )
        ha.wait_tables(ha.engine_ids, 60)
        converged_s = time.monotonic() - back
        # The agent, thawed, restarts the engine; the gateways learn it from the store.
        ha.wait_for(ha.views_agree, 60, "gateways showing the restarted engine")
        ha.wait_tables(ha.engine_ids, 60)
        restarted_s = time.monotonic() - back
        load.wait_for_requests(30)
    errors = load.errors()
    # Once a gateway ejected the engine, it sends it only half-open probes (one per
    # ejection period), each failing and ejecting it again: every later attempt on it is
    # one retry elsewhere, matched by one more ejection.
    out = [(a, b) for a, b in zip(at_ejection, at_end, strict=True) if a.ejected]
    attempts_after = sum(b.retries - a.retries for a, b in out)
    probes = sum(b.ejections - a.ejections for a, b in out)
    ha.record(
        f"all etcd members down for {ha.outage_s:g} s",
        requests=load.sent,
        errors=len(errors),
        errors_during_outage=during,
        degraded_after_s=round(degraded_s, 2),
        write_status=refused.status_code,
        killed_engine_ejected_after_s=round(ejected_s, 2),
        gateways_ejecting=len(out),
        attempts_on_it_after_ejection=int(attempts_after),
        half_open_probes=int(probes),
        still_ejected_at_end=all(b.ejected for _, b in out),
        converged_after_restart_s=round(converged_s, 2),
        killed_engine_back_s=round(restarted_s, 2),
        dead_during_outage_s=round(back - killed, 1),
    )
    assert errors == []
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "control_plane_unavailable"
    assert refused.headers["retry-after"]
    assert out, "no gateway ejected the killed engine"
    for before, after in out:
        assert after.ejected  # still out of rotation when the outage ended
        assert after.retries - before.retries <= after.ejections - before.ejections
    assert not any(a["lost"] for a in ha.agents_seen().values())


def test_an_agent_cut_from_the_control_plane_but_not_the_gateways_keeps_serving(
    ha: Any,
) -> None:
    agent = ha.agents["host1"]
    before = _identity(ha, "host1")
    control_plane = [h for h in ha.network.hosts if h.name.startswith("etcd") or h.name == "cp"]
    lost_seen = 0
    with ha.load() as load:
        load.wait_for_requests(30)
        ha.network.partition([agent.host], control_plane)
        cut = time.monotonic()
        while time.monotonic() - cut < ha.partition_s:
            for url in ha.gateway_urls:
                lost_seen += bool(ha.agents_seen(url)["host1"]["lost"])
                assert ha.table(url) == ha.engine_ids
            time.sleep(0.5)
        ha.network.heal()
        load.wait_for_requests(30)
    errors = load.errors()
    after = _identity(ha, "host1")
    models = [e["id"] for e in ha.engines().values() if e["model"] == ha.model]
    ha.record(
        f"agent host cut from the control plane for {ha.partition_s:g} s",
        requests=load.sent,
        errors=len(errors),
        host_lost_samples=lost_seen,
        restarts=sum(r for _, _, r in after.values()) - sum(r for _, _, r in before.values()),
        engines=len(models),
    )
    assert errors == []
    assert lost_seen == 0
    assert after == before  # same processes, no restart
    assert sorted(models) == sorted(ha.engine_ids)  # nothing started elsewhere


def test_an_isolated_agent_host_leaves_routing_within_the_lease_and_comes_back(
    ha: Any,
) -> None:
    agent = ha.agents["host2"]
    before = _identity(ha, "host2")
    remaining = ha.engine_ids - set(before)
    with ha.load() as load:
        load.wait_for_requests(30)
        agent.host.isolate()
        left_s = ha.wait_tables(remaining, ha.lease_ttl_s + 10)
        time.sleep(1.0)
        agent.host.rejoin()
        back_s = ha.wait_tables(ha.engine_ids, 30)
        load.wait_for_requests(30)
    after = _identity(ha, "host2")
    ha.record(
        "agent host cut from everything",
        requests=load.sent,
        errors=len(load.errors()),
        left_routing_s=round(left_s, 2),
        lease_ttl_s=ha.lease_ttl_s,
        back_after_heal_s=round(back_s, 2),
        restarted=after != before,
    )
    # The lease ends one TTL after the agent's last renewal, which precedes the cut by
    # less than a heartbeat; etcd looks for expired leases every 500 ms.
    assert left_s <= ha.lease_ttl_s + 1.0
    assert after == before  # the same processes: back without a restart


def test_200_ms_between_hosts_makes_nothing_flap(ha: Any) -> None:
    for host in ha.network.hosts:
        host.degrade(delay_s=0.1)  # 100 ms out of every host: 200 ms between any two
    transitions = 0
    try:
        with ha.load() as load:
            load.wait_for_requests(20, timeout=60)
            seen = {url: ha.table(url) for url in ha.gateway_urls}
            started = time.monotonic()
            while time.monotonic() - started < ha.flap_watch_s:
                for url in ha.gateway_urls:
                    table = ha.table(url)
                    transitions += len(table ^ seen[url])
                    seen[url] = table
                time.sleep(0.25)
            lost = [a for a, s in ha.agents_seen().items() if s["lost"]]
    finally:
        ha.network.heal()
    errors = load.errors()
    ha.record(
        "200 ms between hosts",
        requests=load.sent,
        errors=len(errors),
        delayed_by="tc netem" if ha.network.support.netem else "wire.py",
        watched_s=ha.flap_watch_s,
        lease_ttl_s=ha.lease_ttl_s,
        routing_transitions=transitions,
    )
    assert transitions == 0
    assert lost == []
    assert errors == []


def test_a_leader_change_during_a_start_starts_exactly_one_engine(ha: Any) -> None:
    leader = ha.leader()
    via = next(g for g in ha.gateways.values() if g is not leader)
    spec = {"model": "m2", "runtime": "simulated", "simulator": {"output_tokens": 4}}
    answer: list[httpx.Response] = []

    def start() -> None:
        answer.append(
            httpx.post(
                f"{via.url}/v1/management/engines/start",
                json={"spec": spec},
                headers={"authorization": f"Bearer {ha.admin_token}"},
                timeout=60,
            )
        )

    with ha.load() as load:
        load.wait_for_requests(20)
        leader.send(signal.SIGSTOP)  # the leader stops answering: its lease runs out
        stopped = time.monotonic()
        try:
            thread = threading.Thread(target=start)
            thread.start()
            thread.join(timeout=90)
            took_s = time.monotonic() - stopped
            new_leader = ha.leader(among=[c for c in ha.coordinators if c is not leader])
        finally:
            leader.send(signal.SIGCONT)  # a deposed leader wakes up: its writes are fenced
        time.sleep(ha.leader_ttl_s + 1.0)
        load.wait_for_requests(20)
    assert answer, "engines/start got no answer"
    assert answer[0].status_code == 202, answer[0].text
    engine_id = answer[0].json()["id"]
    started = [
        e["id"]
        for agent in ha.agents.values()
        for e in ha.agent_engines(agent)
        if e["model"] == "m2" and e["state"] != "STOPPED"
    ]
    ha.record(
        "leader change during engines/start",
        requests=load.sent,
        errors=len(load.errors()),
        start_answered_s=round(took_s, 2),
        engines_started=len(started),
        leader=f"{leader.name} -> {new_leader.name}",
    )
    httpx.post(
        f"{via.url}/v1/management/engines/stop",
        json={"engine_id": engine_id, "drain": False},
        headers={"authorization": f"Bearer {ha.admin_token}"},
        timeout=60,
    ).raise_for_status()
    assert started == [engine_id]
    assert new_leader is not leader
    assert load.errors() == []
