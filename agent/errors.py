"""Errors raised by the agent.

::

    AgentError                      base; status 500
    ├── SpecRejectedError           the launch spec cannot be honoured here; 422
    │   ├── ModelNotAllowedError    model not in the agent's allowlist; 403
    │   ├── PortUnavailableError    requested port outside the range, taken or busy; 409
    │   ├── NoFreeGpuError          not enough free GPUs (or GPU memory) for the spec; 409
    │   ├── RuntimeUnavailableError the runtime's program is not installed; 422
    │   └── EngineIdTakenError      the requested engine id runs another spec; 409
    ├── EngineNotFoundError         no engine with that id on this agent; 404
    ├── GpuNotFoundError            no GPU with that index on this agent; 404
    └── LaunchError                 the engine process could not be started; 500

Each class carries the HTTP ``status``, the OpenAI error ``type`` and ``code`` (as every
component's errors do: they are :class:`~sage.unified.sdk.errors.WireError`). Messages say
what to change.
"""

from __future__ import annotations

from sage.unified.sdk.errors import WireError

__all__ = [
    "AgentError",
    "EngineIdTakenError",
    "EngineNotFoundError",
    "GpuNotFoundError",
    "LaunchError",
    "ModelNotAllowedError",
    "NoFreeGpuError",
    "PortUnavailableError",
    "RuntimeUnavailableError",
    "SpecRejectedError",
]


class AgentError(WireError):
    """Base of every error the agent raises on purpose (``status``, ``type``, ``code``)."""

    status = 500
    type = "server_error"
    code = "agent_error"


class SpecRejectedError(AgentError):
    """Raised when a launch spec is valid JSON but cannot be run on this agent."""

    status = 422
    type = "invalid_request_error"
    code = "spec_rejected"


class ModelNotAllowedError(SpecRejectedError):
    """Raised when the spec's model matches no pattern of the agent's allowlist."""

    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class PortUnavailableError(SpecRejectedError):
    """Raised when a requested port is outside the engine range, reserved or in use,
    or when no port of the range is free."""

    status = 409
    type = "conflict_error"
    code = "port_unavailable"


class NoFreeGpuError(SpecRejectedError):
    """Raised when the GPUs the spec needs are missing, taken, or not visible at all."""

    status = 409
    type = "conflict_error"
    code = "no_free_gpu"


class RuntimeUnavailableError(SpecRejectedError):
    """Raised when the runtime's executable (``vllm``, the SGLang python) is not found."""

    status = 422
    code = "runtime_unavailable"


class EngineIdTakenError(SpecRejectedError):
    """Raised when a start names an engine id that an engine of another spec has."""

    status = 409
    type = "conflict_error"
    code = "engine_exists"


class EngineNotFoundError(AgentError):
    """Raised when an engine id is unknown to this agent."""

    status = 404
    type = "not_found_error"
    code = "engine_not_found"


class GpuNotFoundError(AgentError):
    """Raised when a GPU index is neither seen by NVML nor quarantined on this agent."""

    status = 404
    type = "not_found_error"
    code = "gpu_not_found"


class LaunchError(AgentError):
    """Raised when the engine process could not be started (other than a missing program)."""

    status = 500
    code = "launch_failed"
