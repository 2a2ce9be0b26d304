"""docs/openapi/*.json are exported from the apps and docs/api.md covers every route."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "export_openapi.py"
OPENAPI = ROOT / "docs" / "openapi"
API_MD = ROOT / "docs" / "api.md"
NAMES = ("gateway", "coordinator", "agent")


def test_openapi_documents_match_the_apps() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, (
        "docs/openapi/*.json are out of date with the apps: run "
        f"`.venv/bin/python scripts/export_openapi.py` and commit the result.\n{result.stderr}"
    )


def test_documents_are_openapi_3_with_the_expected_routes() -> None:
    expected = {
        "gateway": {"/v1/models", "/readyz", "/v1/management/backends", "/v1/agents/{agent_id}"},
        "coordinator": {"/readyz", "/v1/management/engines/start", "/v1/agents/{agent_id}"},
        "agent": {"/healthz", "/v1/engines", "/v1/engines/{engine_id}/drain"},
    }
    for name in NAMES:
        document = json.loads((OPENAPI / f"{name}.json").read_text(encoding="utf-8"))
        assert document["openapi"].startswith("3."), name
        assert expected[name] <= set(document["paths"]), name


def test_api_md_documents_every_route_of_every_document() -> None:
    text = API_MD.read_text(encoding="utf-8")
    missing = []
    for name in NAMES:
        document = json.loads((OPENAPI / f"{name}.json").read_text(encoding="utf-8"))
        for path, operations in document["paths"].items():
            for method in operations:
                if f"{method.upper()} {path}`" not in text:
                    missing.append(f"{name}: {method.upper()} {path}")
    assert missing == [], f"docs/api.md does not document: {missing}"
