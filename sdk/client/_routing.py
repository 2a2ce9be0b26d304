"""Model resolution and target selection (pure: no I/O).

Gateway mode: requests go to the gateways, in preference order. Direct mode:
requests go to the READY backends of the model in the routing table, rotated per
call so load spreads, with the least loaded first when the table knows load.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from sage.unified.sdk.client._errors import ModelNotSpecifiedError, NoBackendAvailableError
from sage.unified.sdk.models import Backend, EngineKind, RoutingTable

__all__ = ["START_HINT", "RoundRobin", "backends_for", "build_body", "resolve_model"]

START_HINT = "start one with `sage llm engine start <model>`"


def _kind_word(kind: EngineKind) -> str:
    return "embedding" if kind is EngineKind.EMBEDDING else "LLM"


def resolve_model(
    requested: str | None,
    default: str | None,
    kind: EngineKind,
    served: Sequence[str],
    *,
    source: str,
) -> str:
    """The model a call uses: ``requested``, else ``default``, else the single one served.

    Args:
        served: models of ``kind`` that ``source`` reports.
        source: where ``served`` came from, for the error message.

    Raises:
        ModelNotSpecifiedError: several are served.
        NoBackendAvailableError: none is served.
    """
    if requested:
        return requested
    if default:
        return default
    models = sorted(set(served))
    if len(models) == 1:
        return models[0]
    if models:
        raise ModelNotSpecifiedError(_kind_word(kind), models)
    raise NoBackendAvailableError(
        f"no {_kind_word(kind)} model is served by {source}; {START_HINT}"
    )


def backends_for(table: RoutingTable, model: str, kind: EngineKind) -> list[Backend]:
    """The table's backends of ``model`` and ``kind``.

    Raises:
        NoBackendAvailableError: none; the message lists what is served.
    """
    found = [b for b in table.backends if b.model == model and b.kind is kind and b.url]
    if found:
        return found
    served = table.models(kind)
    others = f" (served {_kind_word(kind)} models: {', '.join(served)})" if served else ""
    raise NoBackendAvailableError(
        f"no ready {_kind_word(kind)} backend serves model {model!r}{others}; {START_HINT}"
    )


class RoundRobin:
    """Orders a call's backends: least loaded first, ties rotated per call."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def order(self, backends: Sequence[Backend]) -> list[str]:
        """Base URLs (without ``/v1``) in the order to try them."""
        if not backends:
            return []
        shift = next(self._counter) % len(backends)
        rotated = list(backends[shift:]) + list(backends[:shift])

        def load(b: Backend) -> tuple[int, int]:
            return (b.load.waiting or 0, b.load.running or 0)

        # sorted() is stable, so equal loads keep the rotated order.
        return [b.url.rstrip("/") for b in sorted(rotated, key=load)]


def build_body(
    base: dict[str, Any], model: str, stream: bool, params: dict[str, Any]
) -> dict[str, Any]:
    """The JSON body: caller parameters unchanged, nothing injected but ``stream_options``.

    A streaming request asks for usage in the last chunk unless the caller set
    ``stream_options`` themselves.
    """
    body: dict[str, Any] = {**params, **base, "model": model}
    if stream:
        body["stream"] = True
        body.setdefault("stream_options", {"include_usage": True})
    return body
