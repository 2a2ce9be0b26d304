"""Packaging: one distribution under the ``sage.unified`` namespace, nothing bare.

Run with ``pytest`` (not ``python -m pytest``) so the installed package, not the source
folders, is what these tests import.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

COMPONENTS = ("agent", "coordinator", "gateway", "sdk", "cli")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", COMPONENTS)
def test_no_bare_top_level_module(name: str) -> None:
    assert importlib.util.find_spec(name) is None, f"a bare '{name}' module is importable"


def test_sage_and_sage_unified_are_namespaces() -> None:
    import sage
    import sage.unified

    assert getattr(sage, "__file__", None) is None
    assert getattr(sage.unified, "__file__", None) is None


@pytest.mark.parametrize("name", COMPONENTS)
def test_components_import_under_sage_unified_and_export_what_they_list(name: str) -> None:
    module = importlib.import_module(f"sage.unified.{name}")
    exported = module.__all__
    missing = [attr for attr in exported if not hasattr(module, attr)]
    assert not missing


def test_public_names_of_the_sdk() -> None:
    import sage.unified.sdk as sdk

    for name in (
        "UnifiedInferenceClient",
        "AsyncUnifiedInferenceClient",
        "NoBackendAvailableError",
        "StreamInterruptedError",
        "EngineSpec",
        "EngineInfo",
        "EngineState",
        "RoutingTable",
        "Backend",
        "GpuInfo",
        "AgentReport",
        "transition",
    ):
        assert name in sdk.__all__


def test_console_script_and_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sage.unified.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == importlib.metadata.version("sage-unified-gateway")
    script = Path(sys.executable).parent / "sage"
    assert script.exists()


@pytest.mark.slow
def test_wheel_holds_only_the_namespace_and_no_init_of_it(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"sage", "sage_unified_gateway-0.1.0.dist-info"}
    assert "sage/__init__.py" not in names
    assert "sage/unified/__init__.py" not in names
    for component in COMPONENTS:
        assert f"sage/unified/{component}/__init__.py" in names
        assert f"sage/unified/{component}/py.typed" in names
    shipped = {n for n in names if n.startswith("sage/unified/gateway/studio/static/")}
    source = {
        f"sage/unified/gateway/studio/{p.relative_to(REPO / 'gateway' / 'studio').as_posix()}"
        for p in (REPO / "gateway" / "studio" / "static").rglob("*")
        if p.is_file()
    }
    assert shipped == source, "Studio's static files must all be package data"
    presets = {n for n in names if n.startswith("sage/unified/cli/presets/")}
    assert presets == {
        f"sage/unified/cli/presets/{p.name}" for p in (REPO / "cli" / "presets").glob("*.toml")
    }, "the deployment presets must all be package data"


def test_studio_files_are_installed_with_the_package() -> None:
    from sage.unified.gateway.studio import STATIC_FILES

    installed = {p.name for p in (STATIC_FILES / "js").iterdir()}
    source = {p.name for p in (REPO / "gateway" / "studio" / "static" / "js").glob("*.js")}
    assert installed == source
    for name in ("index.html", "studio.css", "favicon.svg"):
        assert (STATIC_FILES / name).is_file(), name


def test_deployment_presets_are_installed_with_the_package() -> None:
    from sage.unified.cli._fleet_file import preset_names, read_preset

    source = {p.stem for p in (REPO / "cli" / "presets").glob("*.toml")}
    assert set(preset_names()) == source
    assert {"qwen-lite", "qwen-mini-with-embeddings", "simulated-demo"} <= source
    for name in preset_names():
        preset = read_preset(name)  # every shipped preset is a valid fleet
        assert preset.name == name
        assert preset.deployments


def test_public_names_of_the_gateway_server() -> None:
    import sage.unified.gateway.server as server

    assert set(server.__all__) == {
        "HttpServer",
        "LifespanFailed",
        "ServerConfig",
        "connection_cap",
        "raise_open_file_limit",
    }
    assert all(hasattr(server, name) for name in server.__all__)


def test_public_names_of_sessions_and_studio() -> None:
    import sage.unified.gateway.sessions as sessions
    import sage.unified.gateway.studio as studio

    assert {
        "SessionStore",
        "SqliteSessionStore",
        "SessionLimits",
        "SessionChat",
        "PreparedChat",
        "create_sessions_router",
        "request_owner",
    } <= set(sessions.__all__)
    assert set(studio.__all__) == {"STATIC_FILES", "create_studio_router"}
    for module in (sessions, studio):
        assert all(hasattr(module, name) for name in module.__all__)
