from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (
            "sage.unified.agent.telemetry",
            {"GpuFaultWatcher", "GpuReader", "parse_engine_load", "read_host_metrics"},
        ),
        (
            "sage.unified.agent.errors",
            {
                "AgentError",
                "SpecRejectedError",
                "ModelNotAllowedError",
                "PortUnavailableError",
                "NoFreeGpuError",
                "RuntimeUnavailableError",
                "EngineIdTakenError",
                "EngineNotFoundError",
                "GpuNotFoundError",
                "LaunchError",
            },
        ),
        (
            "sage.unified.agent.launcher",
            {
                "ChildProcess",
                "EngineProcess",
                "ProcessRecord",
                "adopt",
                "launch",
                "child_environment",
            },
        ),
        (
            "sage.unified.agent.runtimes",
            {"LaunchPlan", "RuntimeConfig", "build_launch_plan", "SIMULATOR_MODULE"},
        ),
    ],
)
def test_public_names(module: str, names: set[str]) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == names
    for name in names:
        assert getattr(mod, name) is not None
