"""docs/architecture.md: the state diagram is the state machine of sage.unified.sdk.states."""

from __future__ import annotations

import re
from pathlib import Path

from sage.unified.sdk.states import EngineEvent, EngineState, IllegalTransitionError, transition

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
_EDGE = re.compile(r"^\s*([A-Z]+) --> ([A-Z]+): ([a-z]+)\s*$")


def _diagram_edges() -> set[tuple[str, str, str]]:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    blocks = re.findall(r"^```mermaid\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    diagrams = [b for b in blocks if "stateDiagram" in b]
    assert len(diagrams) == 1, "expected one mermaid stateDiagram in docs/architecture.md"
    edges = set()
    for line in diagrams[0].splitlines():
        if match := _EDGE.match(line):
            edges.add((match[1], match[2], match[3]))
    return edges


def _machine_edges() -> set[tuple[str, str, str]]:
    edges = set()
    for state in EngineState:
        for event in EngineEvent:
            try:
                target = transition(state, event).state
            except IllegalTransitionError:
                continue
            edges.add((state.value, target.value, event.value))
    return edges


def test_state_diagram_matches_the_state_machine() -> None:
    diagram = _diagram_edges()
    machine = _machine_edges()
    assert diagram == machine, (
        f"docs/architecture.md diagram differs from sdk/states.py: "
        f"only in the doc {sorted(diagram - machine)}, only in the code {sorted(machine - diagram)}"
    )


def test_protocol_table_is_generated_from_the_declarations() -> None:
    import subprocess
    import sys

    script = ARCHITECTURE.parents[1] / "scripts" / "gen_protocol_docs.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
