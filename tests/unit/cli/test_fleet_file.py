"""Fleet files: TOML, YAML and JSON give the same deployments; mistakes are one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage.unified.cli._fleet_file import load_fleet_file, parse_fleet
from sage.unified.cli.errors import UsageError

TOML = """
[[deployments]]
name = "chat"
replicas = 4

[deployments.engine]
model = "Qwen/Qwen2.5-7B-Instruct"
tensor_parallel_size = 2
max_model_len = 8192

[deployments.placement]
labels = { gpu = "h100" }

[deployments.strategy]
max_surge = 0
max_unavailable = 1
drain_timeout_s = 120
"""

YAML = """
deployments:
  - name: chat
    replicas: 4
    engine:
      model: Qwen/Qwen2.5-7B-Instruct
      tensor_parallel_size: 2
      max_model_len: 8192
    placement:
      labels: {gpu: h100}
    strategy: {max_surge: 0, max_unavailable: 1, drain_timeout_s: 120}
"""


def test_toml_yaml_and_json_read_the_same() -> None:
    from_toml = parse_fleet(TOML, "fleet.toml", ".toml")
    from_yaml = parse_fleet(YAML, "fleet.yaml", ".yaml")
    import tomllib

    from_json = parse_fleet(json.dumps(tomllib.loads(TOML)), "fleet.json", ".json")
    assert from_toml == from_yaml == from_json
    (chat,) = from_toml.deployments
    assert (chat.replicas, chat.engine.tensor_parallel_size) == (4, 2)
    assert chat.placement.labels == {"gpu": "h100"}
    assert (chat.strategy.max_surge, chat.strategy.max_unavailable) == (0, 1)


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        (TOML.replace("tensor_parallel_size", "argv"), ".toml", "unknown field `argv`"),
        (TOML.replace("[[deployments]]", "[[deployment]]"), ".toml", "unknown field `deployment`"),
        (
            TOML + '\n[[deployments]]\nname = "chat"\n[deployments.engine]\nmodel = "m"\n',
            ".toml",
            "more than once",
        ),
        ("deployments = [", ".toml", "not valid TOML"),
        ("deployments: [", ".yaml", "not valid YAML"),
        ("!!python/object:os.system {}", ".yaml", "not valid YAML"),
        ("{}", ".json", "missing required field `deployments`"),
        ("deployments = []", ".toml", "no deployments"),
        (TOML, ".ini", "use a .toml, .yaml"),
        (TOML.replace('name = "chat"', 'name = "Chat_1"'), ".toml", r"deployments\[0\]\.name"),
    ],
)
def test_mistakes_are_one_line_naming_the_file(text: str, suffix: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        parse_fleet(text, f"fleet{suffix}", suffix)
    assert f"fleet{suffix}" in str(caught.value)
    assert "\n" not in str(caught.value).strip() or "YAML" in str(caught.value)


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        load_fleet_file(tmp_path / "nope.toml")
