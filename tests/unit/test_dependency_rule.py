"""The dependency rule between the top-level packages (docs/architecture.md).

The SDK depends on nothing of ours; the agent and the coordinator only on the SDK (they
talk over HTTP); the gateway may import the coordinator (the embedded control plane) and
the agent only in ``gateway/main.py`` (to run the local agent in its process); nothing
imports the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("sdk", "agent", "coordinator", "gateway", "cli")
ALLOWED = {
    "sdk": set(),
    "agent": {"sdk"},
    "coordinator": {"sdk"},
    "gateway": {"sdk", "coordinator", "agent"},
    "cli": {"sdk", "agent", "coordinator", "gateway"},
}
AGENT_IN_GATEWAY = {"gateway/main.py"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["sage", "unified"] and len(parts) > 2:
                found.add(parts[2])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_the_rule_allows(package: str) -> None:
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for imported in _imports(path) - {package}:
            allowed = imported in ALLOWED[package]
            if package == "gateway" and imported == "agent":
                allowed = relative in AGENT_IN_GATEWAY
            if not allowed:
                problems.append(f"{relative} imports sage.unified.{imported}")
    assert problems == []
