"""Coordinator: registry of agents and engines, leases, revisions, placement, persistence."""

from __future__ import annotations

__all__: list[str] = []
