"""The pure parts of the etcd control plane: key layout, what a report costs in etcd, the
mirror's state and the registry that follows it (no etcd, no I/O)."""

from __future__ import annotations

import msgspec
import pytest

from sage.unified.coordinator import ConfigError, CoordinatorSettings
from sage.unified.coordinator._etcd import KeyValue, WatchEvent
from sage.unified.coordinator._ha._records import (
    KeySpace,
    KnownAgent,
    StoredAgent,
    plan_report_write,
    significant,
)
from sage.unified.coordinator._ha._view import MirrorState
from sage.unified.coordinator._mirrored import MirroredRegistry
from sage.unified.sdk.clock import FakeClock
from sage.unified.sdk.models import (
    AgentReport,
    EngineInfo,
    EngineLoad,
    GpuInfo,
    HostMetrics,
    encode,
)
from sage.unified.sdk.states import EngineState

KEYS = KeySpace("/sage/")


def report(*states: EngineState, running: int = 0, gpu_used: int = 0) -> AgentReport:
    return AgentReport(
        agent_id="a1",
        host="10.0.0.5",
        url="http://10.0.0.5:8200",
        incarnation=1,
        gpus=[GpuInfo(index=0, memory_total_bytes=100, memory_used_bytes=gpu_used)],
        host_metrics=HostMetrics(cpu_percent=float(running)),
        engines=[
            EngineInfo(
                id=f"e{i}",
                model="m",
                host="10.0.0.5",
                port=8900 + i,
                url=f"http://10.0.0.5:{8900 + i}",
                state=state,
                load=EngineLoad(running=running),
                agent_id="a1",
            )
            for i, state in enumerate(states)
        ],
    )


def test_keys_of_a_deployment_and_their_parsing() -> None:
    assert KEYS.agent("a1") == "/sage/state/agents/a1"
    assert KEYS.alive("a1") == "/sage/state/alive/a1"
    assert KEYS.parse(b"/sage/state/starts/m-1a2b3c") == ("starts", "m-1a2b3c")
    assert KEYS.parse(b"/sage/state/agents/with/slash") == ("agents", "with/slash")
    assert KEYS.parse(b"/sage/audit/0001") is None
    assert KEYS.parse(b"/other/state/agents/a1") is None
    assert KEYS.parse(b"/sage/state/agents") is None


def test_telemetry_is_not_significant_but_states_and_gpu_health_are() -> None:
    base = significant(report(EngineState.READY))
    assert significant(report(EngineState.READY, running=7, gpu_used=50)) == base
    assert significant(report(EngineState.STARTING)) != base
    assert significant(report(EngineState.READY, EngineState.READY)) != base
    quarantined = report(EngineState.READY)
    quarantined.gpus[0].healthy = False
    assert significant(quarantined) != base


def known(**overrides: object) -> KnownAgent:
    values: dict[str, object] = {
        "record_revision": 7,
        "significant": significant(report(EngineState.READY)),
        "written_at": 100.0,
        "lease_id": 42,
    }
    values.update(overrides)
    return KnownAgent(**values)  # type: ignore[arg-type]


def test_a_heartbeat_that_changes_nothing_only_renews_the_lease() -> None:
    plan = plan_report_write(
        known(), significant(report(EngineState.READY, running=3)), now=105.0,
        telemetry_interval_s=10.0,
    )  # fmt: skip
    assert (plan.put_record, plan.grant_lease, plan.renew_lease, plan.writes) == (
        False,
        False,
        42,
        False,
    )


@pytest.mark.parametrize(
    ("agent", "states", "now", "put", "grant"),
    [
        (None, (EngineState.READY,), 0.0, True, True),  # a new agent
        ("same", (EngineState.STARTING,), 101.0, True, False),  # a state changed
        ("same", (EngineState.READY,), 110.0, True, False),  # the telemetry is due
        ("lost", (EngineState.READY,), 101.0, False, True),  # back after its lease ended
        ("expired", (EngineState.READY,), 101.0, False, True),  # renewal found it gone
    ],
)
def test_what_a_report_writes(
    agent: str | None, states: tuple[EngineState, ...], now: float, put: bool, grant: bool
) -> None:
    previous = {
        None: None,
        "same": known(),
        "lost": known(lease_id=None),
        "expired": known(lease_expired=True),
    }[agent]
    plan = plan_report_write(
        previous, significant(report(*states)), now=now, telemetry_interval_s=10.0
    )
    assert (plan.put_record, plan.grant_lease) == (put, grant)
    assert plan.renew_lease is None if grant else plan.renew_lease == 42


def kv(key: str, value: bytes, revision: int, lease: int = 0) -> KeyValue:
    return KeyValue(key.encode(), value, revision, revision, 1, lease)


def put(key: str, value: bytes, revision: int, lease: int = 0) -> WatchEvent:
    return WatchEvent("put", kv(key, value, revision, lease))


def delete(key: str, revision: int) -> WatchEvent:
    return WatchEvent("delete", KeyValue(key.encode(), b"", 0, revision, 0))


def stored(*states: EngineState) -> bytes:
    return encode(StoredAgent(report=report(*states), written_at=1.0))


def test_the_mirror_follows_snapshots_liveness_and_takes_etcds_revisions() -> None:
    clock = FakeClock()
    state = MirrorState(KEYS, MirroredRegistry(clock, lease_ttl_s=4.0))
    registry = state.registry
    state.reset(
        [
            kv(KEYS.alive("a1"), b"{}", 3, lease=9),
            kv(KEYS.agent("a1"), stored(EngineState.READY), 4),
        ],
        10,
    )
    assert registry.revision == 10
    assert [b.id for b in registry.routing_table().backends] == ["e0"]
    assert state.known_agent("a1", lambda _lease: False) == KnownAgent(
        record_revision=4,
        significant=significant(report(EngineState.READY)),
        written_at=1.0,
        lease_id=9,
    )
    # The lease ends: lost at etcd's revision, engines out of the table, shown ERROR.
    assert state.apply(delete(KEYS.alive("a1"), 11))
    registry.stamp(11)
    assert registry.revision == 11
    assert registry.routing_table().backends == []
    assert registry.engine("e0").state is EngineState.ERROR
    assert registry.agent_summary("a1").lease_expires_in_s == 0.0
    # Nothing expires by this process's clock.
    clock.advance(3600)
    assert not registry.expire().changed
    # Back with a new lease.
    assert state.apply(put(KEYS.alive("a1"), b"{}", 12, lease=10))
    registry.stamp(12)
    assert [b.id for b in registry.routing_table().backends] == ["e0"]
    # A change that does not touch the registry does not move the revision.
    assert not state.apply(put(KEYS.start("e9"), b"not json", 13))
    assert not registry.stamp(13)
    assert registry.revision == 12


def test_a_record_that_does_not_decode_is_skipped_and_the_others_applied() -> None:
    state = MirrorState(KEYS, MirroredRegistry(FakeClock()))
    state.reset(
        [
            kv(KEYS.agent("bad"), b"{not json", 2),
            kv(KEYS.alive("a1"), b"{}", 3, lease=9),
            kv(KEYS.agent("a1"), stored(EngineState.READY), 4),
        ],
        5,
    )
    assert [a.agent_id for a in state.registry.agent_summaries()] == ["a1"]


def test_other_kinds_are_kept_for_their_owners_and_flagged() -> None:
    state = MirrorState(KEYS, MirroredRegistry(FakeClock()))
    state.reset([], 1)
    state.other_changed = False
    assert not state.apply(put("/sage/state/deployments/chat", b"{}", 2))
    assert state.other == {"deployments": {"chat": kv("/sage/state/deployments/chat", b"{}", 2)}}
    assert state.other_changed
    state.other_changed = False
    state.apply(delete("/sage/state/deployments/chat", 3))
    assert state.other_changed
    assert state.other == {"deployments": {}}


def test_stamps_never_go_back() -> None:
    registry = MirroredRegistry(FakeClock(), revision=50)
    info = EngineInfo(id="r", model="m", url="http://10.0.0.9:1", state=EngineState.READY)
    registry.put_registered(msgspec.structs.replace(info))
    assert registry.revision == 50  # not stamped yet
    assert registry.stamp(40)
    assert registry.revision == 51
    assert not registry.stamp(60)  # nothing new to stamp


def test_store_settings() -> None:
    settings = CoordinatorSettings(store="etcd://e1:2379,e2", db_path=None)
    assert settings.etcd_store
    assert [e.netloc for e in settings.etcd_target().endpoints] == ["e1:2379", "e2:2379"]
    assert not CoordinatorSettings(store="sqlite").etcd_store
    assert CoordinatorSettings(store="memory").local_db_path is None
    with pytest.raises(ValueError, match="store must be sqlite, memory or an etcd URL"):
        CoordinatorSettings(store="redis://x")
    with pytest.raises(ConfigError):
        CoordinatorSettings(store="sqlite").etcd_target()


def test_the_etcd_password_comes_from_the_setting_or_its_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "etcd-password"
    secret.write_text("s3cret\n")
    settings = CoordinatorSettings(store="etcd://e1", etcd_password_file=secret)
    assert settings.etcd_password_value() == "s3cret"
    missing = CoordinatorSettings(store="etcd://e1", etcd_password_file=tmp_path / "nope")
    with pytest.raises(ConfigError, match="cannot read the etcd password"):
        missing.etcd_password_value()


def test_the_pure_modules_of_the_etcd_control_plane_import_no_io_library() -> None:
    import subprocess
    import sys

    pure = (
        "sage.unified.coordinator._table",
        "sage.unified.coordinator._report_checks",
        "sage.unified.coordinator._mirrored",
        "sage.unified.coordinator._ha._records",
        "sage.unified.coordinator._ha._view",
    )
    # Stub the packages whose __init__ imports I/O parts, then import the modules alone.
    code = f"""
import importlib, importlib.util, pathlib, sys, types
root = pathlib.Path(next(iter(importlib.util.find_spec("sage.unified").submodule_search_locations)))
for name, path in [("sage.unified.sdk", root / "sdk"),
                   ("sage.unified.coordinator", root / "coordinator"),
                   ("sage.unified.coordinator._etcd", root / "coordinator" / "_etcd"),
                   ("sage.unified.coordinator._ha", root / "coordinator" / "_ha")]:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module
for name in {pure!r}:
    importlib.import_module(name)
print(sorted({{"httpx", "anyio", "litestar"}} & set(sys.modules)))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
