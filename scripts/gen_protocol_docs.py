#!/usr/bin/env python3
"""Write the protocol table of ``docs/architecture.md`` from the declarations.

    .venv/bin/python scripts/gen_protocol_docs.py            # rewrites the table
    .venv/bin/python scripts/gen_protocol_docs.py --check    # exit 1 if it is stale

The table sits between the ``<!-- protocol:begin -->`` and ``<!-- protocol:end -->``
markers; every row is one endpoint of ``sage.unified.sdk.protocol.ENDPOINTS``. Edit the
declarations (``sdk/protocol/_catalog.py``), not the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sage.unified.sdk.protocol import ENDPOINTS, Endpoint

__all__ = ["DOC", "main", "render"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
BEGIN = "<!-- protocol:begin -->"
END = "<!-- protocol:end -->"


def _type_name(value: object) -> str:
    if value is None:
        return "—"
    name = getattr(value, "__name__", None)
    return f"`{name}`" if name and name != "dict" else "OpenAI JSON"


def _row(endpoint: Endpoint[object, object]) -> str:
    query = f"?{'&'.join(endpoint.query)}" if endpoint.query else ""
    return (
        f"| `{endpoint.name}` | `{endpoint.method} {endpoint.path}{query}` "
        f"| {_type_name(endpoint.request)} | {_type_name(endpoint.reply)} ({endpoint.status}) "
        f"| {endpoint.scope.value} | {endpoint.retry.value} | {endpoint.summary} |"
    )


def render() -> str:
    """The table (markers included)."""
    lines = [
        BEGIN,
        "| endpoint | method and path | request | reply (status) | scope | retry | what |",
        "|---|---|---|---|---|---|---|",
        *(_row(e) for e in ENDPOINTS),
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the table is stale")
    args = parser.parse_args(argv)
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    updated = text[:start] + render() + text[end:]
    if args.check:
        if updated != text:
            print(f"stale: the protocol table of {DOC}; run scripts/gen_protocol_docs.py")
            return 1
        return 0
    DOC.write_text(updated, encoding="utf-8")
    print(f"wrote the protocol table of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
