"""Model allowlist: which models this agent may launch. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

__all__ = ["model_allowed"]


def model_allowed(model: str, patterns: Sequence[str]) -> bool:
    """Whether ``model`` matches one of the glob ``patterns`` (case-sensitive).

    ``*`` matches across ``/`` (``Qwen/*`` allows ``Qwen/Qwen3-8B``); ``["*"]`` allows
    everything and ``[]`` nothing.
    """
    return any(fnmatchcase(model, pattern) for pattern in patterns)
