"""Request-head serialisation and origin validation (pure, no sockets)."""

from __future__ import annotations

import httptools
import pytest

from sage.unified.gateway.upstream._request import build_request_head, host_header, normalise_origin


class _Capture:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.body = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def _parse(raw: bytes) -> tuple[bytes, _Capture]:
    capture = _Capture()
    parser = httptools.HttpRequestParser(capture)
    parser.feed_data(raw)
    assert capture.complete
    return parser.get_method(), capture


def test_head_parses_as_http11_with_host_length_and_caller_headers() -> None:
    body = b'{"model": "m"}'
    head = build_request_head(
        b"POST", b"/v1/chat/completions?x=1", b"10.0.0.5:8900",
        [(b"Authorization", b"Bearer k"), (b"X-Request-Id", b"r1")], len(body),
    )  # fmt: skip
    method, req = _parse(head + body)
    assert method == b"POST"
    assert req.url == b"/v1/chat/completions?x=1"
    assert req.headers == [
        (b"host", b"10.0.0.5:8900"),
        (b"content-length", b"14"),
        (b"authorization", b"Bearer k"),
        (b"x-request-id", b"r1"),
    ]
    assert req.body == body


def test_caller_host_length_and_transfer_encoding_are_replaced_not_duplicated() -> None:
    head = build_request_head(
        b"POST", b"/", b"h:1",
        [(b"Host", b"evil"), (b"Content-Length", b"999"), (b"Transfer-Encoding", b"chunked"), (b"x-a", b"1")],
        3,
    )  # fmt: skip
    _, req = _parse(head + b"abc")
    assert req.headers == [(b"host", b"h:1"), (b"content-length", b"3"), (b"x-a", b"1")]


def test_get_without_body_has_no_content_length_but_empty_post_has_zero() -> None:
    assert b"content-length" not in build_request_head(b"GET", b"/v1/models", b"h", [], 0)
    assert b"\r\ncontent-length: 0\r\n" in build_request_head(b"POST", b"/", b"h", [], 0)


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        (b"GET", b"/ HTTP/1.1\r\nx: y", []),
        (b"GET", b"/a b", []),
        (b"GET", b"/", [(b"x-a", b"v\r\nInjected: 1")]),
        (b"GET", b"/", [(b"x-a", b"v\nInjected: 1")]),
        (b"GET", b"/", [(b"x-a", b"\r\n")]),
        (b"GET", b"/", [(b"x-a\r\nInjected", b"1")]),
        (b"GET", b"/", [(b"x-a", b"bare\rcr")]),
        (b"GET /x", b"/", []),
    ],
)
def test_crlf_or_space_injection_is_refused(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(ValueError, match="CR, LF or space"):
        build_request_head(method, target, b"h", headers, 0)


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        (("http", "127.0.0.1", 8900), b"127.0.0.1:8900"),
        (("http", "engine.local", 80), b"engine.local"),
        (("http", "::1", 8900), b"[::1]:8900"),
    ],
)
def test_host_header(origin: tuple[str, str, int], expected: bytes) -> None:
    assert host_header(origin) == expected


@pytest.mark.parametrize(
    "origin",
    [
        ("ftp", "h", 21),
        ("http", "", 80),
        ("http", "h", 0),
        ("http", "h", 70000),
    ],
)
def test_unsupported_or_invalid_origin_is_refused(origin: tuple[str, str, int]) -> None:
    with pytest.raises(ValueError, match=r"origin|scheme"):
        normalise_origin(origin)
