"""Typed results and their decoding from OpenAI JSON (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sage.unified.sdk.client._errors import InvalidResponseError

__all__ = [
    "ChatResult",
    "CompletionResult",
    "EmbeddingResult",
    "Usage",
    "parse_chat",
    "parse_completion",
    "parse_embedding",
    "parse_model_list",
    "parse_usage",
]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported by the server."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A non-streaming chat completion: the first choice's text and the raw body."""

    text: str
    model: str
    finish_reason: str | None
    usage: Usage | None
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class CompletionResult:
    """A non-streaming text completion (``/v1/completions``)."""

    text: str
    model: str
    finish_reason: str | None
    usage: Usage | None
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """Embeddings in input order."""

    vectors: list[list[float]]
    model: str
    usage: Usage | None
    raw: dict[str, Any] = field(repr=False)


def parse_usage(value: Any) -> Usage | None:
    """``Usage`` from an OpenAI ``usage`` object; ``None`` if absent or malformed."""
    if not isinstance(value, Mapping):
        return None

    def count(key: str) -> int:
        raw = value.get(key)
        return raw if isinstance(raw, int) and not isinstance(raw, bool) else 0

    prompt, completion = count("prompt_tokens"), count("completion_tokens")
    return Usage(prompt, completion, count("total_tokens") or prompt + completion)


def _first_choice(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise InvalidResponseError(f"expected a JSON object, got {type(body).__name__}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise InvalidResponseError("the response has no choices")
    choice: Mapping[str, Any] = choices[0]
    return choice


def parse_chat(body: Any) -> ChatResult:
    """Decode a ``chat.completion`` body. Raises :class:`InvalidResponseError`."""
    choice = _first_choice(body)
    message = choice.get("message")
    text = message.get("content") if isinstance(message, Mapping) else None
    return ChatResult(
        text=text if isinstance(text, str) else "",
        model=str(body.get("model", "")),
        finish_reason=choice.get("finish_reason"),
        usage=parse_usage(body.get("usage")),
        raw=body,
    )


def parse_completion(body: Any) -> CompletionResult:
    """Decode a ``text_completion`` body. Raises :class:`InvalidResponseError`."""
    choice = _first_choice(body)
    text = choice.get("text")
    return CompletionResult(
        text=text if isinstance(text, str) else "",
        model=str(body.get("model", "")),
        finish_reason=choice.get("finish_reason"),
        usage=parse_usage(body.get("usage")),
        raw=body,
    )


def parse_embedding(body: Any) -> EmbeddingResult:
    """Decode an embeddings body, ordering vectors by ``index``. Raises :class:`InvalidResponseError`."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise InvalidResponseError("the embeddings response has no data list")
    rows: list[tuple[int, list[float]]] = []
    for position, item in enumerate(body["data"]):
        if not isinstance(item, Mapping) or not isinstance(item.get("embedding"), list):
            raise InvalidResponseError("an embeddings item has no embedding list")
        index = item.get("index", position)
        rows.append(
            (index if isinstance(index, int) else position, [float(x) for x in item["embedding"]])
        )
    rows.sort(key=lambda row: row[0])
    return EmbeddingResult(
        vectors=[vector for _, vector in rows],
        model=str(body.get("model", "")),
        usage=parse_usage(body.get("usage")),
        raw=body,
    )


def parse_model_list(body: Any) -> list[str]:
    """Sorted model ids from a ``/v1/models`` body. Raises :class:`InvalidResponseError`."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise InvalidResponseError("the models response has no data list")
    return sorted({str(m["id"]) for m in body["data"] if isinstance(m, Mapping) and "id" in m})
