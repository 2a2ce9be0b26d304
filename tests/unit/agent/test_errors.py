from __future__ import annotations

import pytest

from sage.unified.agent import errors
from sage.unified.agent.errors import (
    AgentError,
    EngineNotFoundError,
    LaunchError,
    ModelNotAllowedError,
    NoFreeGpuError,
    PortUnavailableError,
    RuntimeUnavailableError,
    SpecRejectedError,
)


@pytest.mark.parametrize(
    ("cls", "parent", "status", "code"),
    [
        (SpecRejectedError, AgentError, 422, "spec_rejected"),
        (ModelNotAllowedError, SpecRejectedError, 403, "model_not_allowed"),
        (PortUnavailableError, SpecRejectedError, 409, "port_unavailable"),
        (NoFreeGpuError, SpecRejectedError, 409, "no_free_gpu"),
        (RuntimeUnavailableError, SpecRejectedError, 422, "runtime_unavailable"),
        (EngineNotFoundError, AgentError, 404, "engine_not_found"),
        (LaunchError, AgentError, 500, "launch_failed"),
    ],
)
def test_hierarchy_status_and_code(
    cls: type[AgentError], parent: type[AgentError], status: int, code: str
) -> None:
    err = cls("change this")
    assert isinstance(err, parent)
    assert (err.status, err.code, err.message, str(err)) == (
        status,
        code,
        "change this",
        "change this",
    )


def test_every_exported_error_is_in_the_tree_drawing() -> None:
    assert errors.__doc__ is not None
    for name in errors.__all__:
        assert name in errors.__doc__
