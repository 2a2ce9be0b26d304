"""The engine simulator: a real HTTP server that behaves like vLLM's OpenAI server.

Run it as ``python -m sage.unified.agent.simulator --model M --port P`` (how the
agent launches ``simulated`` engines) or ``sage llm simulate``. It serves chat,
completions, embeddings, models, health and vLLM-named metrics with configurable
latency, a running/waiting scheduler, failure injection and vLLM's SIGTERM
semantics, so every other component is tested without a GPU.

It runs only under asyncio (uvloop when importable): it is a standalone process
built on a raw ``asyncio.Protocol`` for speed, not a library for other event loops.
"""

from __future__ import annotations

from sage.unified.agent.simulator._config import SimulatorConfig, build_parser, parse_args
from sage.unified.agent.simulator._errors import RequestError, SimulatorError
from sage.unified.agent.simulator._runner import main, run

__all__ = [
    "RequestError",
    "SimulatorConfig",
    "SimulatorError",
    "build_parser",
    "main",
    "parse_args",
    "run",
]
