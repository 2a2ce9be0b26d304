#!/usr/bin/env python3
"""Export the OpenAPI documents of the gateway, coordinator and agent apps.

    .venv/bin/python scripts/export_openapi.py            # writes docs/openapi/*.json
    .venv/bin/python scripts/export_openapi.py --check    # exit 1 if the files are stale

The apps are built, never started: no lifespan runs, no port is opened, no file is
written outside ``docs/openapi/``. The gateway is built in its default (embedded)
mode, so its document holds the management and agent-report routes of the embedded
coordinator, and the OpenAI proxy routes (raw ASGI handlers, described from the
endpoint catalog).

Each document is the one the app serves at ``/schema/openapi.json``, fetched in process:
what is committed is what a client gets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["DOCUMENTS", "OUT_DIR", "main", "render_all"]

OUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "openapi"
VERSION = "1"
"""The API version in ``info.version``; not the package version, so a release does
not make the documents drift."""


def _schema(app: Any, title: str, description: str) -> dict[str, Any]:
    """The document ``app`` serves at ``/schema/openapi.json`` (no lifespan runs)."""
    import httpx

    async def fetch() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            response = await client.get("/schema/openapi.json")
        response.raise_for_status()
        served: dict[str, Any] = response.json()
        return served

    document = asyncio.run(fetch())
    document["info"]["title"] = title
    document["info"]["version"] = VERSION
    document["info"]["description"] = description
    return document


def _gateway(home: Path) -> dict[str, Any]:
    from sage.unified.gateway.app import create_gateway_app
    from sage.unified.gateway.settings import GatewaySettings

    settings = GatewaySettings(sage_home=home)
    return _schema(
        create_gateway_app(settings),
        "SAGE Unified Gateway",
        "Gateway (embedded mode): the OpenAI routes, models, sessions, health, metrics, "
        "/v1/management/* and agent reports. Request and answer bodies of the OpenAI routes "
        "are vLLM's; see docs/api.md.",
    )


def _coordinator(home: Path) -> dict[str, Any]:
    from sage.unified.coordinator import CoordinatorSettings, create_coordinator_app

    settings = CoordinatorSettings(db_path=None)
    return _schema(
        create_coordinator_app(settings),
        "SAGE Unified Gateway coordinator",
        "Standalone coordinator (sage coordinator run, port 8100).",
    )


def _agent(home: Path) -> dict[str, Any]:
    from sage.unified.agent.app import create_agent_app
    from sage.unified.agent.service import Agent
    from sage.unified.agent.settings import AgentSettings

    settings = AgentSettings(sage_home=home, agent_id="export", coordinator_url=None)
    return _schema(
        create_agent_app(Agent(settings)),
        "SAGE Unified Gateway agent",
        "Per-host agent (sage agent run, port 8200).",
    )


DOCUMENTS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "gateway": _gateway,
    "coordinator": _coordinator,
    "agent": _agent,
}


def _clean_environment() -> None:
    # Settings read SAGE_* variables and TOML files; none of them changes the routes,
    # but a token or a path must never leak into a committed document.
    for name in list(os.environ):
        if name.startswith("SAGE_"):
            del os.environ[name]


def render_all() -> dict[str, str]:
    """The documents as text (sorted keys, two-space indent, final newline), by name."""
    _clean_environment()
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sage-openapi-") as tmp:
        os.environ["SAGE_HOME"] = tmp
        try:
            for name, build in DOCUMENTS.items():
                with warnings.catch_warnings():
                    # Litestar 2 warns when an ASGI handler leaves copy_scope unset
                    # (the gateway's proxy routes); it has no effect on the document.
                    warnings.filterwarnings(
                        "ignore", message=".*copy_scope", category=DeprecationWarning
                    )
                    document = build(Path(tmp))
                out[name] = json.dumps(document, indent=2, sort_keys=True) + "\n"
        finally:
            del os.environ["SAGE_HOME"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/openapi is stale")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    args = parser.parse_args(argv)
    stale: list[str] = []
    for name, text in render_all().items():
        path = args.out / f"{name}.json"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print(
            "stale: " + ", ".join(stale) + "; run `.venv/bin/python scripts/export_openapi.py`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
