"""Per-host agent: launches, supervises, drains and reports engines; the engine simulator."""

from __future__ import annotations

__all__: list[str] = []
