"""The coordinator's error hierarchy.

Pure: raised by the registry, placement and URL policy as well as the service.
The HTTP status and OpenAI error ``type`` of each class are class attributes read
only by the exception handlers in :mod:`._app`.

::

    CoordinatorError                      500 api_error
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
    └── SettlingError                     503 just restarted, agents have not all reported yet
"""

from __future__ import annotations

__all__ = [
    "AgentRejectedError",
    "AgentUnreachableError",
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "CoordinatorError",
    "InvalidRequestError",
    "NotFoundError",
    "PlacementError",
    "ReportRejectedError",
    "SettlingError",
    "StaleIncarnationError",
    "UrlPolicyError",
]


class CoordinatorError(Exception):
    """Base of every coordinator error."""

    status_code: int = 500
    error_type: str = "api_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param


class ConfigError(CoordinatorError):
    """Raised at start when settings are invalid or unsafe (e.g. open on a public address)."""

    code = "config_error"


class AuthenticationError(CoordinatorError):
    """Raised when a request carries no token, or one that the scope does not accept."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_token"


class NotFoundError(CoordinatorError):
    """Raised when an engine or agent id is unknown."""

    status_code = 404
    error_type = "not_found_error"
    code = "not_found"


class InvalidRequestError(CoordinatorError):
    """Raised when a request body is well-formed but not acceptable."""

    status_code = 422
    error_type = "invalid_request_error"
    code = "invalid_request"


class ReportRejectedError(InvalidRequestError):
    """Raised when an agent report describes engines it may not describe."""

    code = "report_rejected"


class UrlPolicyError(InvalidRequestError):
    """Raised when a registered engine URL fails the scheme or network allow-list."""

    code = "url_not_allowed"


class ConflictError(CoordinatorError):
    """Raised when the request conflicts with the current state."""

    status_code = 409
    error_type = "conflict_error"
    code = "conflict"


class StaleIncarnationError(ConflictError):
    """Raised when a report carries an agent or engine incarnation older than the known one."""

    code = "stale_incarnation"


class PlacementError(ConflictError):
    """Raised when no agent can take an engine; the message says why for each agent."""

    code = "no_placement"

    def __init__(self, message: str, *, status_code: int = 409, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code


class AgentUnreachableError(CoordinatorError):
    """Raised when a call to an agent's API fails (connect error, timeout, 5xx)."""

    status_code = 502
    error_type = "api_error"
    code = "agent_unreachable"

    def __init__(self, message: str, *, status_code: int = 502, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code


class AgentRejectedError(CoordinatorError):
    """Raised when an agent answers a command with a 4xx; carries the agent's status."""

    error_type = "invalid_request_error"
    code = "agent_rejected"

    def __init__(self, message: str, *, status_code: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code
        if status_code == 404:
            self.error_type = "not_found_error"
        elif status_code == 409:
            self.error_type = "conflict_error"


class SettlingError(CoordinatorError):
    """Raised for the routing table while a restarted coordinator waits for its agents."""

    status_code = 503
    error_type = "service_unavailable"
    code = "coordinator_settling"
