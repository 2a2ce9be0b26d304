"""What a routing policy may know about one request, and what it decided (pure).

The data plane builds one :class:`RoutingRequest` per proxied request and passes it to
``policy.select(..., request=...)``; the ledger records it when the request ends.
Building it costs a small object: nothing is parsed until a policy asks for
:meth:`RoutingRequest.chunk_hashes`, so policies that ignore prompts pay nothing.

Prompt chunks
    The gateway tokenizes nothing exactly: it approximates an engine's KV blocks by
    fixed-size chunks of the *rendered prompt's* UTF-8 bytes.

    * chat (``/v1/chat/completions``): each message renders as
      ``<|role|>\\n{content}\\n`` in order (a list content joins its text parts with
      ``\\n``), then ``<|assistant|>\\n`` (the generation prompt), the simulator's
      template. Any template that renders messages in order keeps a shared
      conversation prefix a shared text prefix, which is all the index needs.
    * completions (``/v1/completions``): the ``prompt`` string (or the only string
      of a one-element list).
    * anything else (embeddings, token-id prompts, bodies the decoder refuses): no
      chunks; a cache-aware policy routes such a request by load alone.

    Chunk ``i`` covers bytes ``[i*C, (i+1)*C)``; only full chunks count. Its key is the
    CRC-32 of the whole prefix up to its end (``zlib.crc32`` continued chunk by chunk,
    so each key stands for everything before it, as a vLLM block hash chains its
    parent's) with the chunk's index in the high bits: two prompts share key ``i``
    exactly when they share the first ``(i+1)*C`` bytes, up to a CRC collision among
    prefixes of the same length (about one in four billion; a collision only misleads
    one routing choice). CRC-32 is deterministic across processes (unlike ``hash()``),
    so every gateway computes the same keys.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import msgspec

__all__ = ["DEFAULT_CHUNK_BYTES", "RoutingRequest", "prompt_text"]

DEFAULT_CHUNK_BYTES = 128
"""About 32 tokens of English text: finer than that costs hashing time for little gain
(an engine's own block is 16 tokens)."""

_CHAT_PATH = b"/v1/chat/completions"
_COMPLETIONS_PATH = b"/v1/completions"


class _Part(msgspec.Struct):
    type: str = ""
    text: str | None = None


class _Message(msgspec.Struct):
    role: str = ""
    content: str | list[_Part] | None = None


class _Chat(msgspec.Struct):
    messages: list[_Message] = []


class _Completion(msgspec.Struct):
    prompt: str | list[str] | None = None


_chat_decoder = msgspec.json.Decoder(_Chat)
_completion_decoder = msgspec.json.Decoder(_Completion)


def _content_text(content: str | list[_Part] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content if part.text is not None)


def _decoded_prompt(path: bytes, body: bytes) -> list[_Message] | str | None:
    """A chat body's messages or a completions body's prompt (``None``: no readable
    prompt; never raises)."""
    try:
        if path == _CHAT_PATH:
            return _chat_decoder.decode(body).messages or None
        if path == _COMPLETIONS_PATH:
            prompt = _completion_decoder.decode(body).prompt
            if isinstance(prompt, list):
                return prompt[0] if len(prompt) == 1 else None
            return prompt
    except msgspec.DecodeError:  # includes ValidationError: an unexpected shape
        return None
    return None


def _rendered(prompt: list[_Message] | str) -> str:
    if isinstance(prompt, str):
        return prompt
    parts = [f"<|{m.role}|>\n{_content_text(m.content)}\n" for m in prompt]
    parts.append("<|assistant|>\n")
    return "".join(parts)


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _rendered_size(prompt: list[_Message] | str) -> int:
    """``len(_rendered(prompt).encode(...))`` without rendering it."""
    if isinstance(prompt, str):
        return _utf8_size(prompt)
    size = len("<|assistant|>\n")
    for m in prompt:  # "<|{role}|>\n{content}\n"
        size += _utf8_size(m.role) + _utf8_size(_content_text(m.content)) + 6
    return size


def prompt_text(path: bytes, body: bytes) -> str | None:
    """The rendered prompt of a chat or completions body (module docstring), or ``None``
    when the body has no prompt the gateway can read (never raises)."""
    prompt = _decoded_prompt(path, body)
    return None if prompt is None else _rendered(prompt)


def _chunk_keys(data: bytes, size: int) -> tuple[int, ...]:
    crc32 = zlib.crc32
    crc = 0
    index = 0
    keys: list[int] = []
    append = keys.append
    for start in range(0, len(data) - size + 1, size):
        crc = crc32(data[start : start + size], crc)
        index += 1 << 32
        append(index | crc)
    return tuple(keys)


class RoutingRequest:
    """One proxied request as policies and the ledger see it.

    The data plane fills the inputs; a policy may annotate the decision; the relay
    reports the first byte and the usage it sniffed; the ledger reads it all at the end.

    Args:
        model: the ``model`` field.
        path: the OpenAI path (``b"/v1/chat/completions"`` ...).
        body: the raw request body (not parsed until :meth:`chunk_hashes`).
        session_key: the affinity key (``X-Session-ID`` or the body's ``user``).
        request_id: the request's id (for the ledger).

    Attributes set by a policy (``None``/``0`` when it does not know):
        reason: why the engine was chosen: ``prefix``, ``load``, ``affinity``,
            ``fallback`` (no prompt to match), ``round_robin``.
        prompt_units: the prompt's size in the index's unit (bytes or tokens).
        available_units: the longest prefix cached on any candidate, as the index knows it.
        captured_units: the prefix cached on the chosen engine, as the index knows it.
        units_per_token: the policy's estimate, to show units as tokens when the
            engine reported no usage.

    Attributes set by the data plane and the relay:
        attempts: engines tried so far.
        ttft_s: seconds from arrival to the first response byte.
        usage: ``(prompt_tokens, cached_tokens)`` from the engine's answer, if it had one.
    """

    __slots__ = (
        "_chunks",
        "_release",
        "attempts",
        "available_units",
        "body",
        "captured_units",
        "model",
        "path",
        "prompt_units",
        "reason",
        "request_id",
        "session_key",
        "ttft_s",
        "units_per_token",
        "usage",
    )

    def __init__(
        self,
        model: str,
        path: bytes,
        body: bytes,
        session_key: str | None = None,
        *,
        request_id: bytes = b"",
    ) -> None:
        self.model = model
        self.path = path
        self.body = body
        self.session_key = session_key
        self.request_id = request_id
        self._chunks: tuple[int, ...] | None = None
        self._release: Callable[[], None] | None = None
        self.attempts = 0
        self.reason: str | None = None
        self.prompt_units = 0
        self.available_units: int | None = None
        self.captured_units: int | None = None
        self.units_per_token = 0.0
        self.ttft_s: float | None = None
        self.usage: tuple[int, int] | None = None

    def chunk_hashes(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[int, ...]:
        """The keys of the rendered prompt's full chunks (module docstring); empty when
        there is no readable prompt. Computed once (the first size asked wins)."""
        chunks = self._chunks
        if chunks is None:
            prompt = _decoded_prompt(self.path, self.body)
            size = 0 if prompt is None else _rendered_size(prompt)
            if size < chunk_bytes:  # no full chunk: the size is all there is to know
                self.prompt_units = size
                chunks = self._chunks = ()
            else:
                assert prompt is not None
                data = _rendered(prompt).encode("utf-8", "surrogatepass")
                self.prompt_units = len(data)
                chunks = self._chunks = _chunk_keys(data, chunk_bytes)
        return chunks

    # -- lifecycle hooks -----------------------------------------------------------

    def hold(self, release: Callable[[], None]) -> None:
        """A policy counts work against the chosen engine until the first byte or the end
        (``release`` undoes it; a new hold replaces an unreleased one, releasing it)."""
        self.release()
        self._release = release

    def release(self) -> None:
        """Undo the policy's hold, if any (idempotent)."""
        release = self._release
        if release is not None:
            self._release = None
            release()

    def first_byte(self, ttft_s: float) -> None:
        """The engine's first response byte reached the gateway ``ttft_s`` after arrival:
        its prefill is done."""
        self.ttft_s = ttft_s
        if self._release is not None:
            self.release()

    def tokens_of(self, units: int) -> int:
        """``units`` of the index as tokens: scaled by the engine's prompt token count
        when its usage is known, else by the policy's estimate."""
        if self.usage is not None and self.prompt_units:
            return round(units * self.usage[0] / self.prompt_units)
        if self.units_per_token:
            return round(units / self.units_per_token)
        return units
