"""Configuration files: the one a *_CONFIG variable names must exist, and a file that is
not TOML is refused with its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from sage.unified.agent.settings import AgentSettings
from sage.unified.coordinator import CoordinatorSettings
from sage.unified.gateway.settings import GatewaySettings
from sage.unified.sdk.config import ConfigFileError

CLASSES = [
    (GatewaySettings, "SAGE_GATEWAY_CONFIG"),
    (AgentSettings, "SAGE_AGENT_CONFIG"),
    (CoordinatorSettings, "SAGE_COORDINATOR_CONFIG"),
]


@pytest.mark.parametrize(("cls", "variable"), CLASSES)
def test_a_named_file_that_is_missing_is_refused(
    cls: type, variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.toml"
    monkeypatch.setenv(variable, str(missing))
    with pytest.raises(ConfigFileError) as info:
        cls()
    assert variable in str(info.value)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize(("cls", "variable"), CLASSES)
def test_a_file_that_is_not_toml_is_named(
    cls: type, variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("port = [\n")
    monkeypatch.setenv(variable, str(broken))
    with pytest.raises(ConfigFileError, match=f"{broken} is not valid TOML"):
        cls()


def test_a_named_file_that_exists_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named = tmp_path / "gateway.toml"
    named.write_text("port = 8123\n")
    monkeypatch.setenv("SAGE_GATEWAY_CONFIG", str(named))
    monkeypatch.delenv("SAGE_GATEWAY_PORT", raising=False)
    assert GatewaySettings().port == 8123
