"""The reconciler's planner: scale, host loss, failures, placement, cordon, drain, rollouts.

Pure: each test builds a snapshot and checks the steps the planner asks for.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
import pytest

from sage.unified.coordinator._fleet_records import DeploymentRecord, applied, undone
from sage.unified.coordinator._placement import Candidate
from sage.unified.coordinator._reconcile_model import (
    HostView,
    Plan,
    PlanInputs,
    RemoveReplica,
    ReplicaView,
    StartReplica,
)
from sage.unified.coordinator._reconcile_plan import plan
from sage.unified.sdk.fleet import (
    DeploymentSpec,
    Placement,
    RolloutState,
    UpdateStrategy,
)
from sage.unified.sdk.models import EngineSpec, GpuInfo, Runtime
from sage.unified.sdk.states import EngineState

NOW = 1_000_000.0
GIB = 2**30
READY, STARTING, ERROR = EngineState.READY, EngineState.STARTING, EngineState.ERROR


def host(
    agent_id: str,
    *,
    lost: bool = False,
    cordoned: bool = False,
    draining: bool = False,
    labels: Mapping[str, str] | None = None,
    gpus: int | None = None,
    free_gib: float = 80.0,
) -> HostView:
    gpu_list = [
        GpuInfo(
            index=i,
            memory_total_bytes=80 * GIB,
            memory_free_bytes=int(free_gib * GIB),
        )
        for i in range(gpus or 0)
    ]
    candidate = Candidate(
        agent_id=agent_id,
        host=f"10.0.0.{ord(agent_id[-1]) % 250}",
        url=f"http://{agent_id}:8200",
        lost=lost,
        gpus=gpu_list,
        engines=0,
        cordoned=cordoned or draining,
    )
    return HostView(
        candidate, labels=labels or {}, cordoned=cordoned or draining, draining=draining
    )


def spec(
    replicas: int = 2,
    *,
    model: str = "m",
    runtime: Runtime = Runtime.SIMULATED,
    surge: int = 1,
    unavailable: int = 0,
    placement: Placement | None = None,
    startup_timeout_s: float = 900.0,
) -> DeploymentSpec:
    return DeploymentSpec(
        name="chat",
        engine=EngineSpec(model=model, runtime=runtime, startup_timeout_s=startup_timeout_s),
        replicas=replicas,
        placement=placement or Placement(),
        strategy=UpdateStrategy(max_surge=surge, max_unavailable=unavailable),
    )


def completed(s: DeploymentSpec) -> DeploymentRecord:
    """A deployment whose first rollout completed (revision 1 is stable)."""
    record, _ = applied(None, s, NOW - 1000)
    return msgspec.structs.replace(
        record,
        rollout=msgspec.structs.replace(
            record.rollout, state=RolloutState.COMPLETE, stable_revision=1
        ),
    )


def updated_to(record: DeploymentRecord, model: str, **changes: Any) -> DeploymentRecord:
    """``record`` after applying a new engine model (a new revision)."""
    new_spec = msgspec.structs.replace(
        record.spec, engine=msgspec.structs.replace(record.spec.engine, model=model), **changes
    )
    result, change = applied(record, new_spec, NOW - 500)
    assert change == "update"
    return result


_ids = itertools.count()


def replica(
    agent: str,
    state: EngineState | None = READY,
    *,
    revision: int = 1,
    engine_id: str | None = None,
    reason: str = "",
    since: float = NOW - 100,
    state_since: float | None = None,
    startup_timeout_s: float = 900.0,
    leaving: bool = False,
) -> ReplicaView:
    engine_id = engine_id or f"e{next(_ids)}"
    return ReplicaView(
        deployment="chat",
        revision=revision,
        replica=engine_id,
        engine_id=engine_id,
        agent_id=agent,
        state=state,
        since=since,
        state_since=since if state_since is None else state_since,
        reason=reason,
        startup_timeout_s=startup_timeout_s,
        leaving=leaving,
    )


def run(
    record: DeploymentRecord,
    hosts: list[HostView],
    replicas: list[ReplicaView],
    **kw: Any,
) -> Plan:
    ids: Iterator[int] = itertools.count()
    return plan(
        PlanInputs(
            deployments=[record],
            hosts=hosts,
            replicas=replicas,
            now=NOW,
            replica_ids=lambda: f"r{next(ids)}",
            **kw,
        )
    )


def starts(result: Plan) -> list[StartReplica]:
    return [a for a in result.actions if isinstance(a, StartReplica)]


def removals(result: Plan) -> list[RemoveReplica]:
    return [a for a in result.actions if isinstance(a, RemoveReplica)]


def conditions(result: Plan, reason: str) -> list[Any]:
    return [c for c in result.outcomes["chat"].status.conditions if c.reason == reason]


# ------------------------------------------------------------------------- scaling


def test_scale_up_starts_every_missing_replica_spread_over_the_hosts() -> None:
    result = run(completed(spec(4)), [host("a1"), host("a2")], [])
    placed = sorted(s.agent_id for s in starts(result))
    assert placed == ["a1", "a1", "a2", "a2"]
    first = starts(result)[0].spec
    assert (first.deployment, first.deployment_revision) == ("chat", 1)
    assert len({s.spec.replica for s in starts(result)}) == 4
    assert removals(result) == []


def test_without_spread_the_best_host_takes_them_all() -> None:
    # GPU engines go where the most memory is free, replicas of the deployment or not:
    gpu = run(
        completed(spec(2, runtime=Runtime.VLLM, placement=Placement(spread=False))),
        [host("a1", gpus=4), host("a2", gpus=1)],
        [],
    )
    assert [s.agent_id for s in starts(gpu)] == ["a1", "a1"]
    spread = run(
        completed(spec(2, runtime=Runtime.VLLM)), [host("a1", gpus=4), host("a2", gpus=1)], []
    )
    assert [s.agent_id for s in starts(spread)] == ["a1", "a2"]


def test_scale_down_drains_extras_from_the_most_crowded_host() -> None:
    reps = [replica("a1"), replica("a1"), replica("a2")]
    result = run(completed(spec(2)), [host("a1"), host("a2")], reps)
    assert starts(result) == []
    (gone,) = removals(result)
    assert gone.agent_id == "a1"
    assert gone.drain
    assert gone.reason == "scaled down"


def test_scale_down_removes_replicas_that_are_not_ready_first() -> None:
    reps = [replica("a1"), replica("a2", STARTING, engine_id="starting")]
    result = run(completed(spec(1)), [host("a1"), host("a2")], reps)
    (gone,) = removals(result)
    assert gone.engine_id == "starting"
    assert not gone.drain


def test_the_desired_count_met_means_nothing_to_do() -> None:
    result = run(completed(spec(2)), [host("a1"), host("a2")], [replica("a1"), replica("a2")])
    assert result.actions == []
    status = result.outcomes["chat"].status
    assert (status.desired, status.ready, status.updated, status.unavailable) == (2, 2, 2, 0)


# --------------------------------------------------------------- no duplicates, loss


def test_starts_not_reported_yet_count_so_nothing_starts_twice() -> None:
    pending = [replica("a1", None, since=NOW - 5), replica("a2", None, since=NOW - 5)]
    reps = [replica("a1"), replica("a2"), *pending]
    result = run(completed(spec(4)), [host("a1"), host("a2")], reps, pending_timeout_s=30)
    assert result.actions == []
    states = sorted(r.state for r in result.outcomes["chat"].status.replicas)
    assert states == ["PENDING", "PENDING", "READY", "READY"]


def test_a_start_never_reported_stops_counting_after_the_pending_timeout() -> None:
    reps = [replica("a1"), replica("a1", None, since=NOW - 60)]
    result = run(completed(spec(2)), [host("a1"), host("a2")], reps, pending_timeout_s=30)
    (start,) = starts(result)
    assert start.agent_id == "a2"


def test_replicas_of_a_lost_host_are_replaced_on_live_hosts() -> None:
    reps = [replica("a1"), replica("a1"), replica("a2"), replica("a2")]
    result = run(completed(spec(4)), [host("a1"), host("a2", lost=True)], reps)
    assert [s.agent_id for s in starts(result)] == ["a1", "a1"]
    assert removals(result) == []  # nothing is sent to a lost host
    condition_hosts = {h for c in result.outcomes["chat"].status.conditions for h in c.hosts}
    assert condition_hosts == set()


def test_nothing_is_done_while_the_control_plane_settles() -> None:
    result = run(completed(spec(4)), [host("a1")], [], settling=True)
    assert result.actions == []
    assert conditions(result, "settling")
    # Not even a failed replica is stopped, a rollout failed or a deletion finished.
    record = updated_to(completed(spec(1)), "m2")
    bad = replica("a1", ERROR, revision=2, reason="restarts exhausted")
    result = run(record, [host("a1")], [replica("a1"), bad], settling=True)
    assert (result.actions, result.rollouts) == ([], {})
    assert result.outcomes["chat"].status.rollout.state is RolloutState.PROGRESSING
    deleted = msgspec.structs.replace(completed(spec(1)), deleting=True)
    assert run(deleted, [host("a1")], [], settling=True).forget == []


# ------------------------------------------------------------------------ failures


def test_error_past_the_restart_budget_is_stopped_and_replaced() -> None:
    bad = replica("a1", ERROR, engine_id="bad", reason="restarts exhausted (5 restarts ...)")
    result = run(completed(spec(2)), [host("a1"), host("a2")], [bad, replica("a2")])
    (gone,) = removals(result)
    assert gone.engine_id == "bad"
    assert not gone.drain
    assert "restarts exhausted" in gone.reason
    assert len(starts(result)) == 1
    assert result.rollouts == {}  # a steady deployment's failure is no failed rollout


def test_an_engine_restarting_after_an_error_is_left_to_its_agent() -> None:
    restarting = replica("a1", ERROR, reason="exited with code 1", state_since=NOW - 5)
    result = run(completed(spec(2)), [host("a1"), host("a2")], [restarting, replica("a2")])
    assert result.actions == []


def test_error_for_longer_than_the_error_timeout_is_replaced() -> None:
    stuck = replica("a1", ERROR, engine_id="stuck", reason="not restarted", state_since=NOW - 700)
    result = run(completed(spec(1)), [host("a1"), host("a2")], [stuck], error_timeout_s=600)
    assert [r.engine_id for r in removals(result)] == ["stuck"]
    assert len(starts(result)) == 1


def test_a_replica_on_a_quarantined_gpu_is_replaced_at_once() -> None:
    held = replica("a1", ERROR, engine_id="held", reason="not restarted: GPU 0 is quarantined")
    result = run(completed(spec(1)), [host("a1"), host("a2")], [held])
    assert [r.engine_id for r in removals(result)] == ["held"]
    assert len(starts(result)) == 1


# ------------------------------------------------------------------------ placement


def test_impossible_placement_waits_and_says_why_per_host() -> None:
    record = completed(spec(2, placement=Placement(labels={"gpu": "h100"})))
    hosts = [host("a1", labels={"gpu": "a100"}), host("a2", lost=True), host("a3", cordoned=True)]
    result = run(record, hosts, [])
    assert result.actions == []
    (waiting,) = conditions(result, "no_placement")
    assert waiting.hosts == {
        "a1": "lacks label gpu=h100",
        "a2": "agent lost (lease expired)",
        "a3": "cordoned",
    }


def test_placement_honours_hosts_and_labels() -> None:
    record = completed(spec(2, placement=Placement(hosts=["a2", "a3"], labels={"zone": "x"})))
    hosts = [host("a1", labels={"zone": "x"}), host("a2", labels={"zone": "x"}), host("a3")]
    result = run(record, hosts, [])
    assert [s.agent_id for s in starts(result)] == ["a2", "a2"]


def test_gpu_capacity_is_claimed_within_one_pass() -> None:
    record = completed(spec(2, runtime=Runtime.VLLM))
    result = run(record, [host("a1", gpus=1)], [])
    assert [s.agent_id for s in starts(result)] == ["a1"]
    (waiting,) = conditions(result, "no_placement")
    assert "0 of 1 GPUs" in waiting.hosts["a1"]


def test_no_agent_at_all_is_no_placement() -> None:
    result = run(completed(spec(1)), [], [])
    (waiting,) = conditions(result, "no_placement")
    assert waiting.message == "no agent is registered"


def test_a_start_backing_off_waits_with_its_reason() -> None:
    result = run(completed(spec(1)), [host("a1")], [], start_blocked={"chat": "agent said 403"})
    assert result.actions == []
    assert conditions(result, "start_failed")[0].message == "agent said 403"


# ------------------------------------------------------------------- cordon, drain


def test_a_cordoned_host_keeps_its_replicas_but_takes_no_new_one() -> None:
    reps = [replica("a1"), replica("a1")]
    result = run(completed(spec(3)), [host("a1", cordoned=True), host("a2")], reps)
    assert removals(result) == []
    assert [s.agent_id for s in starts(result)] == ["a2"]


def test_drain_moves_replicas_with_a_new_one_ready_before_an_old_one_goes() -> None:
    hosts = [host("a1", draining=True), host("a2")]
    old = [replica("a1", engine_id="old1"), replica("a1", engine_id="old2")]
    first = run(completed(spec(2)), hosts, old)
    assert [s.agent_id for s in starts(first)] == ["a2"]  # surge 1
    assert removals(first) == []
    # The new replica is READY: one old one drains and the next new one starts.
    second = run(completed(spec(2)), hosts, [*old, replica("a2", engine_id="new1")])
    assert [r.engine_id for r in removals(second)] == ["old1"]
    assert removals(second)[0].drain
    assert removals(second)[0].reason == "moved off a draining host"
    assert [s.agent_id for s in starts(second)] == ["a2"]


def test_drain_with_nowhere_to_go_keeps_the_replicas_serving() -> None:
    old = [replica("a1"), replica("a1")]
    result = run(completed(spec(2)), [host("a1", draining=True)], old)
    assert result.actions == []
    assert conditions(result, "no_placement")[0].hosts == {"a1": "draining"}


# ------------------------------------------------------------------ rolling update


def test_rolling_update_surge_1_unavailable_0() -> None:
    record = updated_to(completed(spec(2, surge=1, unavailable=0)), "m2")
    hosts = [host("a1"), host("a2")]
    old = [replica("a1", engine_id="o1"), replica("a2", engine_id="o2")]
    first = run(record, hosts, old)
    assert removals(first) == []
    (start,) = starts(first)
    assert start.spec.model == "m2"
    assert start.spec.deployment_revision == 2
    # New one still STARTING: nothing more.
    new1 = replica(start.agent_id, STARTING, revision=2, engine_id="n1")
    assert run(record, hosts, [*old, new1]).actions == []
    # New one READY: one old drains, the second new one starts.
    new1 = replica(start.agent_id, READY, revision=2, engine_id="n1")
    third = run(record, hosts, [*old, new1])
    assert len(removals(third)) == 1
    assert removals(third)[0].drain
    assert len(starts(third)) == 1
    # Both new READY and the old ones gone: the rollout completes.
    done = run(record, hosts, [new1, replica("a2", revision=2, engine_id="n2")])
    assert done.actions == []
    assert done.rollouts["chat"].state is RolloutState.COMPLETE
    assert done.rollouts["chat"].stable_revision == 2


def test_rolling_update_surge_0_unavailable_1_drains_first() -> None:
    record = updated_to(completed(spec(2, surge=0, unavailable=1)), "m2")
    hosts = [host("a1"), host("a2")]
    old = [replica("a1", engine_id="o1"), replica("a2", engine_id="o2")]
    first = run(record, hosts, old)
    assert len(removals(first)) == 1
    assert len(starts(first)) == 1
    # The drained one is leaving; the new one starting: wait (1 unavailable already).
    leaving = replica(old[0].agent_id, READY, engine_id="o1", leaving=True)
    new1 = replica("a1", STARTING, revision=2, engine_id="n1")
    assert run(record, hosts, [leaving, old[1], new1]).actions == []


def test_rolling_update_surge_1_unavailable_1_moves_two_at_a_time() -> None:
    record = updated_to(completed(spec(2, surge=1, unavailable=1)), "m2")
    old = [replica("a1"), replica("a2")]
    result = run(record, [host("a1"), host("a2")], old)
    assert len(removals(result)) == 1
    assert len(starts(result)) == 2


def test_rolling_update_surge_0_unavailable_0_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot both be 0"):
        UpdateStrategy(max_surge=0, max_unavailable=0)


def test_a_failed_new_replica_fails_the_rollout_and_the_old_ones_stay() -> None:
    record = updated_to(completed(spec(2)), "m2")
    old = [replica("a1"), replica("a2")]
    bad = replica("a1", ERROR, revision=2, engine_id="n1", reason="restarts exhausted (5)")
    result = run(record, [host("a1"), host("a2")], [*old, bad])
    assert [(r.engine_id, r.drain) for r in removals(result)] == [("n1", False)]
    assert starts(result) == []
    failed = result.rollouts["chat"]
    assert failed.state is RolloutState.FAILED
    assert "n1" in failed.reason
    assert failed.stable_revision == 1
    # Recorded as failed: an old replica lost later is replaced from the stable revision.
    record = msgspec.structs.replace(record, rollout=failed)
    later = run(record, [host("a1"), host("a2", lost=True)], old)
    (start,) = starts(later)
    assert (start.spec.model, start.spec.deployment_revision) == ("m", 1)
    assert conditions(later, "rollout_failed")


def test_a_new_replica_not_ready_within_its_startup_allowance_fails_the_rollout() -> None:
    record = updated_to(completed(spec(1, startup_timeout_s=60)), "m2")
    slow = replica("a1", STARTING, revision=2, since=NOW - 61, startup_timeout_s=60)
    result = run(record, [host("a1")], [replica("a1"), slow])
    assert result.rollouts["chat"].state is RolloutState.FAILED
    assert "startup allowance" in result.rollouts["chat"].reason


def test_a_first_rollout_that_fails_starts_nothing_more() -> None:
    record, _ = applied(None, spec(2), NOW)
    bad = replica("a1", ERROR, reason="restarts exhausted")
    result = run(record, [host("a1")], [bad])
    assert result.rollouts["chat"].state is RolloutState.FAILED
    failed = msgspec.structs.replace(record, rollout=result.rollouts["chat"])
    assert starts(run(failed, [host("a1")], [])) == []


def test_rollback_replaces_the_new_revision_with_the_old_engine() -> None:
    record = updated_to(completed(spec(1)), "m2")
    record = msgspec.structs.replace(
        record,
        rollout=msgspec.structs.replace(
            record.rollout, state=RolloutState.COMPLETE, stable_revision=2
        ),
    )
    back = undone(record, None, NOW)
    assert (back.revision, back.spec.engine.model) == (3, "m")
    result = run(back, [host("a1")], [replica("a1", revision=2, engine_id="n")])
    (start,) = starts(result)
    assert (start.spec.model, start.spec.deployment_revision) == ("m", 3)
    assert removals(result) == []  # surge first
    ready = run(
        back, [host("a1")], [replica("a1", revision=2, engine_id="n"), replica("a1", revision=3)]
    )
    assert [r.engine_id for r in removals(ready)] == ["n"]


# ------------------------------------------------------------------ delete, records


def test_a_deleted_deployment_drains_everything_then_is_forgotten() -> None:
    record = msgspec.structs.replace(completed(spec(2)), deleting=True)
    result = run(record, [host("a1")], [replica("a1"), replica("a1", STARTING)])
    assert sorted(r.drain for r in removals(result)) == [False, True]
    assert result.forget == []
    gone = run(record, [host("a1")], [replica("a1", leaving=True)])
    assert gone.forget == ["chat"]


def test_one_bad_record_does_not_stop_the_others() -> None:
    class Exploding(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:
            raise RuntimeError("bad labels")

    good = msgspec.structs.replace(
        completed(spec(1)), spec=msgspec.structs.replace(spec(1), name="ok")
    )
    bad = completed(spec(1, placement=Placement(labels={"gpu": "x"})))
    broken_host = HostView(host("a1").candidate, labels=Exploding())
    result = plan(PlanInputs(deployments=[bad, good], hosts=[broken_host], replicas=[], now=NOW))
    assert [c.reason for c in result.outcomes["chat"].status.conditions] == ["reconcile_error"]
    assert [a.deployment for a in result.actions] == ["ok"]


def test_apply_bumps_the_revision_only_for_a_new_engine() -> None:
    record, change = applied(None, spec(2), NOW)
    assert (change, record.revision, record.rollout.state) == (
        "create",
        1,
        RolloutState.PROGRESSING,
    )
    same, change = applied(record, spec(2), NOW)
    assert (change, same is record) == ("unchanged", True)
    scaled, change = applied(record, spec(5), NOW)
    assert (change, scaled.revision, scaled.spec.replicas) == ("scale", 1, 5)
    newer, change = applied(record, spec(2, model="other"), NOW)
    assert (change, newer.revision, newer.engine_of(1), newer.engine_of(2)) == (
        "update",
        2,
        record.spec.engine,
        newer.spec.engine,
    )


def test_undo_needs_a_kept_earlier_revision() -> None:
    from sage.unified.coordinator._errors import InvalidRequestError

    record, _ = applied(None, spec(1), NOW)
    with pytest.raises(InvalidRequestError, match="no revision before 1"):
        undone(record, None, NOW)
    with pytest.raises(InvalidRequestError, match="cannot go back to revision 7"):
        undone(updated_to(record, "m2"), 7, NOW)


def test_a_deployment_spec_refuses_a_fixed_port_or_replica_fields() -> None:
    with pytest.raises(ValueError, match="port"):
        DeploymentSpec(name="x", engine=EngineSpec(model="m", port=8901))
    with pytest.raises(ValueError, match="set by the control plane"):
        DeploymentSpec(name="x", engine=EngineSpec(model="m", deployment="x"))
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"name": "x", "engine": {"model": "m"}, "argv": []}, DeploymentSpec)
