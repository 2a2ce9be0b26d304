"""``--verbose`` on the fleet, host and routing commands (issue 20, item 5): each says which
gateway it talks to and why, with the rule every other command follows.

The real ``sage`` binary against a real gateway, with none of the outer ``SAGE_*`` settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

SAGE = str(Path(sys.executable).parent / "sage")


def _sage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SAGE, *args], env=env, capture_output=True, text=True, timeout=90)


def test_fleet_host_and_routing_commands_say_which_gateway_and_why(
    start_gateway: Callable[..., Any], sage_home: Path
) -> None:
    gateway = start_gateway()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAGE_")}
    env = {**clean, "SAGE_HOME": str(sage_home), "SAGE_GATEWAY_URL": gateway.url}
    chosen = f"gateway: {gateway.url} (from SAGE_GATEWAY_URL)"

    for args in (
        ("llm", "deployments", "--json"),
        ("llm", "routing", "--json"),
    ):
        result = _sage(env, *args, "--verbose")
        assert result.returncode == 0, (args, result.stderr)
        assert chosen in result.stderr
        quiet = _sage(env, *args)
        assert quiet.returncode == 0, (args, quiet.stderr)
        assert "gateway:" not in quiet.stderr

    # The choice is printed before the command talks to the gateway, so an operator sees
    # which gateway refused it.
    for args in (
        ("llm", "delete", "nope"),
        ("llm", "rollout", "status", "nope"),
        ("llm", "rollout", "undo", "nope"),
        ("agent", "cordon", "nope"),
        ("agent", "uncordon", "nope"),
        ("agent", "drain", "nope"),
        ("llm", "gpu", "clear", "nope:0"),
    ):
        result = _sage(env, *args, "--verbose")
        assert result.returncode != 0, args
        assert result.stderr.startswith(chosen), (args, result.stderr)
        assert "Traceback" not in result.stderr

    preset = _sage(env, "llm", "preset", "apply", "simulated-demo", "--dry-run", "--verbose")
    assert preset.returncode == 0, preset.stderr
    assert preset.stderr.startswith(chosen), preset.stderr

    explicit = _sage(env, "llm", "deployments", "--url", gateway.url, "--verbose")
    assert f"gateway: {gateway.url} (from --url)" in explicit.stderr


def test_apply_with_verbose_names_the_gateway(
    start_gateway: Callable[..., Any], sage_home: Path, tmp_path: Path
) -> None:
    gateway = start_gateway()
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[[deployments]]\nname = "tiny"\nreplicas = 1\n'
        '[deployments.engine]\nmodel = "tiny"\nruntime = "simulated"\n'
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAGE_")}
    env = {**clean, "SAGE_HOME": str(sage_home), "SAGE_GATEWAY_URL": gateway.url}
    planned = _sage(env, "llm", "apply", "-f", str(fleet), "--dry-run", "--json", "--verbose")
    assert planned.returncode == 0, planned.stderr
    assert f"gateway: {gateway.url} (from SAGE_GATEWAY_URL)" in planned.stderr
