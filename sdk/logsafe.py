"""Client-controlled values made safe to write to a log.

A request target, a header value or a method comes from whoever opened the connection.
Logged as it is, a CR or LF forges a log line, an ESC sequence rewrites the terminal that
shows the log, and a 7 KB value buries the line that mattered. :func:`safe_log_value`
escapes and bounds such a value; every component uses it for every client-controlled value
it logs.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["safe_log_value"]

_BYTE_ESCAPES = tuple(
    "\\\\" if byte == 0x5C else chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}"
    for byte in range(256)
)
"""How each byte of a ``bytes`` value is written: printable ASCII as itself, the rest as
``\\xNN``, the backslash doubled (so an escape in the output always stands for one)."""


def safe_log_value(value: str | bytes, limit: int = 256) -> str:
    """``value`` as one printable line of at most ``limit`` characters, plus a marker.

    Control characters (CR, LF, ESC, DEL, ...) and every other non-printable character
    are escaped the way :func:`repr` does (``\\x1b``, ``\\u202e``); a backslash is doubled.
    A ``str`` keeps its printable non-ASCII characters; a ``bytes`` value is escaped byte
    by byte (anything outside printable ASCII). What does not fit in ``limit`` characters
    is left out and named by a marker such as ``…(+6900 bytes)`` (``chars`` for a ``str``).

    The common case, a short printable value, is returned as it is (no copy).

    Args:
        value: The client-controlled value (a request target, header value, method...).
        limit: Most characters of the value to keep (escapes count at their written
            length); the marker comes on top.

    Raises:
        ValueError: ``limit`` is negative.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    if isinstance(value, bytes):
        if len(value) <= limit and value.isascii():
            text = value.decode("ascii")
            if text.isprintable() and "\\" not in text:
                return text
        return _bounded((_BYTE_ESCAPES[byte] for byte in value), len(value), limit, "bytes")
    if len(value) <= limit and value.isprintable() and "\\" not in value:
        return value
    return _bounded(map(_escape_char, value), len(value), limit, "chars")


def _escape_char(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _bounded(pieces: Iterable[str], total: int, limit: int, unit: str) -> str:
    """Join escaped pieces up to ``limit`` characters; name what was left out."""
    kept: list[str] = []
    length = 0
    for piece in pieces:
        if length + len(piece) > limit:
            break
        kept.append(piece)
        length += len(piece)
    left_out = total - len(kept)
    if left_out:
        kept.append(f"…(+{left_out} {unit})")
    return "".join(kept)
