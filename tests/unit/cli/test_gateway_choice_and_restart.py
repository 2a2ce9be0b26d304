"""Pure rules of the CLI: which gateway a command talks to, and what a restart keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from sage.unified.cli._common import DEFAULT_GATEWAY_URL, choose_gateway
from sage.unified.cli._gateway_config import (
    RecordedConfig,
    differences,
    dropped_credentials,
    restart_environment,
    snapshot,
)
from sage.unified.gateway.settings import GatewaySettings

RECORDED = "http://127.0.0.1:8010"


def test_url_flag_then_environment_then_the_running_gateway_then_the_default() -> None:
    assert choose_gateway("http://a:1/", "http://b:2", RECORDED).url == "http://a:1"
    from_env = choose_gateway(None, "http://b:2/, http://c:3", RECORDED)
    assert (from_env.url, from_env.source) == ("http://b:2", "SAGE_GATEWAY_URL")
    running = choose_gateway(None, "", RECORDED)
    assert running.url == RECORDED
    assert running.mismatch is None
    assert choose_gateway(None, None, None).url == DEFAULT_GATEWAY_URL


def test_a_warning_only_when_the_environment_hides_the_running_gateway() -> None:
    assert choose_gateway(None, "http://b:2", RECORDED).mismatch is not None
    assert choose_gateway("http://a:1", None, RECORDED).mismatch is None  # explicit
    assert choose_gateway(None, RECORDED, RECORDED).mismatch is None


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("SAGE_API_KEYS", "SAGE_ADMIN_TOKEN", "SAGE_AGENT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAGE_GATEWAY_CONFIG", str(tmp_path / "empty.toml"))
    (tmp_path / "empty.toml").write_text("")


@pytest.mark.usefixtures("clean_env")
def test_the_record_keeps_settings_and_credential_names_never_values(tmp_path: Path) -> None:
    settings = GatewaySettings(
        port=8010, agent_port=8210, api_keys=["secret-key"], sage_home=tmp_path
    )
    recorded = RecordedConfig.of(settings, {"port": 8010, "log_file": tmp_path / "g.log"})
    assert "secret-key" not in str(recorded.to_json())
    assert recorded.credentials == ["api_keys"]
    assert recorded.settings["agent_port"] == 8210
    assert RecordedConfig.from_json(recorded.to_json()) == recorded
    assert RecordedConfig.from_json({"settings": {}}) is None


@pytest.mark.usefixtures("clean_env")
def test_restart_environment_reproduces_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = GatewaySettings(
        port=8010, agent_port=8210, backends=["http://e:1"], sage_home=tmp_path
    )
    recorded = snapshot(running)
    shell = {"SAGE_GATEWAY_AGENT_PORT": "8200", "sage_gateway_port": "9", "PATH": "/bin"}
    environment = restart_environment(recorded, shell)
    assert environment["PATH"] == "/bin"
    assert "sage_gateway_port" not in environment
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert snapshot(GatewaySettings()) == recorded
    assert GatewaySettings().coordinator_url is None  # "null" is None


@pytest.mark.usefixtures("clean_env")
def test_a_missing_credential_is_named_a_rotated_one_is_not(tmp_path: Path) -> None:
    started = ["api_keys", "admin_tokens"]
    none = GatewaySettings(sage_home=tmp_path)
    assert dropped_credentials(started, none) == [
        "API keys (SAGE_API_KEYS)",
        "an admin token (SAGE_ADMIN_TOKEN)",
    ]
    rotated = GatewaySettings(api_keys=["new"], admin_tokens=["new"], sage_home=tmp_path)
    assert dropped_credentials(started, rotated) == []


def test_differences_name_the_setting_and_both_values() -> None:
    assert differences({"agent_port": 8210, "port": 1}, {"agent_port": 8200, "port": 1}) == [
        "agent_port 8210 (this shell: 8200)"
    ]
