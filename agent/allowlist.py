"""Which models this agent may launch: the allowlist and the model roots.

* :func:`model_allowed`: the model (a registry name or a path) matches a glob of the
  allowlist. Pure.
* :func:`outside_model_roots`: a model given as a path must lie under one of the
  configured model roots once resolved (``..`` and symlinks included), so a caller of
  the launch API cannot point an engine at ``/etc/passwd`` or ``/proc/self/environ``.
  It reads the filesystem (symlinks), so async callers run it in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path

__all__ = ["is_model_path", "model_allowed", "outside_model_roots"]


def model_allowed(model: str, patterns: Sequence[str]) -> bool:
    """Whether ``model`` matches one of the glob ``patterns`` (case-sensitive).

    ``*`` matches across ``/`` (``Qwen/*`` allows ``Qwen/Qwen3-8B``); ``["*"]`` allows
    everything and ``[]`` nothing.
    """
    return any(fnmatchcase(model, pattern) for pattern in patterns)


def is_model_path(model: str) -> bool:
    """Whether ``model`` names a local path rather than a registry name (``org/name``).

    The launch spec admits only absolute paths (a leading ``/``); anything else is a
    name a runtime looks up in its model registry.
    """
    return model.startswith("/")


def outside_model_roots(model: str, roots: Sequence[Path]) -> str | None:
    """Why the model path ``model`` may not be used, or ``None`` when it may.

    Both the path and the roots are resolved (``os.path.realpath``) before comparing,
    so neither ``..`` nor a symlink inside a root leads out of it. A registry name
    always passes (the allowlist decides about it).
    """
    if not is_model_path(model):
        return None
    resolved = Path(os.path.realpath(model))
    for root in roots:
        if resolved.is_relative_to(os.path.realpath(root)):
            return None
    shown = ", ".join(str(root) for root in roots) or "none configured"
    via = f" (it resolves to {str(resolved)!r})" if str(resolved) != model else ""
    return (
        f"model path {model!r} is outside the agent's model roots ({shown}){via}; put the "
        "model under one of them, or add its folder to the agent's model_roots setting "
        "(SAGE_AGENT_MODEL_ROOTS)"
    )
