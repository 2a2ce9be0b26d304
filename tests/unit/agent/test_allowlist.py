from __future__ import annotations

import pytest

from sage.unified.agent.allowlist import model_allowed


@pytest.mark.parametrize(
    ("model", "patterns", "allowed"),
    [
        ("Qwen/Qwen3-8B", ["*"], True),
        ("Qwen/Qwen3-8B", ["Qwen/*"], True),
        ("qwen/Qwen3-8B", ["Qwen/*"], False),
        ("meta-llama/Llama-3.1-8B", ["Qwen/*", "meta-llama/Llama-3.1-*"], True),
        ("meta-llama/Llama-3.2-1B", ["meta-llama/Llama-3.1-*"], False),
        ("anything", [], False),
        ("sim-1", ["sim-?"], True),
    ],
)
def test_model_allowed(model: str, patterns: list[str], allowed: bool) -> None:
    assert model_allowed(model, patterns) is allowed
