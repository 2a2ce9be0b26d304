from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from sage.unified.agent.runtimes import RuntimeConfig
from sage.unified.agent.settings import CONFIG_ENV, AgentSettings
from sage.unified.sdk.auth import is_loopback_host as is_loopback


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SAGE_AGENT_") or key == "SAGE_HOME":
            monkeypatch.delenv(key)
    # Never read the real /etc/sage or ~/.config/sage in tests.
    monkeypatch.setattr(AgentSettings, "toml_files", (tmp_path / "absent.toml",))


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    s = AgentSettings()
    assert (s.port, s.bind_host, s.engine_port_range, s.model_allowlist) == (
        8200,
        "127.0.0.1",
        (8900, 8999),
        ["*"],
    )
    assert s.sage_home == tmp_path / ".sage"
    assert s.state_dir == tmp_path / ".sage" / "agent"
    assert s.log_dir == tmp_path / ".sage" / "agent" / "logs"
    assert s.simulator_python == sys.executable
    assert s.token is None
    assert (
        s.restart_backoff_initial_s,
        s.restart_backoff_max_s,
        s.restart_max,
        s.restart_window_s,
    ) == (2.0, 60.0, 5, 600.0)


def test_precedence_init_over_env_over_toml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        'port = 8300\nagent_id = "from-toml"\nvllm_executable = "/toml/vllm"\nmodel_allowlist = ["Qwen/*"]\n'
    )
    monkeypatch.setenv(CONFIG_ENV, str(toml))
    s = AgentSettings()
    assert (s.port, s.agent_id, s.vllm_executable, s.model_allowlist) == (
        8300,
        "from-toml",
        "/toml/vllm",
        ["Qwen/*"],
    )
    monkeypatch.setenv("SAGE_AGENT_PORT", "8400")
    monkeypatch.setenv("SAGE_AGENT_AGENT_ID", "from-env")
    s = AgentSettings()
    assert (s.port, s.agent_id, s.vllm_executable) == (8400, "from-env", "/toml/vllm")
    s = AgentSettings(port=8500)
    assert (s.port, s.agent_id) == (8500, "from-env")


def test_later_toml_file_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system, user = tmp_path / "etc.toml", tmp_path / "user.toml"
    system.write_text("port = 1111\nprobe_failures = 7\n")
    user.write_text("port = 2222\n")
    monkeypatch.setattr(AgentSettings, "toml_files", (system, user))
    s = AgentSettings()
    assert (s.port, s.probe_failures) == (2222, 7)


def test_env_forms(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAGE_AGENT_ENGINE_PORT_RANGE", "9000-9010")
    monkeypatch.setenv("SAGE_AGENT_MODEL_ALLOWLIST", "Qwen/*, meta-llama/*")
    monkeypatch.setenv("SAGE_AGENT_TOKEN", "t0k")
    monkeypatch.setenv("SAGE_HOME", str(tmp_path / "home"))
    s = AgentSettings()
    assert s.engine_port_range == (9000, 9010)
    assert s.model_allowlist == ["Qwen/*", "meta-llama/*"]
    assert s.token is not None
    assert s.token.get_secret_value() == "t0k"
    assert "t0k" not in repr(s)
    assert s.sage_home == tmp_path / "home"
    monkeypatch.setenv("SAGE_AGENT_ENGINE_PORT_RANGE", "[9100, 9200]")
    monkeypatch.setenv("SAGE_AGENT_MODEL_ALLOWLIST", '["a", "b"]')
    s = AgentSettings()
    assert (s.engine_port_range, s.model_allowlist) == ((9100, 9200), ["a", "b"])


def test_invalid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="engine_port_range"):
        AgentSettings(engine_port_range=(9000, 8000))
    with pytest.raises(ValidationError, match="restart_backoff_max_s"):
        AgentSettings(restart_backoff_initial_s=10, restart_backoff_max_s=5)
    monkeypatch.setenv("SAGE_AGENT_VLLM_ENTRYPOINT", "bogus")
    with pytest.raises(ValidationError):
        AgentSettings()


def test_runtime_config() -> None:
    s = AgentSettings(
        vllm_executable="/x/python",
        vllm_entrypoint="api_server",
        vllm_shutdown_timeout=False,
        sglang_python="/y/python",
        simulator_python="/z/python",
    )
    assert s.runtime_config() == RuntimeConfig(
        "/x/python", "api_server", False, "/y/python", "/z/python"
    )


def test_bind_safety() -> None:
    AgentSettings().check_bind_safety()
    AgentSettings(bind_host="::1").check_bind_safety()
    AgentSettings(bind_host="localhost").check_bind_safety()
    with pytest.raises(
        ValueError, match=r"refusing to bind the agent API to '0\.0\.0\.0' without a token"
    ):
        AgentSettings(bind_host="0.0.0.0").check_bind_safety()
    with pytest.raises(ValueError, match="SAGE_AGENT_TOKEN"):
        AgentSettings(bind_host="10.1.2.3", token="").check_bind_safety()
    AgentSettings(bind_host="0.0.0.0", token="secret").check_bind_safety()
    AgentSettings(bind_host="0.0.0.0", insecure=True).check_bind_safety()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("gpu-node-1", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_vllm_extra_args_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_AGENT_VLLM_EXTRA_ARGS", "--load-format dummy --kv-cache-dtype 'fp8'")
    monkeypatch.setenv("SAGE_AGENT_VLLM_DEVICE", "cpu")
    config = AgentSettings().runtime_config()
    assert config.vllm_extra_args == ("--load-format", "dummy", "--kv-cache-dtype", "fp8")
    assert config.vllm_device == "cpu"
    monkeypatch.setenv("SAGE_AGENT_VLLM_EXTRA_ARGS", '["--enforce-eager"]')
    assert AgentSettings().vllm_extra_args == ["--enforce-eager"]
