"""Request-head serialisation (pure: bytes in, bytes out, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Origin", "build_request_head", "host_header", "normalise_origin"]

Origin = tuple[str, str, int]
"""``(scheme, host, port)``, e.g. ``("http", "127.0.0.1", 8900)``."""

# Headers this client owns. A caller's copy is dropped rather than duplicated:
# two Content-Length (or Content-Length + Transfer-Encoding) values are the
# classic request-smuggling shape, and the body is always sent length-delimited.
_OWNED = frozenset((b"host", b"content-length", b"transfer-encoding"))
_OWNED_LENGTHS = frozenset(len(n) for n in _OWNED)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Methods whose empty body needs no Content-Length (RFC 9110 §8.6: a user
# agent should not send it for them); every other request always gets one.
_NO_LENGTH_WHEN_EMPTY = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE"))


def normalise_origin(origin: Origin) -> Origin:
    """Validate an origin.

    Raises:
        ValueError: the scheme is neither ``http`` nor ``https``, or the port is out of
            range.
    """
    scheme, host, port = origin
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"unsupported upstream scheme {scheme!r}: use http or https")
    if not host or not 0 < port < 65536:
        raise ValueError(f"invalid upstream origin {origin!r}")
    return origin


def host_header(origin: Origin) -> bytes:
    """The ``Host`` header value for an origin (port omitted when default, IPv6 bracketed)."""
    scheme, host, port = origin
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if _DEFAULT_PORTS.get(scheme) == port:
        return host.encode("idna" if not host.isascii() else "ascii")
    return f"{host}:{port}".encode("idna" if not host.isascii() else "ascii")


def build_request_head(
    method: bytes,
    target: bytes,
    host: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    body_length: int,
) -> bytes:
    """Serialise an HTTP/1.1 request head.

    ``Host`` and ``Content-Length`` are set here; the caller's headers are kept
    verbatim otherwise (the gateway strips hop-by-hop headers before calling),
    except caller copies of ``Host``, ``Content-Length`` and
    ``Transfer-Encoding``, which are dropped.

    Raises:
        ValueError: a method, target, header name or value contains CR, LF
            or (target/method) a space: such a head would inject headers or
            a second request.
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    lines = 3  # request line, host, the empty line ending the head
    if body_length or method not in _NO_LENGTH_WHEN_EMPTY:
        parts += (b"content-length: ", str(body_length).encode("ascii"), b"\r\n")
        lines += 1
    for name, value in headers:
        if len(name) in _OWNED_LENGTHS and name.lower() in _OWNED:
            continue
        parts += (name, b": ", value, b"\r\n")
        lines += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    # Two C-speed scans instead of per-header checks: every line we emit ends
    # in exactly one CRLF, so any other CR or LF came from the caller.
    if head.count(b"\n") != lines or head.count(b"\r") != lines or b" " in target or b" " in method:
        raise ValueError("CR, LF or space in request method, target or headers")
    return head
