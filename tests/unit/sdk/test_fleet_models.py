"""The fleet's wire models: specs are strict, statuses tolerant, both round-trip as JSON."""

from __future__ import annotations

import msgspec
import pytest

from sage.unified.sdk import (
    Deployment,
    DeploymentSpec,
    DeploymentStatus,
    EngineSpec,
    HostDrain,
    Placement,
    RolloutState,
    UpdateStrategy,
)
from sage.unified.sdk.models import AgentReport, AgentSummary, decode, encode

SPEC = DeploymentSpec(
    name="chat",
    engine=EngineSpec(model="Qwen/Qwen2.5-7B-Instruct", tensor_parallel_size=2),
    replicas=3,
    placement=Placement(labels={"gpu": "h100"}, hosts=["gpu-01"]),
    strategy=UpdateStrategy(max_surge=0, max_unavailable=1),
)


def test_a_deployment_round_trips() -> None:
    deployment = Deployment(spec=SPEC, status=DeploymentStatus(name="chat", revision=2, desired=3))
    assert decode(encode(deployment), Deployment) == deployment
    assert decode(encode(HostDrain(agent_id="a1", drained=["e1"])), HostDrain).drained == ["e1"]


@pytest.mark.parametrize(
    "change",
    [
        {"strategy": {"max_surge": 1, "maxSurge": 2}},
        {"placement": {"labels": {}, "nodeSelector": {}}},
        {"engine": {"model": "m", "extra_args": ["--trust-remote-code"]}},
        {"engine": {"model": "m", "env": {"LD_PRELOAD": "x"}}},
        {"name": "Chat"},
        {"replicas": -1},
        {"placement": {"labels": {"gpu": "h100;rm"}}},
    ],
)
def test_a_deployment_spec_refuses_unknown_or_bad_fields(change: dict[str, object]) -> None:
    raw = {**msgspec.to_builtins(SPEC), **change}
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(raw, DeploymentSpec)


def test_statuses_and_agents_tolerate_fields_a_newer_peer_adds() -> None:
    raw = msgspec.to_builtins(DeploymentStatus(name="chat", revision=1, desired=2))
    raw["rollout"]["paused"] = True
    raw["future"] = 1
    status = msgspec.convert(raw, DeploymentStatus)
    assert status.rollout.state is RolloutState.PROGRESSING
    report = AgentReport(agent_id="a1", host="h", url="http://h:8200", labels={"zone": "a"})
    assert decode(encode(report), AgentReport).labels == {"zone": "a"}
    older = decode(b'{"agent_id": "a1", "host": "h", "url": "u"}', AgentSummary)
    assert (older.labels, older.cordoned, older.draining) == ({}, False, False)
