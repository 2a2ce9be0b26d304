"""The engine simulator: a real HTTP server that behaves like vLLM's OpenAI server.

Run it as ``python -m sage.unified.agent.simulator --model M --port P`` (how the
agent launches ``simulated`` engines) or ``sage llm simulate``. It serves vLLM's
endpoints for its ``--kind`` (chat, completions, responses, embeddings, pooling,
classify, score, rerank, tokenize, transcriptions), models, health and vLLM-named
metrics, with a KV cache and prefix caching, prefill time that depends on what is
cached, KV events over ZMQ, deterministic continuable text, failure injection and
vLLM's SIGTERM semantics, so every other component is tested without a GPU.
docs/simulator.md describes the model.

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
