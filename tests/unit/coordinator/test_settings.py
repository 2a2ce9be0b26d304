from __future__ import annotations

from pathlib import Path

import pytest

import sage.unified.coordinator as coordinator
from sage.unified.coordinator import ConfigError, CoordinatorSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SAGE_ADMIN_TOKEN", "SAGE_AGENT_TOKEN", "SAGE_COORDINATOR_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(CoordinatorSettings, "toml_files", ())


def test_defaults(sage_home: Path) -> None:
    s = CoordinatorSettings()
    assert (s.host, s.port, s.lease_ttl_s, s.heartbeat_interval_s, s.restart_grace_s) == (
        "127.0.0.1",
        8100,
        10,
        3,
        30,
    )
    assert s.db_path == sage_home / "coordinator" / "coordinator.db"
    assert not s.auth_enabled
    s.check_bind()  # loopback without tokens is fine


def test_env_lists_and_shared_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_COORDINATOR_ADMIN_TOKENS", "a1,a2")
    monkeypatch.setenv("SAGE_AGENT_TOKEN", "ag")
    monkeypatch.setenv("SAGE_COORDINATOR_DB_PATH", "")
    s = CoordinatorSettings()
    assert s.admin_tokens == ["a1", "a2"]
    assert s.agent_tokens == ["ag"]
    assert s.db_path is None
    assert s.admin_token_set().verify("a2")
    assert not s.admin_token_set().verify("ag")


def test_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('port = 9100\nadmin_tokens = ["x"]\n')
    monkeypatch.setenv("SAGE_COORDINATOR_CONFIG", str(path))
    s = CoordinatorSettings()
    assert s.port == 9100
    assert s.admin_tokens == ["x"]


def test_public_bind_without_tokens_refused() -> None:
    with pytest.raises(ConfigError, match="admin and agent tokens"):
        CoordinatorSettings(host="0.0.0.0").check_bind()
    with pytest.raises(ConfigError, match="agent tokens"):
        CoordinatorSettings(host="0.0.0.0", admin_tokens=["a"]).check_bind()
    CoordinatorSettings(host="0.0.0.0", insecure=True).check_bind()
    CoordinatorSettings(host="0.0.0.0", admin_tokens=["a"], agent_tokens=["b"]).check_bind()


def test_app_refuses_unsafe_bind() -> None:
    with pytest.raises(ConfigError):
        coordinator.create_coordinator_app(CoordinatorSettings(host="10.1.2.3", db_path=None))


def test_bad_network_rejected() -> None:
    with pytest.raises(ValueError, match="allowed_networks"):
        CoordinatorSettings(allowed_networks=["not-a-net"])


def test_exported_names() -> None:
    for name in coordinator.__all__:
        assert hasattr(coordinator, name), name
    assert "Coordinator" in coordinator.__all__
    assert "create_management_router" in coordinator.__all__
