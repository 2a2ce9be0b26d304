"""Errors of the session API (OpenAI-shaped through the gateway's exception handlers).

::

    GatewayError (gateway._errors)
    ├── SessionNotFoundError       404 no session with that id for this API key
    ├── InvalidSessionError        400 a malformed session id, title or chat body
    ├── SessionMessageTooLargeError 413 a message over ``max_message_bytes``
    └── UnsupportedMediaTypeError  415 a request body that is not JSON
"""

from __future__ import annotations

from sage.unified.gateway._errors import GatewayError

__all__ = [
    "InvalidSessionError",
    "SessionMessageTooLargeError",
    "SessionNotFoundError",
    "UnsupportedMediaTypeError",
]


class SessionNotFoundError(GatewayError):
    status = 404
    type = "not_found_error"
    code = "session_not_found"


class InvalidSessionError(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_session"


class SessionMessageTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "session_message_too_large"


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"
