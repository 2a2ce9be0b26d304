"""Per-host agent: launches, supervises, drains and reports engines; the engine simulator.

``Agent`` is the service (an async context manager), ``create_agent_app`` its HTTP API,
and :mod:`sage.unified.agent.main` runs both (``sage agent run``).
"""

from __future__ import annotations

from sage.unified.agent.app import create_agent_app
from sage.unified.agent.service import Agent
from sage.unified.agent.settings import AgentSettings

__all__ = ["Agent", "AgentSettings", "create_agent_app"]
