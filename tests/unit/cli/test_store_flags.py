"""``--store`` and the etcd flags of ``sage gateway start|run`` and ``sage coordinator run``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sage.unified.cli._store import StoreOptions
from sage.unified.cli.errors import UsageError
from sage.unified.cli.gateway import GatewayOptions
from sage.unified.gateway.app import embedded_coordinator_settings
from sage.unified.gateway.settings import GatewaySettings


def test_store_flags_become_settings_and_are_passed_to_a_started_gateway() -> None:
    flags = StoreOptions(
        store="etcds://e1:2379,e2:2379",
        etcd_ca=Path("/etc/sage/etcd-ca.pem"),
        etcd_user="sage",
        etcd_password_file=Path("/run/credentials/etcd"),
    )
    assert flags.settings_kwargs() == {
        "store": "etcds://e1:2379,e2:2379",
        "etcd_ca_file": Path("/etc/sage/etcd-ca.pem"),
        "etcd_username": "sage",
        "etcd_password_file": Path("/run/credentials/etcd"),
    }
    options = GatewayOptions(port=8001, storage=flags)
    assert options.flags()[-8:] == [
        "--store", "etcds://e1:2379,e2:2379", "--etcd-ca", "/etc/sage/etcd-ca.pem",
        "--etcd-user", "sage", "--etcd-password-file", "/run/credentials/etcd",
    ]  # fmt: skip
    assert StoreOptions().settings_kwargs() == {}


def test_a_password_on_the_command_line_is_refused() -> None:
    with pytest.raises(UsageError, match="must not carry a password"):
        StoreOptions(store="etcd://sage:s3cret@e1:2379").settings_kwargs()


def test_the_embedded_coordinator_gets_the_gateways_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_GATEWAY_ETCD_PASSWORD", "from-env")
    settings = GatewaySettings(store="etcd://e1:2379", etcd_username="sage")
    coordinator = embedded_coordinator_settings(settings)
    assert coordinator.etcd_store
    assert coordinator.etcd_username == "sage"
    assert coordinator.etcd_password_value() == "from-env"
    assert not embedded_coordinator_settings(GatewaySettings()).etcd_store
