"""The fleet file in docs/operations.md is a valid fleet, as written."""

from __future__ import annotations

import re
from pathlib import Path

from sage.unified.cli._fleet_file import parse_fleet

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_the_example_fleet_file_parses() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    blocks = re.findall(r"^```toml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    fleets = [b for b in blocks if "[[deployments]]" in b]
    assert fleets, "docs/operations.md has no example fleet file"
    for block in fleets:
        fleet = parse_fleet(block, "docs/operations.md", ".toml")
        assert [d.name for d in fleet.deployments] == ["chat", "embed"]
        chat = fleet.deployments[0]
        assert chat.placement.labels == {"gpu": "h100"}
        assert (chat.strategy.max_surge, chat.strategy.max_unavailable) == (1, 0)
