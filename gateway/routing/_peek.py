"""Read just ``model``, ``stream``, ``user`` and ``stream_options.include_usage``.

The proxy forwards the request body untouched; it only needs these fields to route.
msgspec decodes into a small :class:`msgspec.Struct` and *skips* every other field
(``messages`` included) without building Python objects for it, which is several
times faster than :func:`json.loads` on chat bodies (see ``bench/routing_overhead.py``).
The whole body is still checked to be valid JSON.
"""

from __future__ import annotations

import msgspec

__all__ = ["PeekError", "RequestPeek", "peek_request"]


class PeekError(ValueError):
    """The body is not a JSON object, or a routed field has the wrong type (answer 400)."""


class RequestPeek(msgspec.Struct, frozen=True):
    """The routing-relevant fields of an OpenAI request body."""

    model: str | None
    """``None`` when absent (the gateway answers 400 or uses a default)."""
    stream: bool
    """``stream`` (``false`` when absent or null)."""
    user: str | None
    """``user``, a session key candidate."""
    include_usage: bool
    """``stream_options.include_usage`` (``false`` when absent)."""


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _Body(msgspec.Struct):
    model: str | None = None
    stream: bool | None = None
    user: str | None = None
    stream_options: _StreamOptions | None = None


_decoder = msgspec.json.Decoder(_Body)


def peek_request(body: bytes) -> RequestPeek:
    """Extract the routing fields of an OpenAI request body.

    Args:
        body: The raw request body.

    Returns:
        The fields; unknown fields are ignored.

    Raises:
        PeekError: Invalid JSON, not an object, or ``model``/``user`` not a string,
            ``stream``/``stream_options.include_usage`` not a boolean,
            ``stream_options`` not an object. The message names the field
            (e.g. ``Expected `str`, got `int` - at `$.model```).
    """
    try:
        parsed = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise PeekError(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise PeekError(f"request body is not valid JSON: {exc}") from None
    options = parsed.stream_options
    return RequestPeek(
        model=parsed.model,
        stream=bool(parsed.stream),
        user=parsed.user,
        include_usage=bool(options is not None and options.include_usage),
    )
