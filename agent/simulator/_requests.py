"""Decoding and validation of generation request bodies (pure; msgspec only).

Only the fields the simulator acts on are decoded; msgspec skips the rest, which
keeps the hot path cheap. Every failure raises :class:`BadRequestError` (400).
Chat and Responses prompts are rendered with the fixed template of
:mod:`._tokenizer` here, so a request carries its prompt text from the start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta, Struct

from sage.unified.agent.simulator._errors import BadRequestError
from sage.unified.agent.simulator._tokenizer import render_chat

__all__ = [
    "ChatMessage",
    "GenerationRequest",
    "decode_body",
    "message_text",
    "parse_chat",
    "parse_completion",
    "parse_responses",
]

T = TypeVar("T")
PositiveInt = Annotated[int, Meta(ge=1)]
TokenIds = list[int]
_CONFLICT = "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
# OpenAI's (and vLLM's) default for legacy completions.
_COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class _TextPart(Struct):
    type: str = "text"
    text: str | None = None


class ChatMessage(Struct):
    """One chat message; list contents keep only their text parts."""

    role: str
    content: str | list[_TextPart] | None = None


class _StreamOptions(Struct):
    include_usage: bool | None = None


class _ChatBody(Struct):
    messages: list[ChatMessage]
    model: str | None = None
    stream: bool | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stream_options: _StreamOptions | None = None
    ignore_eos: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False


class _CompletionBody(Struct):
    prompt: str | list[str | int | TokenIds]
    model: str | None = None
    stream: bool | None = None
    max_tokens: PositiveInt | None = _COMPLETIONS_DEFAULT_MAX_TOKENS
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stream_options: _StreamOptions | None = None
    ignore_eos: bool = False


class _InputPart(Struct):
    type: str = "input_text"
    text: str | None = None


class _InputMessage(Struct):
    role: str = "user"
    content: str | list[_InputPart] | None = None
    type: str = "message"


class _ResponsesBody(Struct):
    input: str | list[_InputMessage]
    model: str | None = None
    instructions: str | None = None
    stream: bool | None = None
    max_output_tokens: PositiveInt | None = None
    previous_response_id: str | None = None
    ignore_eos: bool = False


_chat_decoder = msgspec.json.Decoder(_ChatBody)
_completion_decoder = msgspec.json.Decoder(_CompletionBody)
_responses_decoder = msgspec.json.Decoder(_ResponsesBody)


@dataclass(slots=True)
class GenerationRequest:
    """A validated chat, completion or Responses request.

    Attributes:
        model: the requested model, ``None`` when the body had none (vLLM then
            uses its first served model).
        prompts: the prompt texts (a chat has one: its rendered template).
        prompt_ids: token ids given instead of text (completions), else ``None``.
        stream: SSE streaming asked for.
        include_usage: ``stream_options.include_usage``.
        max_tokens: the client's cap on generated tokens per choice, if any.
        ignore_eos: vLLM's ``ignore_eos``: generate exactly ``max_tokens``.
        n: choices per prompt.
        continued_words: words already in a continued final message; they count
            towards the natural answer length.
        previous_response_id: the Responses API field (the simulator keeps no state).
    """

    model: str | None
    prompts: list[str]
    prompt_ids: list[list[int]] | None
    stream: bool
    include_usage: bool
    max_tokens: int | None
    ignore_eos: bool = False
    n: int = 1
    continued_words: int = 0
    previous_response_id: str | None = None


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """Decode a JSON body with ``decoder``.

    Raises:
        BadRequestError: an empty body, bad JSON, or a field of the wrong type or range.
    """
    if not body:
        raise BadRequestError("Request body is empty; expected a JSON object.")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequestError(f"Invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"Invalid JSON in request body: {exc}") from None


def message_text(content: str | list[_TextPart] | list[_InputPart] | None) -> str:
    """A message's text: a string as is, text parts joined with newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.text for p in content if p.text is not None)


def parse_chat(body: bytes) -> GenerationRequest:
    """Validate a ``/v1/chat/completions`` body and render its prompt.

    Raises:
        BadRequestError: bad JSON, missing or empty ``messages``, a field of the wrong
            type or range, or ``continue_final_message`` with ``add_generation_prompt``.
    """
    req = decode_body(_chat_decoder, body)
    if not req.messages:
        raise BadRequestError("`messages` must not be empty.", param="messages")
    if req.continue_final_message and req.add_generation_prompt:
        raise BadRequestError(f"Value error, {_CONFLICT}")
    turns = [(m.role, message_text(m.content)) for m in req.messages]
    text = render_chat(
        turns,
        add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message,
    )
    max_tokens = (
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    )
    return GenerationRequest(
        model=req.model,
        prompts=[text],
        prompt_ids=None,
        stream=bool(req.stream),
        include_usage=bool(req.stream_options is not None and req.stream_options.include_usage),
        max_tokens=max_tokens,
        ignore_eos=req.ignore_eos,
        n=req.n or 1,
        continued_words=len(turns[-1][1].split()) if req.continue_final_message else 0,
    )


def _prompts(value: str | list[str | int | TokenIds]) -> tuple[list[str], list[list[int]] | None]:
    """Prompt texts, and the token ids when the prompt is given as ids."""
    if isinstance(value, str):
        return [value], None
    if not value:
        raise BadRequestError("`prompt` must not be empty.", param="prompt")
    if all(isinstance(v, int) for v in value):
        # A flat list of token ids is one prompt, as in the OpenAI API.
        ids = [int(v) for v in value]  # type: ignore[arg-type]
        return [" ".join(map(str, ids))], [ids]
    if all(isinstance(v, str) for v in value):
        return [str(v) for v in value], None
    if all(isinstance(v, list) for v in value):
        lists = [list(v) for v in value if isinstance(v, list)]
        if any(not ids for ids in lists):
            raise BadRequestError("`prompt` has an empty token list.", param="prompt")
        return [" ".join(map(str, ids)) for ids in lists], lists
    raise BadRequestError("`prompt` mixes token ids and other items.", param="prompt")


def parse_completion(body: bytes) -> GenerationRequest:
    """Validate a ``/v1/completions`` body (``prompt``: str, list of str, token ids).

    ``max_tokens`` defaults to 16, as in vLLM and the OpenAI API.

    Raises:
        BadRequestError: bad JSON, missing or empty ``prompt``, wrong field types.
    """
    req = decode_body(_completion_decoder, body)
    prompts, prompt_ids = _prompts(req.prompt)
    return GenerationRequest(
        model=req.model,
        prompts=prompts,
        prompt_ids=prompt_ids,
        stream=bool(req.stream),
        include_usage=bool(req.stream_options is not None and req.stream_options.include_usage),
        max_tokens=req.max_tokens,
        ignore_eos=req.ignore_eos,
        n=req.n or 1,
    )


def parse_responses(body: bytes) -> GenerationRequest:
    """Validate a ``/v1/responses`` body (``input``: a string or messages).

    ``instructions`` becomes a leading system message; the prompt is rendered with the
    chat template and an assistant header, as vLLM renders it with the model's own.

    Raises:
        BadRequestError: bad JSON, missing or empty ``input``, wrong field types, or
            an input item that is not a message.
    """
    req = decode_body(_responses_decoder, body)
    turns: list[tuple[str, str]] = []
    if req.instructions:
        turns.append(("system", req.instructions))
    if isinstance(req.input, str):
        turns.append(("user", req.input))
    else:
        if not req.input:
            raise BadRequestError("`input` must not be empty.", param="input")
        for item in req.input:
            if item.type != "message":
                raise BadRequestError(
                    f"input items of type {item.type!r} are not supported", param="input"
                )
            turns.append((item.role, message_text(item.content)))
    text = render_chat(turns, add_generation_prompt=True, continue_final_message=False)
    return GenerationRequest(
        model=req.model,
        prompts=[text],
        prompt_ids=None,
        stream=bool(req.stream),
        include_usage=False,
        max_tokens=req.max_output_tokens,
        ignore_eos=req.ignore_eos,
        previous_response_id=req.previous_response_id,
    )
