"""Read just ``model``, ``stream``, ``user`` and ``stream_options.include_usage``.

The proxy forwards the request body untouched; it only needs these fields to route.
msgspec decodes into a small :class:`msgspec.Struct` and *skips* every other field
(``messages`` included) without building Python objects for it, which is several
times faster than :func:`json.loads` on chat bodies (see ``bench/routing_overhead.py``).
The whole body is still checked to be valid JSON, and to nest no deeper than
:data:`MAX_JSON_DEPTH`.
"""

from __future__ import annotations

import msgspec
from multipart import (  # type: ignore[import-untyped]
    MultipartError,
    MultipartSegment,
    PushMultipartParser,
    parse_options_header,
)

__all__ = ["MAX_JSON_DEPTH", "PeekError", "RequestPeek", "peek_form", "peek_request"]

MAX_JSON_DEPTH = 64
"""No value of a request body may sit inside more than this many arrays and objects (the
body's own object counts). OpenAI bodies nest fewer than 10 levels, tool schemas rarely
20. Without a bound, about 1,000 levels (a 2 KB body) exhaust the recursion of the JSON
decoder here, and of the engines' (whose 500s would count against a healthy backend)."""

_FEW_BRACKETS = 16
"""A body over 1 KiB with at most this many opening brackets (fewer than
``MAX_JSON_DEPTH``) is spared the depth check; measured in ``bench/routing_overhead.py``."""

_DEEPER = b"\n" + b" " * (MAX_JSON_DEPTH + 1)
"""In :func:`msgspec.json.format` output with ``indent=1``, the start of a line that is
inside more than ``MAX_JSON_DEPTH`` containers (a JSON string holds no raw newline, so
every newline there is msgspec's own)."""


class PeekError(ValueError):
    """The body is not a JSON object, nests deeper than ``MAX_JSON_DEPTH``, or a routed field
    has the wrong type (answer 400)."""


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
            (e.g. ``Expected `str`, got `int` - at `$.model```); or nested deeper
            than :data:`MAX_JSON_DEPTH`.
    """
    if not _few_brackets(body):
        _check_depth(body)
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


def _few_brackets(body: bytes) -> bool:
    """Whether ``body`` has too few opening brackets (inside strings or not) to nest
    deeper than ``MAX_JSON_DEPTH``. A short body is counted; a longer one is searched with
    ``find``, which runs at memchr speed, so a body of prose (most of a chat request's
    bytes) costs a few calls whatever its size. Past ``_FEW_BRACKETS`` brackets,
    formatting the body costs less than finding more."""
    if len(body) <= 1024:
        return body.count(b"{") + body.count(b"[") <= MAX_JSON_DEPTH
    find = body.find
    seen = 0
    for bracket in (b"{", b"["):
        at = find(bracket)
        while at >= 0:
            seen += 1
            if seen > _FEW_BRACKETS:
                return False
            at = find(bracket, at + 1)
    return True


def _check_depth(body: bytes) -> None:
    """Raise :class:`PeekError` if ``body`` nests deeper than ``MAX_JSON_DEPTH``.

    Which brackets are structure depends on strings and their escapes; scanning for them
    in Python costs ten times the decode on a tool-heavy body, while msgspec's formatter
    does it in one C pass (measured in ``bench/routing_overhead.py``) and writes each
    nested value on a line indented by its depth.
    """
    try:
        too_deep = _DEEPER in msgspec.json.format(body, indent=1)
    except msgspec.DecodeError as exc:
        raise PeekError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # thousands of levels: deeper than msgspec follows
        too_deep = True
    if too_deep:
        raise PeekError(
            f"request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
        )


def peek_form(body: bytes, content_type: bytes | None) -> RequestPeek:
    """The routing fields of a ``multipart/form-data`` body (audio transcriptions): only
    its ``model`` field is read; file parts are skipped, never copied.

    Raises:
        PeekError: not multipart with a boundary, malformed, or no ``model`` field.
    """
    media, options = parse_options_header((content_type or b"").decode("latin-1"))
    boundary = options.get("boundary")
    if media != "multipart/form-data" or not boundary:
        raise PeekError("the body must be multipart/form-data (with a boundary)")
    model = _form_field(body, boundary, "model")
    if model is None:
        raise PeekError("the form has no model field")
    return RequestPeek(model=model, stream=False, user=None, include_usage=False)


def _form_field(body: bytes, boundary: str, wanted: str) -> str | None:
    parser = PushMultipartParser(boundary.encode("latin-1"), max_header_size=8192)
    found: str | None = None
    name: str | None = None
    value = bytearray()
    try:
        # An empty chunk tells the parser the body is complete.
        for chunk in (body, b""):
            for event in parser.parse(chunk):
                if isinstance(event, MultipartSegment):
                    name, value = event.name, bytearray()
                elif event is None:  # the end of a part
                    if name == wanted and found is None:
                        found = value.decode("utf-8", "replace").strip()
                    name = None
                elif name == wanted and len(value) + len(event) <= 512:
                    value += event
    except MultipartError as exc:
        raise PeekError(f"malformed multipart body: {exc}") from None
    return found
