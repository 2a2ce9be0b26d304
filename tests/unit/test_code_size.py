"""The size rule of our style guide (small modules with one job): no product module over 500
lines and no function over 80, so a module can be read in one sitting and a function on
one screen. A module that grows past it is split along its jobs, not exempted here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("sdk", "agent", "coordinator", "gateway", "cli")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_rule_sees_the_product_code() -> None:
    # A wrong root would make the rule pass over nothing.
    assert len(_modules()) > 100


def test_no_module_is_over_500_lines() -> None:
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in _modules()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"split these along their jobs: {too_long}"


def test_no_function_is_over_80_lines() -> None:
    too_long: dict[str, int] = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    assert not too_long, f"split these: {too_long}"
