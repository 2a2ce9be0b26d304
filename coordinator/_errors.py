"""The coordinator's error hierarchy.

Pure: raised by the registry, placement and URL policy as well as the service.
The HTTP status and OpenAI error ``type`` of each class are class attributes read
only by the exception handlers in :mod:`._app`.

::

    CoordinatorError (a WireError)        500 api_error
    ├── ConfigError                       (start-up only) bad or unsafe settings
    ├── AuthenticationError               401 authentication_error
    ├── NotFoundError                     404 not_found_error
    ├── InvalidRequestError               422 invalid_request_error
    │   ├── ReportRejectedError           422 report describes another host / a port outside its range
    │   └── UrlPolicyError                422 registered URL fails the scheme / network policy
    ├── ConflictError                     409 conflict_error
    │   ├── StaleIncarnationError         409 report older than what the coordinator accepted
    │   └── PlacementError                409 no agent can take the engine (or 422: named host unknown)
    ├── AgentRejectedError                4xx the agent refused a command (its status and message)
    ├── AgentUnreachableError             502 agent_unreachable: an agent call failed
    ├── SettlingError                     503 just restarted, agents have not all reported yet
    └── ControlPlaneUnavailableError      503 control_plane_unavailable: the store (etcd) cannot be reached
"""

from __future__ import annotations

from sage.unified.sdk.errors import WireError, error_type_for

__all__ = [
    "AgentRejectedError",
    "AgentUnreachableError",
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "ControlPlaneUnavailableError",
    "CoordinatorError",
    "InvalidRequestError",
    "NotFoundError",
    "PlacementError",
    "ReportRejectedError",
    "SettlingError",
    "StaleIncarnationError",
    "UrlPolicyError",
]


class CoordinatorError(WireError):
    """Base of every coordinator error (``status``, ``type``, ``code`` as every component)."""

    status = 500
    type = "api_error"
    code = "internal_error"


class ConfigError(CoordinatorError):
    """Raised at start when settings are invalid or unsafe (e.g. open on a public address)."""

    code = "config_error"


class AuthenticationError(CoordinatorError):
    """Raised when a request carries no token, or one that the scope does not accept."""

    status = 401
    type = "authentication_error"
    code = "invalid_token"


class NotFoundError(CoordinatorError):
    """Raised when an engine or agent id is unknown."""

    status = 404
    type = "not_found_error"
    code = "not_found"


class InvalidRequestError(CoordinatorError):
    """Raised when a request body is well-formed but not acceptable."""

    status = 422
    type = "invalid_request_error"
    code = "invalid_request"


class ReportRejectedError(InvalidRequestError):
    """Raised when an agent report describes engines it may not describe."""

    code = "report_rejected"


class UrlPolicyError(InvalidRequestError):
    """Raised when a registered engine URL fails the scheme or network allow-list."""

    code = "url_not_allowed"


class ConflictError(CoordinatorError):
    """Raised when the request conflicts with the current state."""

    status = 409
    type = "conflict_error"
    code = "conflict"


class StaleIncarnationError(ConflictError):
    """Raised when a report carries an agent or engine incarnation older than the known one."""

    code = "stale_incarnation"


class PlacementError(ConflictError):
    """Raised when no agent can take an engine (409), or the named host is unknown (422);
    the message says why for each agent."""

    code = "no_placement"


class AgentUnreachableError(CoordinatorError):
    """Raised when a call to an agent's API fails (connect error, timeout, 5xx)."""

    status = 502
    type = "api_error"
    code = "agent_unreachable"


class AgentRejectedError(CoordinatorError):
    """Raised when an agent answers a command with a 4xx; carries the agent's status."""

    type = "invalid_request_error"
    code = "agent_rejected"

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message, status=status, code=code, type_=error_type_for(status))


class SettlingError(CoordinatorError):
    """Raised for the routing table while a restarted coordinator waits for its agents."""

    status = 503
    type = "service_unavailable"
    code = "coordinator_settling"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"retry-after": "1"})


class ControlPlaneUnavailableError(CoordinatorError):
    """Raised for management writes and agent reports while the store (etcd) cannot be
    reached; routing goes on with the last table meanwhile."""

    status = 503
    type = "service_unavailable"
    code = "control_plane_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"retry-after": "2"})
