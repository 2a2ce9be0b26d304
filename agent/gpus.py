"""GPU assignment for new engines. Pure: no NVML, no I/O.

A GPU can take an engine when it is healthy (not quarantined after a fault: see
:mod:`sage.unified.agent.quarantine`) and:

* the engine wants it exclusively (``gpu_memory_utilization`` unset) and no
  engine holds any claim on it, or
* the engine wants a fraction ``f`` and no engine holds it exclusively and the
  fractions already claimed plus ``f`` are at most 1.0.

Automatic choice prefers the GPUs with the most free memory (as NVML last saw
it; unknown counts as 0), then the lowest index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sage.unified.agent.errors import NoFreeGpuError
from sage.unified.sdk.models import EngineSpec, GpuInfo, Runtime

__all__ = ["GpuClaim", "assign_gpus"]

_EPSILON = 1e-9


@dataclass(frozen=True)
class GpuClaim:
    """GPUs held by one engine; ``fraction`` ``None`` means exclusive use."""

    engine_id: str
    gpu_ids: tuple[int, ...]
    fraction: float | None


def assign_gpus(
    spec: EngineSpec,
    gpus: Sequence[GpuInfo],
    claims: Sequence[GpuClaim],
    *,
    gpu_error: str | None = None,
) -> tuple[int, ...]:
    """Choose the GPU indices an engine runs on.

    Args:
        spec: the launch spec (runtime, ``tensor_parallel_size``, ``gpu_ids``,
            ``gpu_memory_utilization``).
        gpus: the GPUs NVML reports on this host.
        claims: what the engines already running here hold.
        gpu_error: why ``gpus`` is empty (NVML's reason), for the error message.

    Returns:
        NVML indices, in the order the engine should see them. Empty for a
        ``simulated`` engine that asked for no GPU.

    Raises:
        NoFreeGpuError: no GPU is visible, a requested GPU does not exist, is
            quarantined or is taken, or fewer than ``tensor_parallel_size`` GPUs can
            take the engine.
        SpecRejectedError: explicit ``gpu_ids`` whose count differs from
            ``tensor_parallel_size`` (reported as :class:`NoFreeGpuError`, a subclass).
    """
    simulated = spec.runtime is Runtime.SIMULATED
    if simulated and not spec.gpu_ids:
        return ()
    known = {gpu.index: gpu for gpu in gpus}
    if not known:
        reason = gpu_error or "NVML reported no devices"
        raise NoFreeGpuError(
            f"no GPU visible on this host: {reason}; run the engine on a GPU host "
            "or use runtime 'simulated'"
        )
    if spec.gpu_ids:
        return _check_requested(spec.gpu_ids, spec, known, claims, simulated=simulated)
    return _choose(spec, known, claims)


def _check_requested(
    requested: Sequence[int],
    spec: EngineSpec,
    known: Mapping[int, GpuInfo],
    claims: Sequence[GpuClaim],
    *,
    simulated: bool,
) -> tuple[int, ...]:
    """``requested`` (the spec's ``gpu_ids``), once each exists, is healthy and is free."""
    fraction = spec.gpu_memory_utilization
    want = spec.tensor_parallel_size
    if not simulated and len(requested) != want:
        raise NoFreeGpuError(
            f"gpu_ids {requested} has {len(requested)} GPUs but "
            f"tensor_parallel_size is {want}; give exactly {want} ids or omit gpu_ids"
        )
    missing = [i for i in requested if i not in known]
    if missing:
        raise NoFreeGpuError(
            f"GPU {_ids(missing)} does not exist on this host (GPUs here: "
            f"{_ids(sorted(known))}); pick existing indices or omit gpu_ids"
        )
    faulty = [known[i] for i in requested if not known[i].healthy]
    if faulty:
        raise NoFreeGpuError(
            f"{_quarantined(faulty)}; choose other gpu_ids, or clear the GPU once it is "
            "fixed (sage llm gpu clear HOST:INDEX)"
        )
    taken = [i for i in requested if not _fits(i, fraction, claims)]
    if taken:
        raise NoFreeGpuError(
            f"requested GPUs are not available: {_describe(taken, fraction, claims)}; "
            "choose other gpu_ids, lower gpu_memory_utilization, or stop those engines"
        )
    return tuple(requested)


def _choose(
    spec: EngineSpec, known: Mapping[int, GpuInfo], claims: Sequence[GpuClaim]
) -> tuple[int, ...]:
    """``tensor_parallel_size`` healthy GPUs that can take the engine, most free memory first."""
    fraction = spec.gpu_memory_utilization
    want = spec.tensor_parallel_size
    healthy = [gpu for gpu in known.values() if gpu.healthy]
    candidates = sorted(
        (gpu for gpu in healthy if _fits(gpu.index, fraction, claims)),
        key=lambda gpu: (-(gpu.memory_free_bytes or 0), gpu.index),
    )
    if len(candidates) < want:
        busy = sorted(g.index for g in healthy if not _fits(g.index, fraction, claims))
        parts = [_describe(busy, fraction, claims)] if busy else []
        faulty = sorted((g for g in known.values() if not g.healthy), key=lambda g: g.index)
        if faulty:
            parts.append(_quarantined(faulty))
        detail = "; ".join(parts) or "none taken"
        raise NoFreeGpuError(
            f"engine needs {want} GPU(s) but only {len(candidates)} of {len(known)} can take it "
            f"({detail}); stop an engine, lower tensor_parallel_size, or set "
            "gpu_memory_utilization so engines can share a GPU"
        )
    return tuple(gpu.index for gpu in candidates[:want])


def _claims_on(index: int, claims: Sequence[GpuClaim]) -> list[GpuClaim]:
    return [claim for claim in claims if index in claim.gpu_ids]


def _fits(index: int, fraction: float | None, claims: Sequence[GpuClaim]) -> bool:
    on_gpu = _claims_on(index, claims)
    if fraction is None:
        return not on_gpu
    if any(claim.fraction is None for claim in on_gpu):
        return False
    used = sum(claim.fraction or 0.0 for claim in on_gpu)
    return used + fraction <= 1.0 + _EPSILON


def _describe(indices: Sequence[int], fraction: float | None, claims: Sequence[GpuClaim]) -> str:
    parts = []
    for index in indices:
        holders = ", ".join(
            f"{c.engine_id} ({'exclusive' if c.fraction is None else f'{c.fraction:g}'})"
            for c in _claims_on(index, claims)
        )
        want = "exclusive use" if fraction is None else f"a fraction of {fraction:g}"
        parts.append(f"GPU {index} is held by {holders} and cannot give {want}")
    return "; ".join(parts)


def _quarantined(gpus: Sequence[GpuInfo]) -> str:
    return "; ".join(f"GPU {gpu.index} is quarantined ({gpu.fault})" for gpu in gpus)


def _ids(indices: Sequence[int]) -> str:
    return ", ".join(str(i) for i in indices)
