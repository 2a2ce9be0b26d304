"""Placement: which agent starts an engine. Pure: no I/O.

Rule: among agents that are not lost, those that can fit the spec; the one with the
most free GPU memory wins (ties: fewer engines, then agent id). A spec fits an agent
when ``tensor_parallel_size`` GPUs (or exactly ``spec.gpu_ids``) each have at least
``gpu_memory_utilization * memory_total`` bytes free (vLLM's default fraction 0.9
when the spec gives none). A runtime the agent runs without GPUs (``simulated``, or
``vllm`` on an agent with a CPU build) needs none: the agent with the fewest engines
wins. A named host (agent id or host address) skips the choice but
still has to fit. A GPU its agent quarantined after a fault (``GpuInfo.healthy`` false)
takes no engine and adds no free memory; the no-placement reason names it. A cordoned host
(``sage agent cordon``) takes no new engine, named or not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from sage.unified.coordinator._errors import PlacementError
from sage.unified.sdk.models import AgentSummary, EngineSpec, GpuInfo, Runtime

__all__ = [
    "DEFAULT_GPU_MEMORY_UTILIZATION",
    "Candidate",
    "claim",
    "fit_reason",
    "place",
    "rank",
]

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


@dataclass(frozen=True, slots=True)
class Candidate:
    """An agent as placement sees it."""

    agent_id: str
    host: str
    url: str
    lost: bool
    gpus: Sequence[GpuInfo]
    engines: int
    gpu_error: str | None = None
    gpu_free_runtimes: Sequence[Runtime] = ()
    """Runtimes this agent runs without GPUs (besides ``simulated``)."""
    cordoned: bool = False
    """Takes no new engine (``sage agent cordon`` or ``drain``)."""

    @classmethod
    def of(cls, summary: AgentSummary, engines: int, *, cordoned: bool = False) -> Candidate:
        """An agent's summary as placement sees it (``engines``: how many it runs)."""
        return cls(
            agent_id=summary.agent_id,
            host=summary.host,
            url=summary.url,
            lost=summary.lost,
            gpus=summary.gpus,
            engines=engines,
            gpu_error=summary.gpu_error,
            gpu_free_runtimes=summary.gpu_free_runtimes,
            cordoned=cordoned,
        )

    def needs_gpu(self, runtime: Runtime) -> bool:
        return runtime is not Runtime.SIMULATED and runtime not in self.gpu_free_runtimes

    @property
    def free_bytes(self) -> int:
        return sum(g.memory_free_bytes or 0 for g in self.gpus if g.healthy)


def _gpu_fits(gpu: GpuInfo, fraction: float) -> bool:
    if gpu.memory_total_bytes is None or gpu.memory_free_bytes is None:
        return False
    return gpu.memory_free_bytes >= fraction * gpu.memory_total_bytes


def fit_reason(spec: EngineSpec, candidate: Candidate) -> str | None:
    """Why ``spec`` does not fit ``candidate``, or ``None`` when it fits."""
    if candidate.lost:
        return "agent lost (lease expired)"
    if candidate.cordoned:
        return "cordoned (`sage agent uncordon` lets it take engines again)"
    if not candidate.needs_gpu(spec.runtime):
        return (
            None
            if spec.gpu_ids is None or spec.runtime is Runtime.SIMULATED
            else (f"runs {spec.runtime.value} without GPUs, so gpu_ids cannot be given")
        )
    if not candidate.gpus:
        return f"no GPUs ({candidate.gpu_error})" if candidate.gpu_error else "no GPUs"
    fraction = spec.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    if spec.gpu_ids is not None:
        by_index = {g.index: g for g in candidate.gpus}
        for index in spec.gpu_ids:
            gpu = by_index.get(index)
            if gpu is None:
                return f"no GPU {index}"
            if not gpu.healthy:
                return f"GPU {index} is quarantined ({gpu.fault or 'fault'})"
            if not _gpu_fits(gpu, fraction):
                return f"GPU {index} has less than {fraction:.0%} of its memory free"
        return None
    fitting = sum(1 for g in candidate.gpus if g.healthy and _gpu_fits(g, fraction))
    if fitting < spec.tensor_parallel_size:
        reason = (
            f"{fitting} of {len(candidate.gpus)} GPUs have {fraction:.0%} of their memory free; "
            f"{spec.tensor_parallel_size} needed"
        )
        faulty = [g for g in candidate.gpus if not g.healthy]
        if faulty:
            reason += (
                " ("
                + "; ".join(f"GPU {g.index} is quarantined: {g.fault or 'fault'}" for g in faulty)
                + ")"
            )
        return reason
    return None


def place(spec: EngineSpec, candidates: Sequence[Candidate], host: str | None = None) -> Candidate:
    """Choose the agent that starts ``spec``.

    Args:
        spec: the engine to place.
        candidates: every known agent (lost ones are skipped with a reason).
        host: an agent id or host address to use instead of choosing.

    Raises:
        PlacementError: 422 when ``host`` names no agent; 409 when no agent is known or
            nothing fits (the message lists each agent's reason).
    """
    if host is not None:
        named = [c for c in candidates if host in (c.agent_id, c.host)]
        if not named:
            raise PlacementError(
                f"no agent has id or host {host!r}", status=422, code="unknown_host"
            )
        reasons = [(c, fit_reason(spec, c)) for c in named]
        fitting = [c for c, reason in reasons if reason is None]
        if not fitting:
            detail = "; ".join(f"{c.agent_id}: {reason}" for c, reason in reasons)
            raise PlacementError(
                f"engine does not fit on {host!r}: {detail}{_gpu_hint(spec, named)}"
            )
        return _best(spec, fitting)
    if not candidates:
        raise PlacementError("no agent is registered", code="no_agent")
    reasons = [(c, fit_reason(spec, c)) for c in candidates]
    fitting = [c for c, reason in reasons if reason is None]
    if not fitting:
        detail = "; ".join(f"{c.agent_id}: {reason}" for c, reason in reasons)
        raise PlacementError(f"no agent can take the engine: {detail}{_gpu_hint(spec, candidates)}")
    return _best(spec, fitting)


NO_GPU_HINT = (
    "; no agent has a GPU: to run without one, start a simulated engine "
    "(runtime 'simulated': `sage llm engine start MODEL --runtime simulated`)"
)


def _gpu_hint(spec: EngineSpec, candidates: Sequence[Candidate]) -> str:
    """How to go on when ``spec`` needs a GPU and none of ``candidates`` has one."""
    if spec.runtime is Runtime.SIMULATED or any(c.gpus for c in candidates):
        return ""
    return NO_GPU_HINT


def _best(spec: EngineSpec, fitting: Sequence[Candidate]) -> Candidate:
    return rank(spec, fitting)[0]


def rank(spec: EngineSpec, fitting: Sequence[Candidate]) -> list[Candidate]:
    """``fitting`` best first: the order :func:`place` chooses in."""
    # GPU hosts first when any fits; agents that run this runtime without GPUs (CPU
    # builds, the simulator) are chosen by load.
    with_gpus = [c for c in fitting if c.needs_gpu(spec.runtime)]
    if with_gpus:
        return sorted(with_gpus, key=lambda c: (-c.free_bytes, c.engines, c.agent_id))
    return sorted(fitting, key=lambda c: (c.engines, c.agent_id))


def claim(spec: EngineSpec, candidate: Candidate) -> Candidate:
    """``candidate`` as it will be once ``spec`` runs there (one more engine, and the
    memory it takes from the GPUs it would get), so several engines can be placed in one
    pass before the agent reports again."""
    engines = candidate.engines + 1
    if not candidate.needs_gpu(spec.runtime):
        return dataclasses.replace(candidate, engines=engines)
    fraction = spec.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    if spec.gpu_ids is not None:
        taken = set(spec.gpu_ids)
    else:
        fitting = [g for g in candidate.gpus if g.healthy and _gpu_fits(g, fraction)]
        fitting.sort(key=lambda g: (-(g.memory_free_bytes or 0), g.index))
        taken = {g.index for g in fitting[: spec.tensor_parallel_size]}
    gpus = [_taken(g, fraction) if g.index in taken else g for g in candidate.gpus]
    return dataclasses.replace(candidate, engines=engines, gpus=gpus)


def _taken(gpu: GpuInfo, fraction: float) -> GpuInfo:
    total = gpu.memory_total_bytes or 0
    free = max(0, (gpu.memory_free_bytes or 0) - int(fraction * total))
    return msgspec.structs.replace(gpu, memory_free_bytes=free)
