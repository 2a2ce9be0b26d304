"""What a web page may not make a control API do (pure rules)."""

from __future__ import annotations

import pytest

from sage.unified.sdk.protocol import BrowserPolicy, browser_refusal

LOOPBACK = BrowserPolicy.of("127.0.0.1")


def refusal(policy: BrowserPolicy = LOOPBACK, **request: object) -> tuple[int, str] | None:
    fields: dict[str, object] = {
        "method": "POST",
        "scheme": "http",
        "host": "127.0.0.1:8000",
        "origin": None,
        "fetch_site": None,
        "content_type": "application/json",
        "has_body": True,
        **request,
    }
    found = browser_refusal(policy, **fields)  # type: ignore[arg-type]
    return None if found is None else (found.status, found.code)


def test_the_cli_and_the_sdk_pass() -> None:
    assert refusal() is None
    assert refusal(host="localhost:8000") is None
    assert refusal(host="[::1]:8000") is None
    assert refusal(method="GET", has_body=False, content_type=None) is None
    assert refusal(origin="http://127.0.0.1:8000", fetch_site="same-origin") is None


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        # A "simple" cross-origin POST from any web page: no preflight protects it.
        ({"origin": "http://evil.example", "content_type": "text/plain"}, (403, "cross_origin")),
        ({"origin": "http://evil.example"}, (403, "cross_origin")),
        ({"origin": "null"}, (403, "cross_origin")),
        ({"fetch_site": "cross-site"}, (403, "cross_origin")),
        ({"method": "DELETE", "origin": "http://127.0.0.1:9999"}, (403, "cross_origin")),
        # DNS rebinding: the page's own name, pointing at 127.0.0.1.
        ({"host": "evil.example:8000", "method": "GET"}, (403, "host_not_allowed")),
        ({"content_type": "text/plain"}, (415, "unsupported_media_type")),
        ({"content_type": None}, (415, "unsupported_media_type")),
    ],
)
def test_what_a_web_page_may_not_do(request_: dict[str, object], expected: tuple[int, str]) -> None:
    assert refusal(**request_) == expected


def test_configured_names_and_origins() -> None:
    policy = BrowserPolicy.of("127.0.0.1", ["gw.example"], ["https://ops.example"])
    assert refusal(policy, host="gw.example:8000") is None
    assert refusal(policy, origin="https://ops.example", host="gw.example") is None
    assert refusal(policy, content_type="application/merge-patch+json") is None
    network = BrowserPolicy.of("0.0.0.0")
    assert refusal(network, host="10.0.0.1:8000") is None  # tokens guard a network bind
    named = BrowserPolicy.of("0.0.0.0", ["gw.example"])
    assert refusal(named, host="other.example", method="GET") == (403, "host_not_allowed")
