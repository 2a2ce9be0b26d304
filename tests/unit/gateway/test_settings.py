"""Gateway configuration: modes, shared secrets, and refusing an open non-loopback bind."""

from __future__ import annotations

import pytest

from sage.unified.gateway.settings import GatewaySettings, InsecureBindError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SAGE_API_KEYS", "SAGE_ADMIN_TOKEN", "SAGE_AGENT_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_modes() -> None:
    assert GatewaySettings().mode == "embedded"
    assert GatewaySettings(coordinator_url="http://c:8100").mode == "remote"
    assert GatewaySettings(backends=["http://e:8000"]).mode == "static"


def test_shared_secret_variables_and_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_API_KEYS", "k1, k2")
    monkeypatch.setenv("SAGE_ADMIN_TOKEN", "adm")
    monkeypatch.setenv("SAGE_GATEWAY_BACKENDS", "http://a:1,http://b:2")
    settings = GatewaySettings()
    assert settings.api_key_set().verify("k2")
    assert settings.admin_token_set().verify("adm")
    assert settings.backends == ["http://a:1", "http://b:2"]
    assert "k1" not in repr(settings)


def test_loopback_needs_no_keys() -> None:
    GatewaySettings(host="127.0.0.1").check_bind_safety()
    GatewaySettings(host="::1").check_bind_safety()


def test_public_bind_without_keys_is_refused_with_what_to_set() -> None:
    with pytest.raises(InsecureBindError) as info:
        GatewaySettings(host="0.0.0.0").check_bind_safety()
    message = str(info.value)
    assert "SAGE_API_KEYS" in message
    assert "SAGE_ADMIN_TOKEN" in message
    assert "SAGE_AGENT_TOKEN" in message
    assert "--insecure" in message


def test_public_bind_with_all_secrets_or_insecure_is_allowed() -> None:
    GatewaySettings(
        host="0.0.0.0", api_keys=["k"], admin_tokens=["a"], agent_tokens=["t"]
    ).check_bind_safety()
    GatewaySettings(host="0.0.0.0", insecure=True).check_bind_safety()
    # Static mode has no coordinator, so no agent token is needed.
    GatewaySettings(
        host="0.0.0.0", backends=["http://e:1"], api_keys=["k"], admin_tokens=["a"]
    ).check_bind_safety()


def test_keepalive_must_stay_below_the_engines_5_s() -> None:
    with pytest.raises(ValueError, match="keepalive_expiry_s"):
        GatewaySettings(keepalive_expiry_s=5.0)


def test_studio_is_never_served_off_loopback_without_an_admin_token() -> None:
    assert GatewaySettings().studio_refusal() is None
    open_bind = GatewaySettings(host="0.0.0.0", insecure=True)
    refusal = open_bind.studio_refusal()
    assert refusal is not None
    assert "admin token" in refusal
    assert GatewaySettings(host="0.0.0.0", admin_tokens=["adm"]).studio_refusal() is None
    assert "turned off" in (GatewaySettings(studio=False).studio_refusal() or "")


@pytest.mark.anyio
async def test_a_gateway_on_an_open_address_answers_403_for_studio(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from sage.unified.gateway.app import create_gateway_app

    settings = GatewaySettings(
        host="0.0.0.0", insecure=True, backends=["http://127.0.0.1:9"], sage_home=tmp_path
    )
    app = create_gateway_app(settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw.localhost"
    ) as client:
        response = await client.get("/studio/")
    assert response.status_code == 403
    assert "without an admin token" in response.text


def test_the_default_policy_is_cache_aware_with_its_knobs() -> None:
    from sage.unified.gateway.routing import DEFAULT_POLICY, get_policy

    settings = GatewaySettings(cache_aware_engine_cache_tokens=4096, cache_aware_load_factor=2.0)
    assert settings.routing_policy == DEFAULT_POLICY == "cache_aware"
    policy = get_policy(settings.routing_policy)(**settings.routing_policy_options())
    assert policy.engine_cache_tokens == 4096  # type: ignore[attr-defined]
    assert policy.load_factor == 2.0  # type: ignore[attr-defined]
    assert GatewaySettings(routing_policy="least_load").routing_policy_options() == {}


def test_agent_reports_need_a_token_whenever_any_credential_is_set() -> None:
    # "Admin token only" (API keys and an admin token, no agent token): the embedded control
    # plane used to take agent reports from anyone, so any local process could put an
    # engine under any model name into routing.
    from sage.unified.gateway.app import embedded_coordinator_settings

    locked = GatewaySettings(admin_tokens=["admin"], api_keys=["key"])
    coordinator = embedded_coordinator_settings(locked)
    assert coordinator.agent_tokens == [locked.local_agent_token()]
    assert coordinator.agent_command_token == locked.local_agent_token()
    configured = GatewaySettings(admin_tokens=["admin"], agent_tokens=["agent-secret"])
    assert embedded_coordinator_settings(configured).agent_tokens == ["agent-secret"]
    # Nothing configured (loopback only): nothing to derive, reports stay open as before.
    assert embedded_coordinator_settings(GatewaySettings()).agent_tokens == []
