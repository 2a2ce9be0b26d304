"""Gateway: the OpenAI-compatible proxy, routing, retries, and the management API."""

from __future__ import annotations

__all__: list[str] = []
