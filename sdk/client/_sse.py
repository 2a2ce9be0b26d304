"""Server-sent events: line decoding and OpenAI stream accumulation (pure: no I/O)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sage.unified.sdk.client._errors import StreamInterruptedError
from sage.unified.sdk.client._results import Usage, parse_usage

__all__ = ["ChatStreamBase", "SSEDecoder", "SSEEvent", "StreamAccumulator"]


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str


class SSEDecoder:
    """Turns lines (without their line ending) into events, per the WHATWG rules we need."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SSEEvent | None:
        """Feed one line; returns an event when a blank line completes one."""
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent(event=self._event or "message", data="\n".join(self._data))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def flush(self) -> SSEEvent | None:
        """An event left pending when the stream ended without a blank line."""
        return self.feed("")


class StreamAccumulator:
    """Folds OpenAI stream chunks (chat or completions) into deltas and totals.

    After the stream: ``text`` (accumulated), ``finish_reason``, ``usage``,
    ``model``; ``done`` once ``[DONE]`` arrived.
    """

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.model: str = ""
        self.done = False

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def interrupted(self, reason: str) -> StreamInterruptedError:
        """The error for a stream cut after it started, carrying the text so far."""
        return StreamInterruptedError(f"the stream was interrupted: {reason}", self.text)

    def on_event(self, event: SSEEvent) -> str | None:
        """Apply one event; returns the text delta it carried, if any.

        Raises:
            StreamInterruptedError: the event is an in-band error.
        """
        data = event.data.strip()
        if data == "[DONE]":
            self.done = True
            return None
        try:
            chunk: Any = json.loads(data)
        except ValueError:
            if event.event == "error":
                raise StreamInterruptedError(f"server error: {data}", self.text) from None
            return None
        if not isinstance(chunk, dict):
            return None
        if event.event == "error" or "error" in chunk:
            detail = chunk.get("error", chunk)
            if isinstance(detail, Mapping):
                raise StreamInterruptedError(
                    f"server error: {detail.get('message') or detail}",
                    self.text,
                    error_type=detail.get("type"),
                    error_code=detail.get("code"),
                )
            raise StreamInterruptedError(f"server error: {detail}", self.text)
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        usage = parse_usage(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, Mapping) else choice.get("text")
        if isinstance(text, str) and text:
            self._parts.append(text)
            return text
        return None

    def on_end(self) -> None:
        """The body ended cleanly; raises if it ended before the answer was complete.

        A stream is complete with ``[DONE]`` or, failing that, a ``finish_reason``.

        Raises:
            StreamInterruptedError: neither arrived.
        """
        if not self.done and self.finish_reason is None:
            raise self.interrupted("the connection closed before the end of the answer")


class ChatStreamBase:
    """What the sync and async chat streams share: SSE lines in, text deltas and totals out.

    The subclasses read the lines (``httpx``, with or without ``await``); this part
    decodes them, so both streams end, fail and count the same way.
    """

    def __init__(self) -> None:
        self._acc = StreamAccumulator()
        self._decoder = SSEDecoder()

    @property
    def text(self) -> str:
        return self._acc.text

    @property
    def usage(self) -> Usage | None:
        return self._acc.usage

    @property
    def finish_reason(self) -> str | None:
        return self._acc.finish_reason

    @property
    def model(self) -> str:
        return self._acc.model

    def _on_line(self, line: str) -> str | None:
        """Feed one line; the text delta it completes, if any.

        Raises:
            StreamInterruptedError: the server sent an error event.
        """
        event = self._decoder.feed(line)
        return None if event is None else self._acc.on_event(event)

    def _on_end(self) -> None:
        """The body ended: apply a pending event, then check the answer is complete.

        Raises:
            StreamInterruptedError: the answer is incomplete or the last event is an error.
        """
        event = self._decoder.flush()
        if event is not None:
            self._acc.on_event(event)
        self._acc.on_end()
