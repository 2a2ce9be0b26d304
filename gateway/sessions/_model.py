"""What a session is, its limits and its wire shapes (pure: no I/O, no framework).

A session is one conversation of one owner. The owner is a digest of the API key that
created it (``anonymous`` when the gateway runs without keys), so one key never reads,
lists or changes another key's sessions, even with a guessed id: every lookup is by
``(owner, id)``.

The JSON shapes are those of the SAGE gateway's session API (``GET /sessions`` and
friends), with times as Unix epoch seconds like every other API of this project.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ANONYMOUS",
    "DEFAULT_TITLE",
    "TITLE_MAX_CHARS",
    "Message",
    "Session",
    "SessionLimits",
    "SessionSummary",
    "owner_of",
    "title_from",
    "valid_session_id",
]

ANONYMOUS = "anonymous"
"""The owner of every session when the gateway has no API keys."""
DEFAULT_TITLE = "New chat"
"""Shown for a session until it has a title (given, or taken from its first message)."""
TITLE_MAX_CHARS = 60
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_SPACE = re.compile(r"\s+")


def owner_of(api_key: str | None) -> str:
    """The owner a request acts for: a digest of its API key, or :data:`ANONYMOUS`.

    Only a digest is stored, so the database never holds a usable key.
    """
    if not api_key:
        return ANONYMOUS
    return "key:" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:32]


def valid_session_id(session_id: str) -> bool:
    """Whether ``session_id`` may name a session (1-128 of ``A-Za-z0-9_.-``)."""
    return bool(_SESSION_ID.match(session_id))


def title_from(text: str) -> str:
    """A title: whitespace collapsed, at most :data:`TITLE_MAX_CHARS` characters."""
    return _SPACE.sub(" ", text).strip()[:TITLE_MAX_CHARS]


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Bounds on what the store keeps; over a bound, the oldest goes first.

    Attributes:
        max_sessions: sessions kept in all (every owner); creating one more removes
            the least recently active.
        max_messages: messages kept per session; older ones are dropped (a sliding
            window over the conversation).
        max_message_bytes: the largest message (its content as JSON); a larger user
            message is refused (413), a larger answer is stored cut and marked so.
        max_session_bytes: the most a session keeps; older messages are dropped.
        max_total_bytes: the most all sessions keep together; the least recently
            active sessions are removed.
    """

    max_sessions: int = 10_000
    max_messages: int = 1_000
    max_message_bytes: int = 256 * 1024
    max_session_bytes: int = 4 * 2**20
    max_total_bytes: int = 512 * 2**20


@dataclass(frozen=True, slots=True)
class Message:
    """One stored message. ``content`` is what the client sent (a string, or a list of
    content parts), or the answer's text."""

    role: str
    content: Any
    timestamp: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "content": self.content,
            "timestamp": self.timestamp,
            "metadata": self.metadata,
        }

    def to_openai(self) -> dict[str, Any]:
        """The message as the engine gets it (metadata stays here)."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """A row of ``GET /sessions``."""

    id: str
    title: str | None
    created_at: float
    last_active: float
    message_count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title or DEFAULT_TITLE,
            "created_at": self.created_at,
            "last_active": self.last_active,
            "message_count": self.message_count,
        }


@dataclass(frozen=True, slots=True)
class Session:
    """A whole session (``GET /sessions/{id}``)."""

    id: str
    title: str | None
    created_at: float
    last_active: float
    messages: list[Message] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "messages": [m.to_json() for m in self.messages],
            "created_at": self.created_at,
            "last_active": self.last_active,
            "metadata": {"title": self.title or DEFAULT_TITLE},
        }
