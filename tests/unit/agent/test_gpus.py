from __future__ import annotations

import pytest

from sage.unified.agent.errors import NoFreeGpuError, SpecRejectedError
from sage.unified.agent.gpus import GpuClaim, assign_gpus
from sage.unified.sdk.models import EngineSpec, GpuInfo, Runtime

GIB = 2**30


def gpus(*free_gib: float | None) -> list[GpuInfo]:
    return [
        GpuInfo(index=i, memory_free_bytes=None if f is None else int(f * GIB))
        for i, f in enumerate(free_gib)
    ]


def spec(**kw: object) -> EngineSpec:
    return EngineSpec(model="m", **kw)  # type: ignore[arg-type]


def test_auto_prefers_most_free_memory_then_index() -> None:
    assert assign_gpus(spec(), gpus(10, 40, 40, None), []) == (1,)
    assert assign_gpus(spec(tensor_parallel_size=3), gpus(10, 40, 40, None), []) == (1, 2, 0)
    assert assign_gpus(spec(tensor_parallel_size=2), gpus(None, None, None), []) == (0, 1)


def test_exclusive_skips_any_claimed_gpu() -> None:
    claims = [GpuClaim("e1", (1,), None), GpuClaim("e2", (0,), 0.3)]
    assert assign_gpus(spec(), gpus(80, 80, 10), claims) == (2,)


def test_fractions_share_until_full() -> None:
    claims = [GpuClaim("e1", (0,), 0.5), GpuClaim("e2", (0,), 0.3)]
    assert assign_gpus(spec(gpu_memory_utilization=0.2), gpus(80), claims) == (0,)
    with pytest.raises(NoFreeGpuError, match=r"GPU 0 is held by e1 \(0\.5\), e2 \(0\.3\)"):
        assign_gpus(spec(gpu_memory_utilization=0.25), gpus(80), claims)


def test_fraction_never_joins_an_exclusive_claim() -> None:
    claims = [GpuClaim("big", (0,), None)]
    with pytest.raises(NoFreeGpuError, match=r"GPU 0 is held by big \(exclusive\)") as info:
        assign_gpus(spec(gpu_memory_utilization=0.1), gpus(80), claims)
    assert info.value.status == 409


def test_not_enough_gpus_for_tp() -> None:
    claims = [GpuClaim("e1", (0,), None)]
    with pytest.raises(NoFreeGpuError, match=r"needs 2 GPU\(s\) but only 1 of 2"):
        assign_gpus(spec(tensor_parallel_size=2), gpus(80, 80), claims)


def test_explicit_gpu_ids() -> None:
    assert assign_gpus(spec(tensor_parallel_size=2, gpu_ids=[2, 0]), gpus(1, 1, 1), []) == (2, 0)
    with pytest.raises(SpecRejectedError, match="tensor_parallel_size is 1"):
        assign_gpus(spec(gpu_ids=[0, 1]), gpus(1, 1), [])
    with pytest.raises(
        NoFreeGpuError, match=r"GPU 5 does not exist on this host \(GPUs here: 0, 1\)"
    ):
        assign_gpus(spec(gpu_ids=[5]), gpus(1, 1), [])
    with pytest.raises(NoFreeGpuError, match=r"GPU 1 is held by e9 \(exclusive\)"):
        assign_gpus(spec(gpu_ids=[1]), gpus(1, 1), [GpuClaim("e9", (1,), None)])


def test_no_gpu_visible() -> None:
    with pytest.raises(NoFreeGpuError, match="no GPU visible on this host: NVML unavailable: x"):
        assign_gpus(spec(), [], [], gpu_error="NVML unavailable: x")
    with pytest.raises(NoFreeGpuError, match="no GPU visible"):
        assign_gpus(spec(runtime=Runtime.SGLANG), [], [])


def test_simulated_needs_no_gpu() -> None:
    assert assign_gpus(spec(runtime=Runtime.SIMULATED, tensor_parallel_size=4), [], []) == ()
    # Explicit ids on a simulated engine are honoured (and checked) but tp is not enforced.
    assert assign_gpus(spec(runtime=Runtime.SIMULATED, gpu_ids=[1]), gpus(1, 1), []) == (1,)
    with pytest.raises(NoFreeGpuError):
        assign_gpus(spec(runtime=Runtime.SIMULATED, gpu_ids=[3]), gpus(1), [])


def test_quarantined_gpus_take_no_engine_and_say_why() -> None:
    found = gpus(80, 40, 30)
    found[0].healthy, found[0].fault = False, "XID 79: GPU has fallen off the bus"
    # The quarantined GPU has the most free memory, and still it is skipped.
    assert assign_gpus(spec(), found, []) == (1,)
    assert assign_gpus(spec(tensor_parallel_size=2), found, []) == (1, 2)
    with pytest.raises(NoFreeGpuError, match="only 2 of 3 can take it") as auto:
        assign_gpus(spec(tensor_parallel_size=3), found, [])
    assert "GPU 0 is quarantined (XID 79: GPU has fallen off the bus)" in str(auto.value)
    with pytest.raises(NoFreeGpuError, match=r"GPU 0 is quarantined \(XID 79") as named:
        assign_gpus(spec(gpu_ids=[0]), found, [])
    assert "sage llm gpu clear" in str(named.value)
    assert assign_gpus(spec(gpu_ids=[2]), found, []) == (2,)
