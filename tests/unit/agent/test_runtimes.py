"""Spec → argv: the exact command each runtime gets (a security boundary)."""

from __future__ import annotations

import pytest

from sage.unified.agent.errors import NoFreeGpuError
from sage.unified.agent.runtimes import LaunchPlan, RuntimeConfig, build_launch_plan
from sage.unified.sdk.models import EngineKind, EngineSpec, Runtime, SimulatorOptions

CONFIG = RuntimeConfig(
    vllm_executable="/opt/vllm/bin/vllm",
    vllm_entrypoint="serve",
    vllm_shutdown_timeout=True,
    sglang_python="/opt/sglang/bin/python",
    simulator_python="/usr/bin/python3",
)


def plan(spec: EngineSpec, gpus: tuple[int, ...] = (0,), **kw: object) -> LaunchPlan:
    return build_launch_plan(
        spec, host="10.0.0.5", port=8901, gpu_ids=gpus, config=kw.pop("config", CONFIG), **kw
    )  # type: ignore[arg-type]


def test_vllm_serve_minimal() -> None:
    p = plan(EngineSpec(model="Qwen/Qwen3-8B"))
    assert p.argv == (
        "/opt/vllm/bin/vllm", "serve", "Qwen/Qwen3-8B",
        "--host", "10.0.0.5", "--port", "8901",
        "--served-model-name", "Qwen/Qwen3-8B",
        "--tensor-parallel-size", "1",
        "--enable-prompt-tokens-details",
        "--shutdown-timeout", "300",
    )  # fmt: skip
    assert p.env == {
        "PYTHONUNBUFFERED": "1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "0",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    assert p.metrics_flavor == "vllm"


def test_vllm_serve_all_options_and_embedding() -> None:
    spec = EngineSpec(
        model="BAAI/bge-m3",
        served_model_name="bge",
        kind=EngineKind.EMBEDDING,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.45,
        max_model_len=8192,
        max_num_seqs=64,
        dtype="bfloat16",
        drain_timeout_s=12.5,
    )
    p = plan(spec, (3, 1))
    assert p.argv == (
        "/opt/vllm/bin/vllm", "serve", "BAAI/bge-m3",
        "--host", "10.0.0.5", "--port", "8901",
        "--served-model-name", "bge",
        "--tensor-parallel-size", "2",
        "--gpu-memory-utilization", "0.45",
        "--max-model-len", "8192",
        "--max-num-seqs", "64",
        "--dtype", "bfloat16",
        "--runner", "pooling",
        "--shutdown-timeout", "13",
    )  # fmt: skip
    assert p.env["CUDA_VISIBLE_DEVICES"] == "3,1"


def test_vllm_api_server_entrypoint_without_shutdown_timeout() -> None:
    config = RuntimeConfig(
        vllm_executable="/venv/bin/python",
        vllm_entrypoint="api_server",
        vllm_shutdown_timeout=False,
    )
    p = plan(EngineSpec(model="m", max_num_seqs=4), config=config, drain_timeout_s=30)
    assert p.argv == (
        "/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "m",
        "--host", "10.0.0.5", "--port", "8901",
        "--served-model-name", "m",
        "--tensor-parallel-size", "1",
        "--max-num-seqs", "4",
        "--enable-prompt-tokens-details",
    )  # fmt: skip


def test_drain_timeout_override() -> None:
    p = plan(EngineSpec(model="m"), drain_timeout_s=45.0)
    assert p.argv[-2:] == ("--shutdown-timeout", "45")


def test_sglang() -> None:
    spec = EngineSpec(
        model="meta-llama/Llama-3.1-8B-Instruct",
        served_model_name="llama",
        runtime=Runtime.SGLANG,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.8,
        max_model_len=4096,
        max_num_seqs=32,
    )
    p = plan(spec, (0, 1))
    assert p.argv == (
        "/opt/sglang/bin/python", "-m", "sglang.launch_server",
        "--model-path", "meta-llama/Llama-3.1-8B-Instruct",
        "--host", "10.0.0.5", "--port", "8901",
        "--served-model-name", "llama",
        "--tp-size", "2",
        "--mem-fraction-static", "0.8",
        "--context-length", "4096",
        "--max-running-requests", "32",
        "--enable-metrics",
    )  # fmt: skip
    assert p.metrics_flavor == "sglang"
    assert p.env == {
        "PYTHONUNBUFFERED": "1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }


def test_sglang_embedding() -> None:
    p = plan(EngineSpec(model="e5", runtime=Runtime.SGLANG, kind=EngineKind.EMBEDDING))
    assert p.argv[-2:] == ("--is-embedding", "--enable-metrics")


def test_simulated_defaults_no_gpu_env() -> None:
    p = plan(EngineSpec(model="sim-llm", runtime=Runtime.SIMULATED), ())
    assert p.argv == (
        "/usr/bin/python3", "-m", "sage.unified.agent.simulator",
        "--model", "sim-llm", "--served-model-name", "sim-llm",
        "--host", "10.0.0.5", "--port", "8901", "--kind", "llm",
        "--ttft-ms", "20.0", "--itl-ms", "5.0", "--output-tokens", "16",
        "--startup-delay-s", "0.0", "--embedding-dim", "384", "--max-num-seqs", "256",
        "--enable-prompt-tokens-details",
        "--shutdown-timeout", "300",
    )  # fmt: skip
    assert p.env == {"PYTHONUNBUFFERED": "1"}
    assert p.metrics_flavor == "vllm"


def test_simulated_options() -> None:
    spec = EngineSpec(
        model="sim-emb",
        served_model_name="emb",
        runtime=Runtime.SIMULATED,
        kind=EngineKind.EMBEDDING,
        simulator=SimulatorOptions(
            ttft_ms=1,
            itl_ms=0.5,
            output_tokens=4,
            startup_delay_s=2,
            embedding_dim=8,
            max_num_seqs=3,
        ),
        drain_timeout_s=5,
    )
    p = plan(spec, (2,))
    assert p.argv[3:] == (
        "--model", "sim-emb", "--served-model-name", "emb",
        "--host", "10.0.0.5", "--port", "8901", "--kind", "embedding",
        "--ttft-ms", "1.0", "--itl-ms", "0.5", "--output-tokens", "4",
        "--startup-delay-s", "2.0", "--embedding-dim", "8", "--max-num-seqs", "3",
        "--shutdown-timeout", "5",
    )  # fmt: skip
    assert p.env["CUDA_VISIBLE_DEVICES"] == "2"


def test_simulated_uses_spec_max_num_seqs_without_simulator_options() -> None:
    p = plan(EngineSpec(model="s", runtime=Runtime.SIMULATED, max_num_seqs=7), ())
    i = p.argv.index("--max-num-seqs")
    assert p.argv[i + 1] == "7"


@pytest.mark.parametrize("runtime", [Runtime.VLLM, Runtime.SGLANG])
def test_gpu_runtime_without_gpus_is_rejected(runtime: Runtime) -> None:
    with pytest.raises(NoFreeGpuError, match="simulated"):
        plan(EngineSpec(model="m", runtime=runtime), ())


def test_vllm_on_the_cpu_needs_no_gpu_and_operator_flags_come_last() -> None:
    config = RuntimeConfig(
        vllm_executable="/opt/vllm/bin/python",
        vllm_entrypoint="api_server",
        vllm_device="cpu",
        vllm_extra_args=("--load-format", "dummy", "--dtype", "float32"),
    )
    p = plan(
        EngineSpec(model="/models/tiny", served_model_name="tiny", dtype="auto"), (), config=config
    )
    assert p.argv == (
        "/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/tiny",
        "--host", "10.0.0.5", "--port", "8901",
        "--served-model-name", "tiny",
        "--tensor-parallel-size", "1",
        "--dtype", "auto",
        "--enable-prompt-tokens-details",
        "--shutdown-timeout", "300",
        "--load-format", "dummy", "--dtype", "float32",
    )  # fmt: skip
    assert "CUDA_VISIBLE_DEVICES" not in p.env
    assert config.needs_gpu(Runtime.SGLANG)
    assert not config.needs_gpu(Runtime.VLLM)
    assert CONFIG.needs_gpu(Runtime.VLLM)
