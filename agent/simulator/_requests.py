"""Decoding and validation of OpenAI request bodies (pure; msgspec only).

Only the fields the simulator acts on are decoded; msgspec skips the rest, which
keeps the hot path cheap. Every failure raises :class:`BadRequestError` (400).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from sage.unified.agent.simulator._errors import BadRequestError
from sage.unified.agent.simulator._text import count_tokens

__all__ = [
    "GenerationRequest",
    "ParsedEmbedding",
    "parse_chat",
    "parse_completion",
    "parse_embedding",
]

T = TypeVar("T")
PositiveInt = Annotated[int, Meta(ge=1)]
TokenIds = list[int]


class _TextPart(Struct):
    type: str = "text"
    text: str | None = None


class _Message(Struct):
    role: str
    content: str | list[_TextPart] | None = None


class _StreamOptions(Struct):
    include_usage: bool | None = None


class _ChatBody(Struct):
    messages: list[_Message]
    model: str | None = None
    stream: bool | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stream_options: _StreamOptions | None = None


class _CompletionBody(Struct):
    prompt: str | list[str | int | TokenIds]
    model: str | None = None
    stream: bool | None = None
    max_tokens: PositiveInt | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stream_options: _StreamOptions | None = None


class _EmbeddingBody(Struct):
    input: str | list[str | int | TokenIds]
    model: str | None = None
    encoding_format: Literal["float", "base64"] | None = None


_chat_decoder = msgspec.json.Decoder(_ChatBody)
_completion_decoder = msgspec.json.Decoder(_CompletionBody)
_embedding_decoder = msgspec.json.Decoder(_EmbeddingBody)


@dataclass(slots=True)
class GenerationRequest:
    """A validated chat or completion request.

    Attributes:
        model: the requested model, ``None`` when the body had none (vLLM then
            uses its first served model).
        prompts: the prompt texts (a chat has one: its messages joined).
        prompt_tokens: approximate prompt tokens over all prompts.
        stream: SSE streaming asked for.
        include_usage: ``stream_options.include_usage``.
        max_tokens: the client's cap on generated tokens per choice, if any.
        n: choices per prompt.
    """

    model: str | None
    prompts: list[str]
    prompt_tokens: int
    stream: bool
    include_usage: bool
    max_tokens: int | None
    n: int


@dataclass(slots=True)
class ParsedEmbedding:
    """A validated embeddings request: one text per input item."""

    model: str | None
    inputs: list[str]
    prompt_tokens: int
    base64: bool


def _decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    if not body:
        raise BadRequestError("Request body is empty; expected a JSON object.")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequestError(f"Invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"Invalid JSON in request body: {exc}") from None


def _item_text(item: str | int | TokenIds) -> tuple[str, int]:
    """Text and token count of one prompt/input item (token ids count one each)."""
    if isinstance(item, str):
        return item, count_tokens(item)
    if isinstance(item, int):
        return str(item), 1
    return " ".join(map(str, item)), max(1, len(item))


def _items(value: str | list[str | int | TokenIds], field: str) -> tuple[list[str], int]:
    if isinstance(value, str):
        return [value], count_tokens(value)
    if not value:
        raise BadRequestError(f"`{field}` must not be empty.", param=field)
    if all(isinstance(v, int) for v in value):
        # A flat list of token ids is one prompt, as in the OpenAI API.
        return [" ".join(map(str, value))], len(value)
    texts: list[str] = []
    tokens = 0
    for item in value:
        if isinstance(item, int):
            raise BadRequestError(f"`{field}` mixes token ids and other items.", param=field)
        text, n = _item_text(item)
        texts.append(text)
        tokens += n
    return texts, tokens


def parse_chat(body: bytes) -> GenerationRequest:
    """Validate a ``/v1/chat/completions`` body.

    Raises:
        BadRequestError: bad JSON, missing ``messages``, empty ``messages`` or a field
            of the wrong type or range.
    """
    req = _decode(_chat_decoder, body)
    if not req.messages:
        raise BadRequestError("`messages` must not be empty.", param="messages")
    parts: list[str] = []
    for m in req.messages:
        content = m.content
        if isinstance(content, str):
            parts.append(content)
        elif content is not None:
            parts.extend(p.text for p in content if p.text is not None)
    text = "\n".join(parts)
    max_tokens = (
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    )
    return GenerationRequest(
        model=req.model,
        prompts=[text],
        prompt_tokens=count_tokens(text) + 4 * len(req.messages),
        stream=bool(req.stream),
        include_usage=bool(req.stream_options is not None and req.stream_options.include_usage),
        max_tokens=max_tokens,
        n=req.n or 1,
    )


def parse_completion(body: bytes) -> GenerationRequest:
    """Validate a ``/v1/completions`` body (``prompt``: str, list of str, token ids).

    Raises:
        BadRequestError: bad JSON, missing or empty ``prompt``, wrong field types.
    """
    req = _decode(_completion_decoder, body)
    prompts, tokens = _items(req.prompt, "prompt")
    return GenerationRequest(
        model=req.model,
        prompts=prompts,
        prompt_tokens=tokens,
        stream=bool(req.stream),
        include_usage=bool(req.stream_options is not None and req.stream_options.include_usage),
        max_tokens=req.max_tokens,
        n=req.n or 1,
    )


def parse_embedding(body: bytes) -> ParsedEmbedding:
    """Validate a ``/v1/embeddings`` body (``input``: str, list of str, token ids).

    Raises:
        BadRequestError: bad JSON, missing or empty ``input``, bad ``encoding_format``.
    """
    req = _decode(_embedding_decoder, body)
    inputs, tokens = _items(req.input, "input")
    return ParsedEmbedding(
        model=req.model,
        inputs=inputs,
        prompt_tokens=tokens,
        base64=req.encoding_format == "base64",
    )
