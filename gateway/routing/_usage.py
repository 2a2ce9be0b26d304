"""Find an engine's ``usage`` in the bytes it answered, without decoding the answer (pure).

The ledger's "delivered" figure is the engine's own count of cached prompt tokens,
``usage.prompt_tokens_details.cached_tokens`` (vLLM reports it when started with
``--enable-prompt-tokens-details``; ``null`` details mean none were cached). The relay
hands the answer over as it passes:

* a non-streamed body: whole, to :func:`find_usage`;
* a stream: the last three chunks read, joined, once at the end (the relay keeps them
  as it goes, an assignment per chunk): the usage event is the last data event before
  ``[DONE]`` (when the client asked for it with ``stream_options.include_usage``), it may
  be cut across two reads, and ``[DONE]`` may arrive in a third.

The search is bytes-level: ``"prompt_tokens"`` (with its closing quote, so
``"prompt_tokens_details"`` does not match) appears in JSON only as a key of a usage
object, since a quote inside a JSON string is escaped. The last occurrence wins.
"""

from __future__ import annotations

__all__ = ["find_usage"]

_PROMPT_KEY = b'"prompt_tokens"'
_CACHED_KEY = b'"cached_tokens"'
_WINDOW = 512
"""Bytes of a usage object searched for ``cached_tokens`` (vLLM's is under 200)."""


def _number_after(data: bytes, key_at: int) -> int | None:
    """The integer value of the JSON key found at ``key_at`` (``None``: not a number)."""
    colon = data.find(b":", key_at)
    if colon < 0:
        return None
    end = data.find(b",", colon)
    brace = data.find(b"}", colon)
    if end < 0 or 0 <= brace < end:
        end = brace
    if end < 0:
        return None
    try:
        return int(data[colon + 1 : end])  # int() takes bytes and ignores spaces
    except ValueError:  # null, or not a number
        return None


def find_usage(data: bytes) -> tuple[int, int] | None:
    """``(prompt_tokens, cached_tokens)`` of the last usage object in ``data``, or ``None``
    when there is none (``cached_tokens`` is 0 when the details are absent or null)."""
    at = data.rfind(_PROMPT_KEY)
    if at < 0:
        return None
    prompt = _number_after(data, at)
    if prompt is None:
        return None
    # The object starts at its "usage" key; its keys come in any order.
    start = data.rfind(b'"usage"', max(0, at - _WINDOW), at)
    if start < 0:
        start = at
    cached_at = data.find(_CACHED_KEY, start, start + _WINDOW)
    cached = _number_after(data, cached_at) if cached_at >= 0 else None
    return prompt, cached or 0
