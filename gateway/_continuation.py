"""Continuation of interrupted streams: the pure parts (no I/O).

When a chat or completion stream breaks after some tokens (its engine died, hung, or was
drained past its deadline), the gateway asks another engine of the same model to go on
from the text generated so far and splices the new stream into the client's, so the
client sees one stream. vLLM continues a chat with ``continue_final_message: true`` and
``add_generation_prompt: false`` (the partial answer as the last, assistant, message);
a completion by taking the prompt plus the partial text as its prompt.

Opt-in (per model in the settings, or per request with ``X-Sage-Continue: 1``), and never
for requests whose output cannot be continued faithfully as text: tool calls, JSON or
guided output, ``n > 1``, log probabilities, ``echo``.

- :func:`refusal` says why a request may not be continued (``None``: it may).
- :class:`StreamTranscript` follows the events relayed so far (text, token count,
  whether the answer finished) and hands on only whole events, so a break never leaves
  the client half an event.
- :func:`continuation_body` builds the request to the next engine.
- :class:`SpliceEditor` adapts the next engine's events to the client's stream (same
  ``id``, no second role chunk, a marker in the final chunk).
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "CONTINUE_HEADER",
    "SpliceEditor",
    "StreamTranscript",
    "continuable",
    "continuation_body",
    "refusal",
]

CONTINUE_HEADER = b"x-sage-continue"
"""A request header: ``1``/``true`` asks for continuation of this stream."""

_NOT_TEXT_FIELDS = (
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "response_format",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
)
_DONE = b"[DONE]"
_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


def continuable(body: bytes, path: bytes) -> dict[str, Any] | None:
    """The decoded body when a stream of this request may be continued, else ``None``."""
    chat = path == b"/v1/chat/completions"
    if not chat and path != b"/v1/completions":
        return None
    try:
        decoded = _decode.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(decoded, dict) or refusal(decoded, chat) is not None:
        return None
    return decoded


def refusal(body: dict[str, Any], chat: bool) -> str | None:
    """Why the stream of ``body`` may not be continued, or ``None`` when it may."""
    if body.get("stream") is not True:
        return "not a stream"
    for name in _NOT_TEXT_FIELDS:
        if body.get(name) not in (None, [], {}) and not (
            name == "response_format" and body[name] == {"type": "text"}
        ):
            return f"{name} (structured output cannot be continued as text)"
    if (body.get("n") or 1) != 1 or (body.get("best_of") or 1) != 1:
        return "n > 1"
    # Completions' ``logprobs: 0`` still asks for the chosen token's log probability
    # (falsy, but not absent); chat's ``logprobs: false`` asks for none.
    logprobs = body.get("logprobs")
    if (logprobs is not None and logprobs is not False) or body.get("top_logprobs"):
        return "log probabilities"
    if body.get("echo"):
        return "echo"
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "no messages"
        if body.get("continue_final_message"):
            return "already a continuation"
    elif not isinstance(body.get("prompt"), str):
        return "the prompt is not one string"
    return None


class StreamTranscript:
    """What a relayed SSE stream has said so far.

    Args:
        chat: chat completions (text in ``delta.content``), else completions (``text``).
    """

    def __init__(self, chat: bool) -> None:
        self._chat = chat
        self._buffer = b""
        self._parts: list[str] = []
        self.tokens = 0
        """Content events seen (vLLM sends about one token per event)."""
        self.finished = False
        """An event carried a ``finish_reason``: the answer is complete."""
        self.done = False
        """``[DONE]`` arrived."""
        self.stream_id: str | None = None
        self.created: int | None = None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the engine; return the whole events among them (to relay)."""
        self._buffer += data
        end = self._buffer.rfind(b"\n\n")
        if end < 0:
            return b""
        complete, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
        for event in complete.split(b"\n\n"):
            self._read(event)
        return complete

    def _read(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == _DONE:
                self.done = True
                continue
            try:
                chunk = _decode.decode(payload)
            except msgspec.DecodeError:
                continue
            if isinstance(chunk, dict):
                self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if self.stream_id is None and isinstance(chunk.get("id"), str):
            self.stream_id = chunk["id"]
            created = chunk.get("created")
            self.created = created if isinstance(created, int) else None
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        text = _choice_text(choice, self._chat)
        if text:
            self._parts.append(text)
            self.tokens += 1
        if choice.get("finish_reason"):
            self.finished = True


def _choice_text(choice: dict[str, Any], chat: bool) -> str:
    if chat:
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
    else:
        content = choice.get("text")
    return content if isinstance(content, str) else ""


def continuation_body(body: dict[str, Any], chat: bool, partial: str, tokens_seen: int) -> bytes:
    """The request that asks another engine to go on after ``partial``."""
    request = dict(body)
    for limit in ("max_tokens", "max_completion_tokens"):
        value = request.get(limit)
        if isinstance(value, int):
            request[limit] = max(1, value - tokens_seen)
    if chat:
        request["messages"] = [*body["messages"], {"role": "assistant", "content": partial}]
        request["continue_final_message"] = True
        request["add_generation_prompt"] = False
    else:
        request["prompt"] = str(body["prompt"]) + partial
    return _encode.encode(request)


class SpliceEditor:
    """Rewrites the next engine's events so the client's stream reads as one.

    Args:
        chat: chat completions or completions.
        stream_id: the ``id`` the client's stream started with (kept throughout).
        created: its ``created``.
        continued: how many times the stream has been continued (the final chunk's
            marker ``"sage": {"continued": N}``).
    """

    def __init__(
        self, chat: bool, stream_id: str | None, created: int | None, continued: int
    ) -> None:
        self._chat = chat
        self._id = stream_id
        self._created = created
        self._continued = continued

    def edit(self, events: bytes) -> bytes:
        """The client's version of whole events from the next engine."""
        out: list[bytes] = []
        for event in events.split(b"\n\n"):
            if not event.strip():
                continue
            edited = self._event(event)
            if edited is not None:
                out.append(edited + b"\n\n")
        return b"".join(out)

    def _event(self, event: bytes) -> bytes | None:
        if not event.startswith(b"data:"):
            return event
        payload = event[5:].strip()
        if payload == _DONE:
            return event
        try:
            chunk = _decode.decode(payload)
        except msgspec.DecodeError:
            return event
        if not isinstance(chunk, dict):
            return event
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if self._chat and isinstance(choice, dict) and _role_only(choice):
            return None  # the client already had the role from the first engine
        if self._id is not None and "id" in chunk:
            chunk["id"] = self._id
        if self._created is not None and "created" in chunk:
            chunk["created"] = self._created
        if isinstance(choice, dict) and choice.get("finish_reason"):
            chunk["sage"] = {"continued": self._continued}
        return b"data: " + _encode.encode(chunk)


def _role_only(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    return (
        isinstance(delta, dict)
        and "role" in delta
        and not delta.get("content")
        and not choice.get("finish_reason")
    )
