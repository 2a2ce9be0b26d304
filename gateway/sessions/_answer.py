"""Reassemble an engine's chat answer from the bytes relayed to the client (pure).

Two shapes: a JSON ``chat.completion`` (read whole, then parsed) and an SSE stream of
``chat.completion.chunk`` events whose ``choices[0].delta.content`` pieces are joined.
Only choice 0 is kept (a session is one conversation). The text is bounded: past
``max_bytes`` it is cut and marked ``truncated``; a stream still counts as complete
when its ``[DONE]`` arrives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Answer", "AnswerCollector"]


@dataclass(slots=True)
class Answer:
    """What the collector made of a response.

    Attributes:
        text: the answer's content (possibly cut, see ``truncated``).
        complete: the response ended normally (``[DONE]`` for a stream, a parsable
            body otherwise).
        truncated: ``text`` was cut at the byte limit.
        error: the message of an in-band error event, or why the body was unusable.
        metadata: ``model``, ``finish_reason`` and ``usage`` when the engine sent them.
    """

    text: str = ""
    complete: bool = False
    truncated: bool = False
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class AnswerCollector:
    """Feed it the response body as it is relayed; read :meth:`result` at the end.

    Args:
        streamed: the response is ``text/event-stream``.
        max_bytes: the most answer text (UTF-8) kept.
    """

    def __init__(self, *, streamed: bool, max_bytes: int) -> None:
        self.streamed = streamed
        self._max_bytes = max_bytes
        # A JSON answer is parsed whole: allow its envelope and escaping on top of the text.
        self._max_body = max_bytes * 2 + 64 * 1024
        self._buffer = bytearray()
        self._parts: list[str] = []
        self._size = 0
        self._answer = Answer()
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        """Take the next piece of the response body."""
        if not chunk:
            return
        if not self.streamed:
            if len(self._buffer) + len(chunk) > self._max_body:
                self._overflow = True
                return
            self._buffer += chunk
            return
        self._buffer += chunk
        while True:
            end, width = _event_end(self._buffer)
            if end < 0:
                break
            event = bytes(self._buffer[:end])
            del self._buffer[: end + width]
            self._on_event(event)
        if len(self._buffer) > self._max_body:
            # One event this large is not an engine's chunk: stop buffering it.
            self._buffer.clear()

    def result(self) -> Answer:
        """The answer so far (call once the response is over)."""
        answer = self._answer
        if not self.streamed:
            self._parse_body(answer)
        answer.text = "".join(self._parts)
        return answer

    def _add_text(self, text: str) -> None:
        if self._answer.truncated or not text:
            return
        size = len(text.encode("utf-8"))
        if self._size + size > self._max_bytes:
            room = self._max_bytes - self._size
            text = text.encode("utf-8")[:room].decode("utf-8", errors="ignore")
            size = len(text.encode("utf-8"))
            self._answer.truncated = True
        self._parts.append(text)
        self._size += size

    def _on_event(self, event: bytes) -> None:
        data = b"\n".join(
            line[5:].lstrip(b" ")
            for line in event.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data:")
        )
        if not data:
            return
        if data.strip() == b"[DONE]":
            self._answer.complete = True
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            return
        if not isinstance(chunk, dict):
            return
        error = chunk.get("error")
        if error is not None:
            self._answer.error = _error_message(error)
            return
        self._note(chunk)
        choice = _first_choice(chunk)
        if choice is None:
            return
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            self._add_text(delta["content"])
        if choice.get("finish_reason"):
            self._answer.metadata["finish_reason"] = choice["finish_reason"]

    def _parse_body(self, answer: Answer) -> None:
        if self._overflow:
            answer.error = "the answer was too large to store"
            return
        try:
            body = json.loads(bytes(self._buffer))
        except ValueError:
            answer.error = "the engine's answer was not JSON"
            return
        if not isinstance(body, dict):
            answer.error = "the engine's answer was not a JSON object"
            return
        self._note(body)
        choice = _first_choice(body)
        message = choice.get("message") if choice is not None else None
        if not isinstance(message, dict):
            answer.error = "the engine's answer had no message"
            return
        content = message.get("content")
        if isinstance(content, str):
            self._add_text(content)
        if choice is not None and choice.get("finish_reason"):
            answer.metadata["finish_reason"] = choice["finish_reason"]
        answer.complete = True

    def _note(self, body: dict[str, Any]) -> None:
        if isinstance(body.get("model"), str):
            self._answer.metadata["model"] = body["model"]
        if isinstance(body.get("usage"), dict):
            self._answer.metadata["usage"] = body["usage"]


def _event_end(buffer: bytearray) -> tuple[int, int]:
    """Where the first complete SSE event ends, and the separator's width (-1 if none)."""
    lf = buffer.find(b"\n\n")
    crlf = buffer.find(b"\r\n\r\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return lf, (2 if lf >= 0 else 0)


def _first_choice(body: dict[str, Any]) -> dict[str, Any] | None:
    choices = body.get("choices")
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


def _error_message(error: Any) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return str(error)[:500]
