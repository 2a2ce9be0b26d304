"""Decoding of the non-generation bodies: pooling, scoring, tokenization (pure).

Embeddings, ``/pooling`` and ``/classify`` take ``input`` (a string, strings, token
ids or lists of token ids); ``/score`` takes two sides under any of vLLM's names
(``text_1``/``text_2``, ``queries``/``documents``, ``queries``/``items``,
``data_1``/``data_2``); ``/rerank`` takes ``query``, ``documents`` and ``top_n``.
``/tokenize`` takes a ``prompt`` or chat ``messages``; ``/detokenize`` ``tokens``.
Every failure raises :class:`BadRequestError` (400).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec
from msgspec import Struct

from sage.unified.agent.simulator._errors import BadRequestError
from sage.unified.agent.simulator._requests import ChatMessage, decode_body, message_text
from sage.unified.agent.simulator._tokenizer import render_chat

__all__ = [
    "PoolingInput",
    "RerankInput",
    "ScoreInput",
    "TokenizeInput",
    "parse_detokenize",
    "parse_pooling",
    "parse_rerank",
    "parse_score",
    "parse_tokenize",
]

TokenIds = list[int]
Texts = str | list[str]


class _PoolingBody(Struct):
    input: str | list[str | int | TokenIds]
    model: str | None = None
    encoding_format: Literal["float", "base64"] | None = None


class _ScoreBody(Struct):
    model: str | None = None
    text_1: Texts | None = None
    text_2: Texts | None = None
    queries: Texts | None = None
    documents: Texts | None = None
    items: Texts | None = None
    data_1: Texts | None = None
    data_2: Texts | None = None


class _RerankBody(Struct):
    query: str
    documents: list[str]
    model: str | None = None
    top_n: int = 0


class _TokenizeBody(Struct):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool | None = False


class _DetokenizeBody(Struct):
    tokens: list[int]
    model: str | None = None


_pooling_decoder = msgspec.json.Decoder(_PoolingBody)
_score_decoder = msgspec.json.Decoder(_ScoreBody)
_rerank_decoder = msgspec.json.Decoder(_RerankBody)
_tokenize_decoder = msgspec.json.Decoder(_TokenizeBody)
_detokenize_decoder = msgspec.json.Decoder(_DetokenizeBody)


@dataclass(slots=True)
class PoolingInput:
    """Embeddings, ``/pooling`` or ``/classify``: one text per item.

    Attributes:
        ids: per item, the token ids when the item was given as ids, else ``None``.
    """

    model: str | None
    texts: list[str]
    ids: list[list[int] | None]
    base64: bool


@dataclass(slots=True)
class ScoreInput:
    """``/score``: the pairs to score, in answer order."""

    model: str | None
    pairs: list[tuple[str, str]]


@dataclass(slots=True)
class RerankInput:
    """``/rerank``: a query, its documents and how many results to return (0: all)."""

    model: str | None
    query: str
    documents: list[str]
    top_n: int


@dataclass(slots=True)
class TokenizeInput:
    """``/tokenize``: the text to tokenize (a chat is rendered first)."""

    model: str | None
    text: str
    return_token_strs: bool


def parse_pooling(body: bytes) -> PoolingInput:
    """Validate an embeddings, ``/pooling`` or ``/classify`` body.

    Raises:
        BadRequestError: bad JSON, missing or empty ``input``, bad ``encoding_format``,
            token ids mixed with text.
    """
    req = decode_body(_pooling_decoder, body)
    value = req.input
    texts: list[str] = []
    ids: list[list[int] | None] = []
    if isinstance(value, str):
        texts, ids = [value], [None]
    elif not value:
        raise BadRequestError("`input` must not be empty.", param="input")
    elif all(isinstance(v, int) for v in value):
        flat = [v for v in value if isinstance(v, int)]
        texts, ids = [" ".join(map(str, flat))], [flat]
    else:
        for item in value:
            if isinstance(item, int):
                raise BadRequestError("`input` mixes token ids and other items.", param="input")
            if isinstance(item, str):
                texts.append(item)
                ids.append(None)
            else:
                texts.append(" ".join(map(str, item)))
                ids.append(list(item))
    return PoolingInput(req.model, texts, ids, req.encoding_format == "base64")


def _side(value: Texts) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def parse_score(body: bytes) -> ScoreInput:
    """Validate a ``/score`` body: 1:1, 1:N or N:N pairs, as vLLM accepts them.

    Raises:
        BadRequestError: bad JSON, no pair of sides, an empty side, or N:M lengths.
    """
    req = decode_body(_score_decoder, body)
    for first, second in (
        (req.text_1, req.text_2),
        (req.queries, req.documents),
        (req.queries, req.items),
        (req.data_1, req.data_2),
    ):
        if first is not None and second is not None:
            break
    else:
        raise BadRequestError("Expected `text_1` and `text_2` (or `queries` and `documents`).")
    left, right = _side(first), _side(second)
    if not left or not right:
        raise BadRequestError("Score inputs must not be empty.")
    if len(left) == 1:
        pairs = [(left[0], r) for r in right]
    elif len(left) == len(right):
        pairs = list(zip(left, right, strict=True))
    else:
        raise BadRequestError("Input lengths must be either 1:1, 1:N or N:N")
    return ScoreInput(req.model, pairs)


def parse_rerank(body: bytes) -> RerankInput:
    """Validate a ``/rerank`` body.

    Raises:
        BadRequestError: bad JSON, missing ``query`` or ``documents``, negative ``top_n``.
    """
    req = decode_body(_rerank_decoder, body)
    if req.top_n < 0:
        raise BadRequestError("`top_n` must be >= 0", param="top_n")
    return RerankInput(req.model, req.query, req.documents, req.top_n)


def parse_tokenize(body: bytes) -> TokenizeInput:
    """Validate a ``/tokenize`` body (``prompt``, or chat ``messages`` to render).

    Raises:
        BadRequestError: bad JSON, neither ``prompt`` nor ``messages``, or
            ``continue_final_message`` with ``add_generation_prompt``.
    """
    req = decode_body(_tokenize_decoder, body)
    if req.messages is not None:
        if req.continue_final_message and req.add_generation_prompt:
            raise BadRequestError(
                "Value error, Cannot set both `continue_final_message` and "
                "`add_generation_prompt` to True."
            )
        text = render_chat(
            [(m.role, message_text(m.content)) for m in req.messages],
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
        )
    elif req.prompt is not None:
        text = req.prompt
    else:
        raise BadRequestError("Expected `prompt` or `messages`.", param="prompt")
    return TokenizeInput(req.model, text, bool(req.return_token_strs))


def parse_detokenize(body: bytes) -> tuple[str | None, list[int]]:
    """Validate a ``/detokenize`` body: ``(model, tokens)``.

    Raises:
        BadRequestError: bad JSON or ``tokens`` missing or not integers.
    """
    req = decode_body(_detokenize_decoder, body)
    return req.model, req.tokens
