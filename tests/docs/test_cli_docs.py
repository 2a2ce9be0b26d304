"""docs/cli.md is generated from the cyclopts app and must match it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_cli_docs.py"
CLI_MD = ROOT / "docs" / "cli.md"


def test_cli_md_matches_the_app() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, (
        "docs/cli.md is out of date with the `sage` commands: run "
        f"`.venv/bin/python scripts/gen_cli_docs.py` and commit the result.\n{result.stderr}"
    )


def test_cli_md_documents_every_command_and_flag() -> None:
    text = CLI_MD.read_text(encoding="utf-8")
    commands = [
        "sage gateway start",
        "sage gateway run",
        "sage gateway stop",
        "sage gateway restart",
        "sage gateway status",
        "sage gateway logs",
        "sage agent run",
        "sage agent status",
        "sage coordinator run",
        "sage llm engine list",
        "sage llm engine start",
        "sage llm engine stop",
        "sage llm engine logs",
        "sage llm gpu",
        "sage llm gpu clear",
        "sage llm apply",
        "sage llm deployments",
        "sage llm delete",
        "sage llm rollout status",
        "sage llm rollout undo",
        "sage llm preset list",
        "sage llm preset show",
        "sage llm preset apply",
        "sage agent cordon",
        "sage agent drain",
        "sage agent uncordon",
        "sage llm simulate",
        "sage config show",
        "sage studio start",
        "sage studio stop",
        "sage studio status",
    ]
    headings = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}
    assert set(commands) <= headings, set(commands) - headings
    # A flag a user types must appear in the reference.
    for flag in (
        "--drain",
        "--wait",
        "--runtime",
        "--no-local-agent",
        "--coordinator",
        "--json",
        "--no-browser",
        "--dry-run",
        "--yes",
        "--to-revision",
    ):
        assert f"`{flag}" in text, flag
