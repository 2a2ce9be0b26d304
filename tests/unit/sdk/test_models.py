"""Wire models: JSON round trips, tolerance of newer peers, and launch-spec validation."""

from __future__ import annotations

import msgspec
import pytest

from sage.unified.sdk import models as m
from sage.unified.sdk.states import EngineState


def _engine(**overrides: object) -> m.EngineInfo:
    fields: dict[str, object] = {
        "id": "tiny-1a2b3c",
        "model": "tiny",
        "kind": m.EngineKind.LLM,
        "runtime": m.Runtime.SIMULATED,
        "host": "10.0.0.5",
        "port": 8901,
        "url": "http://10.0.0.5:8901",
        "state": EngineState.READY,
        "reason": "health checks passed",
        "incarnation": 2,
        "created_at": 1_700_000_000.5,
        "gpu_ids": [0, 1],
        "pid": 4242,
        "load": m.EngineLoad(running=3, waiting=1, kv_cache_usage=0.25, updated_at=1.0),
        "agent_id": "gpu-host-1",
        "spec": m.EngineSpecView(model="tiny", runtime=m.Runtime.SIMULATED),
    }
    fields.update(overrides)
    return m.EngineInfo(**fields)  # type: ignore[arg-type]


SAMPLES: list[object] = [
    m.EngineSpec(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        served_model_name="qwen",
        tensor_parallel_size=2,
        gpu_ids=[0, 1],
        gpu_memory_utilization=0.5,
        max_model_len=4096,
        simulator=m.SimulatorOptions(ttft_ms=5),
    ),
    _engine(),
    m.GpuInfo(
        index=0,
        uuid="GPU-abc",
        name="NVIDIA H100",
        memory_total_bytes=80 * 2**30,
        processes=[m.GpuProcess(pid=1, used_memory_bytes=None)],
    ),
    m.AgentReport(
        agent_id="gpu-host-1",
        host="10.0.0.5",
        url="http://10.0.0.5:8200",
        incarnation=7,
        gpus=[m.GpuInfo(index=0)],
        host_metrics=m.HostMetrics(cpu_count=16),
        engines=[_engine()],
    ),
    m.AgentReportReply(lease_ttl_s=10, heartbeat_interval_s=3, revision=9),
    m.Backend(id="e1", model="tiny", kind=m.EngineKind.EMBEDDING, url="http://h:1"),
    m.RoutingTable(
        revision=4,
        backends=[m.Backend(id="e1", model="tiny", kind=m.EngineKind.LLM, url="http://h:1")],
    ),
    m.EngineStartRequest(spec=m.EngineSpec(model="tiny"), host="gpu-host-1"),
    m.EngineStopRequest(engine_id="e1", drain=False, timeout_s=5),
    m.RegisterEngineRequest(model="tiny", url="http://127.0.0.1:8901"),
    m.error_body(
        "The model `x` does not exist.", "NotFoundError", code="model_not_found", param="model"
    ),
]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: type(s).__name__)
def test_json_round_trip(sample: object) -> None:
    data = m.encode(sample)
    assert m.decode(data, type(sample)) == sample


@pytest.mark.parametrize(
    "type_",
    [m.EngineInfo, m.AgentReport, m.RoutingTable, m.Backend, m.GpuInfo, m.AgentReportReply],
)
def test_unknown_fields_from_newer_peers_are_ignored(type_: type) -> None:
    sample = next(s for s in SAMPLES if type(s) is type_)
    raw = msgspec.json.decode(m.encode(sample))
    raw["field_from_the_future"] = {"nested": [1, 2]}
    assert m.decode(msgspec.json.encode(raw), type_) == sample


def test_launch_spec_rejects_unknown_fields() -> None:
    # The launch API is a security boundary: no command, args or env can sneak in.
    for extra in (
        {"command": "bash"},
        {"env": {"LD_PRELOAD": "x"}},
        {"extra_args": ["--trust-remote-code"]},
    ):
        with pytest.raises(msgspec.ValidationError, match="unknown field"):
            m.decode(msgspec.json.encode({"model": "tiny", **extra}), m.EngineSpec)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "../../etc/passwd"}, r"\$\.model"),
        ({"model": "org/../../x"}, "not allowed"),
        ({"model": "--trust-remote-code"}, r"\$\.model"),
        ({"model": "a b"}, r"\$\.model"),
        ({"model": "tiny", "runtime": "docker"}, "runtime"),
        ({"model": "tiny", "tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"model": "tiny", "gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"model": "tiny", "gpu_ids": [0, 0]}, "repeat"),
        ({"model": "tiny", "dtype": "int3"}, "dtype"),
        ({"model": "tiny", "port": 70000}, "port"),
    ],
)
def test_launch_spec_validation(body: dict[str, object], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        m.decode(msgspec.json.encode(body), m.EngineSpec)


def test_a_reported_spec_tolerates_fields_from_a_newer_agent() -> None:
    # A newer agent may report spec fields this coordinator does not know yet; its whole
    # report must not be rejected for that (only launch requests are strict).
    raw = msgspec.json.decode(m.encode(_engine()))
    raw["spec"]["speculative_decoding"] = {"method": "ngram"}
    decoded = m.decode(msgspec.json.encode(raw), m.EngineInfo)
    assert decoded.spec is not None
    assert decoded.spec.model == "tiny"


def test_a_spec_may_name_a_local_model_directory() -> None:
    spec = m.decode(b'{"model": "/models/Qwen2.5-0.5B", "served_model_name": "qwen"}', m.EngineSpec)
    assert spec.model == "/models/Qwen2.5-0.5B"
    for bad in ("/models/../etc/passwd", "//etc", "/-rf"):
        with pytest.raises(msgspec.ValidationError):
            m.decode(msgspec.json.encode({"model": bad}), m.EngineSpec)


def test_spec_name_defaults_to_model() -> None:
    assert m.EngineSpec(model="org/tiny").name == "org/tiny"
    assert m.EngineSpec(model="org/tiny", served_model_name="tiny").name == "tiny"


def test_routing_table_splits_llm_and_embedding_backends() -> None:
    table = m.RoutingTable(
        revision=1,
        backends=[
            m.Backend(id="a", model="chat", kind=m.EngineKind.LLM, url="http://h:1"),
            m.Backend(id="b", model="emb", kind=m.EngineKind.EMBEDDING, url="http://h:2/"),
            m.Backend(id="c", model="chat", kind=m.EngineKind.LLM, url="http://h:3"),
        ],
    )
    assert [b.id for b in table.llm_backends] == ["a", "c"]
    assert [b.id for b in table.embedding_backends] == ["b"]
    assert table.models() == ["chat", "emb"]
    assert table.models(m.EngineKind.EMBEDDING) == ["emb"]
    assert table.embedding_backends[0].base_url == "http://h:2/v1"


def test_engine_info_routable_only_when_ready() -> None:
    assert _engine().routable
    assert not _engine(state=EngineState.DRAINING).routable
