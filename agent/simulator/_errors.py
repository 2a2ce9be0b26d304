"""Errors of the engine simulator.

Every error a client can see is a :class:`RequestError`; the server turns it into
an OpenAI/vLLM-shaped body ``{"error": {"message", "type", "param", "code"}}``
with ``code`` equal to the HTTP status, as vLLM's ``create_error_response`` does.

The fields are named as in :class:`sage.unified.sdk.errors.WireError` (``status``,
``type``, ``param``), but :class:`RequestError` is not a ``WireError``: the simulator
imitates vLLM, whose ``code`` is the HTTP status and ``type`` the exception class name,
not SAGE's OpenAI-style ``code`` and ``type``.

::

    SimulatorError                   base of everything raised here
    └── RequestError                 a request cannot be served (carries status, type, param)
        ├── BadRequestError          400: bad JSON, missing or invalid fields
        ├── NotFoundError            404: unknown path or unknown model
        ├── MethodNotAllowedError    405: known path, wrong method
        ├── PayloadTooLargeError     413: body larger than the limit
        ├── InternalServerError      500: injected failure, request aborted at shutdown
        └── ServiceUnavailableError  503: server is shutting down
"""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "InternalServerError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RequestError",
    "ServiceUnavailableError",
    "SimulatorError",
]


class SimulatorError(Exception):
    """Base class of the simulator's errors."""


class RequestError(SimulatorError):
    """A request cannot be served; rendered as an OpenAI-shaped error body.

    Attributes:
        status: HTTP status code (also the body's ``code``).
        type: the body's ``type`` (vLLM uses the exception class name).
        param: the offending request field, when there is one.
    """

    status: int = 400
    type: str = "BadRequestError"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequestError(RequestError):
    """Raised for unparsable JSON or invalid/missing request fields (400)."""

    status = 400
    type = "BadRequestError"


class NotFoundError(RequestError):
    """Raised for an unknown path or a model this engine does not serve (404)."""

    status = 404
    type = "NotFoundError"


class MethodNotAllowedError(RequestError):
    """Raised when a known path is called with the wrong method (405)."""

    status = 405
    type = "MethodNotAllowedError"


class PayloadTooLargeError(RequestError):
    """Raised when a request body exceeds the size limit (413)."""

    status = 413
    type = "PayloadTooLargeError"


class InternalServerError(RequestError):
    """Raised for injected failures and for requests aborted at shutdown (500)."""

    status = 500
    type = "InternalServerError"


class ServiceUnavailableError(RequestError):
    """Raised for requests that arrive while the server shuts down (503)."""

    status = 503
    type = "ServiceUnavailableError"
