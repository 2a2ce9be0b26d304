"""``sage llm simulate``: every flag reaches the simulator's configuration."""

from __future__ import annotations

import dataclasses

import pytest

import sage.unified.agent.simulator as simulator
from sage.unified.agent.simulator import SimulatorConfig
from sage.unified.cli.errors import UsageError
from sage.unified.cli.main import app
from sage.unified.cli.simulate import SimulatorOptions


def _run_simulate(monkeypatch: pytest.MonkeyPatch, *flags: str) -> SimulatorConfig:
    started: list[SimulatorConfig] = []

    def run(config: SimulatorConfig) -> int:
        started.append(config)
        return 0

    monkeypatch.setattr(simulator, "run", run)
    with pytest.raises(SystemExit) as exited:
        app(["llm", "simulate", *flags], exit_on_error=False)
    assert exited.value.code == 0
    return started[0]


def test_every_flag_is_a_setting_of_the_simulator() -> None:
    config_fields = {field.name for field in dataclasses.fields(SimulatorConfig)}
    assert {field.name for field in dataclasses.fields(SimulatorOptions)} <= config_fields


def test_defaults_and_given_flags_reach_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run_simulate(monkeypatch, "--model", "m") == SimulatorConfig(model="m")
    config = _run_simulate(
        monkeypatch,
        *("--model", "m", "--served-model-name", "s", "--port", "9000", "--kind", "embedding"),
        *("--ttft-ms", "5", "--crash-after", "7", "--unhealthy", "--enable-control"),
    )
    assert config == SimulatorConfig(
        model="m",
        served_model_name="s",
        port=9000,
        kind="embedding",
        ttft_ms=5.0,
        crash_after=7,
        unhealthy=True,
        enable_control=True,
    )


def test_an_impossible_configuration_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulator, "run", lambda _config: 0)
    with pytest.raises(UsageError, match="cannot hold one sequence"):
        app(["llm", "simulate", "--model", "m", "--kv-blocks", "1"], exit_on_error=False)
