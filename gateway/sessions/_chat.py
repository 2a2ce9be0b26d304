"""The ``session_id`` extension of ``POST /v1/chat/completions``.

A narrow seam for the data plane, which calls two things and knows nothing else:

1. ``if chat.wants(body): prepared = await chat.prepare(body, authorization)``:
   ``None`` for a request without ``session_id`` (``wants`` is a byte search; the body
   is parsed and the key hashed only when the field name occurs).
   Otherwise the body to forward: the stored history put before the request's
   messages (its system messages stay first), ``session_id`` removed.
   ``prepared.session_id`` is the routing session key, so the ``session`` policy keeps
   a conversation on the engine whose KV cache holds it.
2. ``send = prepared.wrap(send)`` before relaying, and ``await prepared.finish()`` once
   the request is over (in a ``finally``): the relayed answer is reassembled from the
   bytes sent to the client and stored with the request's user messages, as one turn.

What is stored: nothing when the engine did not answer 2xx (the client may simply
retry); the whole answer when it ended normally; what was relayed, marked
``incomplete`` with the reason, when the client left or the stream broke. Two requests
of one session each see the history as it was when they started; their turns are
stored whole, in the order they finished.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from sage.unified.gateway.sessions._answer import AnswerCollector
from sage.unified.gateway.sessions._errors import (
    InvalidSessionError,
    SessionMessageTooLargeError,
)
from sage.unified.gateway.sessions._model import ANONYMOUS, Message, owner_of, valid_session_id
from sage.unified.gateway.sessions._store import SessionStore, message_bytes
from sage.unified.sdk.auth import bearer_token

__all__ = ["PreparedChat", "SessionChat", "request_owner"]

log = logging.getLogger("sage.unified.gateway.sessions")

Message_ = MutableMapping[str, Any]
Send = Callable[[Message_], Awaitable[None]]

_FIELD = b'"session_id"'


def request_owner(authorization: str | None, *, keys_enabled: bool) -> str:
    """The session owner of a request: its API key's digest when keys are on.

    Without keys every request is :data:`ANONYMOUS`, whatever header it sends, so the
    same conversation is reachable with or without one.
    """
    if not keys_enabled:
        return ANONYMOUS
    return owner_of(bearer_token(authorization))


class SessionChat:
    """Turns chat requests with ``session_id`` into :class:`PreparedChat` objects.

    Args:
        store: where sessions live (its ``limits`` bound the messages).
        keys_enabled: the gateway checks API keys, so sessions belong to keys (see
            :func:`request_owner`).
        clock: wall time for message timestamps.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        keys_enabled: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keys_enabled = keys_enabled
        self._clock = clock

    @staticmethod
    def wants(body: bytes) -> bool:
        """Whether ``body`` may carry ``session_id`` (a byte search: the hot path's check,
        cheaper than awaiting :meth:`prepare` for every chat request)."""
        return _FIELD in body

    async def prepare(self, body: bytes, authorization: bytes | str | None) -> PreparedChat | None:
        """The request rewritten with its session's history, or ``None`` without a session.

        Args:
            body: the chat request body as the client sent it.
            authorization: the request's ``Authorization`` header value (already
                checked by the caller); it decides whose session this is.

        Raises:
            InvalidSessionError: ``session_id`` is not a valid id, or ``messages`` is not
                a list of ``{role, content}`` objects.
            SessionMessageTooLargeError: a user message is over ``max_message_bytes``.
        """
        if _FIELD not in body:
            return None
        try:
            request = json.loads(body)
        except ValueError:
            return None  # the data plane answers 400 for it
        if not isinstance(request, dict) or request.get("session_id") is None:
            return None
        session_id = request.pop("session_id")
        if not isinstance(session_id, str) or not valid_session_id(session_id):
            raise InvalidSessionError(
                "session_id must be 1-128 characters of A-Z, a-z, 0-9, '_', '.', '-' "
                "and start with a letter or digit",
                param="session_id",
            )
        messages = request.get("messages")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
        ):
            raise InvalidSessionError(
                "messages must be a list of objects with a 'role'", param="messages"
            )
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")
        owner = request_owner(authorization, keys_enabled=self.keys_enabled)
        limit = self.store.limits.max_message_bytes
        now = self._clock()
        new_user: list[Message] = []
        for m in messages:
            if m["role"] != "user":
                continue
            if message_bytes(m.get("content")) > limit:
                raise SessionMessageTooLargeError(
                    f"a message of a session may hold at most {limit} bytes", param="messages"
                )
            new_user.append(Message("user", m.get("content"), now))
        history = await self.store.history(owner, session_id)
        system = [m for m in messages if m["role"] == "system"]
        rest = [m for m in messages if m["role"] != "system"]
        request["messages"] = [*system, *(h.to_openai() for h in history), *rest]
        rewritten = json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode()
        return PreparedChat(self, owner, session_id, rewritten, new_user)


class PreparedChat:
    """One chat request of a session: the body to forward and the answer to keep."""

    __slots__ = (
        "_chat",
        "_collector",
        "_ended",
        "_owner",
        "_status",
        "_user",
        "body",
        "session_id",
    )

    def __init__(
        self, chat: SessionChat, owner: str, session_id: str, body: bytes, user: list[Message]
    ) -> None:
        self._chat = chat
        self._owner = owner
        self._user = user
        self._status: int | None = None
        self._collector: AnswerCollector | None = None
        self._ended = False
        self.session_id = session_id
        self.body = body

    def wrap(self, send: Send) -> Send:
        """``send`` that also feeds the response to the answer collector."""

        async def tee(message: Message_) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                self._status = int(message["status"])
                streamed = any(
                    name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                    for name, value in message.get("headers", ())
                )
                self._collector = AnswerCollector(
                    streamed=streamed, max_bytes=self._chat.store.limits.max_message_bytes
                )
            elif kind == "http.response.body" and self._collector is not None:
                self._collector.feed(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    self._ended = True
            await send(message)

        return tee

    async def finish(self) -> None:
        """Store the turn (shielded from cancellation; a storage failure is only logged)."""
        if self._collector is None or self._status is None or not 200 <= self._status < 300:
            return
        answer = self._collector.result()
        metadata = dict(answer.metadata)
        if not (self._ended and answer.complete and answer.error is None):
            metadata["incomplete"] = True
            if answer.error is not None:
                metadata["reason"] = answer.error
            elif not self._ended:
                metadata["reason"] = "the client disconnected before the answer was complete"
            else:
                metadata["reason"] = "the answer ended before it was complete"
        if answer.truncated:
            metadata["truncated"] = True
        reply = Message("assistant", answer.text, self._chat._clock(), metadata)
        with anyio.CancelScope(shield=True):
            try:
                stored = await self._chat.store.append(
                    self._owner, self.session_id, [*self._user, reply]
                )
            except Exception:
                log.exception("could not store a turn of session %s", self.session_id)
                return
        if not stored:
            log.info("session %s was deleted while it was answered", self.session_id)
