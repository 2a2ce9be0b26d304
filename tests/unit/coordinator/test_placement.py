from __future__ import annotations

import pytest

from sage.unified.coordinator._errors import PlacementError
from sage.unified.coordinator._placement import Candidate, place
from sage.unified.sdk.models import EngineSpec, GpuInfo, Runtime

GiB = 1024**3


def gpu(index: int, free_gib: float, total_gib: float = 80) -> GpuInfo:
    return GpuInfo(
        index=index, memory_total_bytes=int(total_gib * GiB), memory_free_bytes=int(free_gib * GiB)
    )


def cand(agent_id: str, *gpus: GpuInfo, lost: bool = False, engines: int = 0) -> Candidate:
    return Candidate(
        agent_id=agent_id,
        host=f"h-{agent_id}",
        url=f"http://h-{agent_id}:8200",
        lost=lost,
        gpus=gpus,
        engines=engines,
    )


def test_most_free_memory_that_fits_wins() -> None:
    spec = EngineSpec(model="m", gpu_memory_utilization=0.5)
    chosen = place(
        spec, [cand("a", gpu(0, 50)), cand("b", gpu(0, 79)), cand("c", gpu(0, 10), gpu(1, 10))]
    )
    assert chosen.agent_id == "b"


def test_tensor_parallel_needs_enough_fitting_gpus() -> None:
    spec = EngineSpec(model="m", tensor_parallel_size=2, gpu_memory_utilization=0.5)
    chosen = place(spec, [cand("big", gpu(0, 80)), cand("two", gpu(0, 41), gpu(1, 41))])
    assert chosen.agent_id == "two"


def test_lost_agent_never_chosen() -> None:
    spec = EngineSpec(model="m", gpu_memory_utilization=0.5)
    chosen = place(spec, [cand("a", gpu(0, 80), lost=True), cand("b", gpu(0, 41))])
    assert chosen.agent_id == "b"


def test_named_host_used() -> None:
    spec = EngineSpec(model="m", gpu_memory_utilization=0.5)
    candidates = [cand("a", gpu(0, 80)), cand("b", gpu(0, 41))]
    assert place(spec, candidates, host="b").agent_id == "b"
    assert place(spec, candidates, host="h-b").agent_id == "b"


def test_named_host_unknown_is_422() -> None:
    with pytest.raises(PlacementError) as info:
        place(EngineSpec(model="m"), [cand("a", gpu(0, 80))], host="zzz")
    assert info.value.status == 422


def test_nothing_fits_gives_reason_per_agent() -> None:
    spec = EngineSpec(model="m")  # 0.9 of 80 GiB needed
    with pytest.raises(PlacementError, match=r"a: 0 of 1 GPUs.*b: no GPUs") as info:
        place(spec, [cand("a", gpu(0, 40)), cand("b")])
    assert info.value.status == 409


def test_no_agent_at_all() -> None:
    with pytest.raises(PlacementError, match="no agent"):
        place(EngineSpec(model="m"), [])


def test_simulated_runtime_picks_fewest_engines_without_gpus() -> None:
    spec = EngineSpec(model="m", runtime=Runtime.SIMULATED)
    chosen = place(
        spec, [cand("a", engines=3), cand("b", engines=1), cand("c", engines=1, lost=True)]
    )
    assert chosen.agent_id == "b"


def test_explicit_gpu_ids_must_fit() -> None:
    spec = EngineSpec(model="m", gpu_ids=[1], gpu_memory_utilization=0.5)
    with pytest.raises(PlacementError, match="GPU 1"):
        place(spec, [cand("a", gpu(0, 80), gpu(1, 10))])
    assert place(spec, [cand("a", gpu(0, 10), gpu(1, 80))]).agent_id == "a"


def test_vllm_goes_to_an_agent_with_a_cpu_build_only_when_no_gpu_host_fits() -> None:
    cpu_agent = Candidate(
        agent_id="cpu", host="10.0.0.9", url="http://10.0.0.9:8200", lost=False, gpus=[],
        engines=0, gpu_free_runtimes=[Runtime.VLLM],
    )  # fmt: skip
    no_gpu = cand("plain")
    spec = EngineSpec(model="m")
    assert place(spec, [no_gpu, cpu_agent]).agent_id == "cpu"
    gpu_host = cand("gpu", gpu(0, 80), engines=3)
    assert place(spec, [cpu_agent, gpu_host]).agent_id == "gpu"
    with pytest.raises(PlacementError, match="gpu_ids cannot be given"):
        place(EngineSpec(model="m", gpu_ids=[0]), [cpu_agent])
    # SGLang still needs GPUs there.
    with pytest.raises(PlacementError, match="no GPUs"):
        place(EngineSpec(model="m", runtime=Runtime.SGLANG), [cpu_agent])


def sick(index: int, free_gib: float, fault: str = "XID 79: GPU has fallen off the bus") -> GpuInfo:
    info = gpu(index, free_gib)
    info.healthy, info.fault = False, fault
    return info


def test_quarantined_gpus_are_skipped_and_named_in_the_reason() -> None:
    spec = EngineSpec(model="m", gpu_memory_utilization=0.5)
    # "a" has the most free memory, all of it on a quarantined GPU: "b" wins.
    chosen = place(spec, [cand("a", sick(0, 80), gpu(1, 41)), cand("b", gpu(0, 60))])
    assert chosen.agent_id == "b"
    assert place(spec, [cand("a", sick(0, 80), gpu(1, 41))]).agent_id == "a"  # on GPU 1
    with pytest.raises(PlacementError) as auto:
        place(spec, [cand("a", sick(0, 80))])
    assert "0 of 1 GPUs" in str(auto.value)
    assert "GPU 0 is quarantined: XID 79: GPU has fallen off the bus" in str(auto.value)
    named = EngineSpec(model="m", gpu_ids=[0], gpu_memory_utilization=0.5)
    with pytest.raises(PlacementError, match=r"a: GPU 0 is quarantined \(XID 79"):
        place(named, [cand("a", sick(0, 80), gpu(1, 80))])


def test_no_gpu_anywhere_says_how_to_run_without_one() -> None:
    with pytest.raises(PlacementError) as info:
        place(EngineSpec(model="m"), [cand("a"), cand("b")])
    assert "--runtime simulated" in str(info.value)
    with pytest.raises(PlacementError) as named:
        place(EngineSpec(model="m"), [cand("a")], host="a")
    assert "--runtime simulated" in str(named.value)
    # Not when some agent has GPUs (they are full, not absent).
    with pytest.raises(PlacementError) as full:
        place(EngineSpec(model="m"), [cand("a", gpu(0, 40)), cand("b")])
    assert "--runtime simulated" not in str(full.value)
