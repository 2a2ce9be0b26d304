from __future__ import annotations

from pathlib import Path

import pytest

from sage.unified.agent.allowlist import model_allowed, outside_model_roots
from sage.unified.agent.settings import AgentSettings


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


def test_paths_outside_the_model_roots_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "tiny").mkdir(parents=True)
    (root / "escape").symlink_to("/etc")
    roots = [root]
    assert outside_model_roots(str(root / "tiny"), roots) is None
    assert outside_model_roots("Qwen/Qwen3-8B", roots) is None  # a name: the allowlist decides
    for path in ("/etc/passwd", "/proc/self/environ", "/root/.ssh/id_rsa"):
        why = outside_model_roots(path, roots)
        assert why is not None
        assert str(root) in why
        assert "SAGE_AGENT_MODEL_ROOTS" in why
    escaped = outside_model_roots(str(root / "escape" / "passwd"), roots)
    assert escaped is not None
    assert "resolves to '/etc/passwd'" in escaped
    # A root given through a symlink, or with "..", still holds what lies in it.
    (tmp_path / "alias").symlink_to(root)
    assert outside_model_roots(str(root / "tiny"), [tmp_path / "alias"]) is None
    assert outside_model_roots(str(root / "tiny"), [tmp_path / "x" / ".." / "models"]) is None
    assert outside_model_roots(str(root / "tiny"), []) is not None


def test_model_roots_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HOME", raising=False)
    defaults = AgentSettings(sage_home=tmp_path).model_root_dirs()
    assert defaults == [tmp_path / "models", Path("~/.cache/huggingface").expanduser()]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert AgentSettings(sage_home=tmp_path).model_root_dirs()[1] == tmp_path / "hf"
    monkeypatch.setenv("SAGE_AGENT_MODEL_ROOTS", "/srv/models, /data/hf")
    assert AgentSettings(sage_home=tmp_path).model_root_dirs() == [
        Path("/srv/models"),
        Path("/data/hf"),
    ]
    monkeypatch.setenv("SAGE_AGENT_MODEL_ROOTS", "[]")
    assert AgentSettings(sage_home=tmp_path).model_root_dirs() == []
    monkeypatch.setenv("SAGE_AGENT_MODEL_ROOTS", "models")
    with pytest.raises(ValueError, match="absolute"):
        AgentSettings(sage_home=tmp_path)
