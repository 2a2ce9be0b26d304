"""Sessions: stored conversations, their API (``/sessions``) and the chat hook.

The store (:class:`SessionStore`, :class:`SqliteSessionStore`) keeps sessions per
owner (a digest of the API key); :func:`create_sessions_router` serves SAGE's session
API over it; :class:`SessionChat` gives ``/v1/chat/completions`` its ``session_id``
extension (history prepended, the answer stored) through a narrow interface that the
data plane calls.
"""

from __future__ import annotations

from sage.unified.gateway.sessions._answer import Answer, AnswerCollector
from sage.unified.gateway.sessions._chat import PreparedChat, SessionChat, request_owner
from sage.unified.gateway.sessions._errors import (
    InvalidSessionError,
    SessionMessageTooLargeError,
    SessionNotFoundError,
    UnsupportedMediaTypeError,
)
from sage.unified.gateway.sessions._model import (
    ANONYMOUS,
    DEFAULT_TITLE,
    TITLE_MAX_CHARS,
    Message,
    Session,
    SessionLimits,
    SessionSummary,
    owner_of,
)
from sage.unified.gateway.sessions._routes import create_sessions_router
from sage.unified.gateway.sessions._store import SessionStats, SessionStore, SqliteSessionStore

__all__ = [
    "ANONYMOUS",
    "DEFAULT_TITLE",
    "TITLE_MAX_CHARS",
    "Answer",
    "AnswerCollector",
    "InvalidSessionError",
    "Message",
    "PreparedChat",
    "Session",
    "SessionChat",
    "SessionLimits",
    "SessionMessageTooLargeError",
    "SessionNotFoundError",
    "SessionStats",
    "SessionStore",
    "SessionSummary",
    "SqliteSessionStore",
    "UnsupportedMediaTypeError",
    "create_sessions_router",
    "owner_of",
    "request_owner",
]
