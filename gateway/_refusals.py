"""Which error a request gets when the data plane cannot serve it (pure).

Kept apart from the proxy loop so the choice between 400, 404, 502 and 503 reads in
one place: a retry can only help the client when the answer is 503.
"""

from __future__ import annotations

from collections.abc import Sequence

from sage.unified.gateway._errors import (
    BadRequestError,
    GatewayError,
    ModelNotFoundError,
    NoBackendAvailableError,
    UpstreamFailedError,
)
from sage.unified.gateway._retry_rules import FailureKind
from sage.unified.gateway.routing import RoutingState
from sage.unified.sdk.models import EngineKind

__all__ = ["gave_up_error", "gave_up_status", "model_not_found", "unroutable_error"]


def unroutable_error(
    state: RoutingState,
    model: str,
    kind: EngineKind | None,
    path: bytes,
    *,
    may_come_back: bool,
    retry_after_s: int,
) -> GatewayError:
    """The error for a request with no candidate backend (of ``kind``; ``None``: any).

    ``may_come_back`` is true while the model is known but unavailable, or while the
    control plane settles after a restart (an unknown model may not be re-reported yet).
    """
    kinds = state.kinds_of(model)
    if kind is not None and kinds and kind not in kinds:
        # Served, but not as this endpoint needs: a retry cannot help.
        serving = ", ".join(state.models(kind)) or "none"
        return BadRequestError(
            f"model '{model}' is {' and '.join(k.value for k in kinds)} and does not serve "
            f"{path.decode()}; models serving it: {serving}",
            param="model",
            code="model_wrong_kind",
        )
    if may_come_back or state.model_backends(model):
        return NoBackendAvailableError(
            f"model '{model}' has no ready backend right now; retry shortly",
            headers={"retry-after": str(retry_after_s)},
        )
    return model_not_found(model, state.models(kind))


def model_not_found(model: str, served: Sequence[str]) -> ModelNotFoundError:
    """404 for a model nobody serves, listing the ones that are served."""
    listing = ", ".join(served) if served else "none"
    return ModelNotFoundError(
        f"The model '{model}' does not exist or is not served here. Served models: {listing}.",
        param="model",
    )


def gave_up_status(failures: Sequence[FailureKind]) -> int:
    """503 when no engine answered at all (retry later), else 502 (a bad gateway hop)."""
    return 503 if all(f.nothing_answered for f in failures) else 502


def gave_up_error(model: str, last_error: str, status: int) -> GatewayError:
    """The error after every attempt failed; ``status`` from :func:`gave_up_status`."""
    if status == 503:
        return NoBackendAvailableError(
            f"no backend of model '{model}' is reachable ({last_error}); retry shortly",
            headers={"retry-after": "1"},
        )
    return UpstreamFailedError(
        f"no backend of model '{model}' answered ({last_error}); retry shortly",
        headers={"retry-after": "1"},
    )
