from __future__ import annotations

import pytest

from sage.unified.coordinator._errors import UrlPolicyError
from sage.unified.coordinator._netcheck import (
    DEFAULT_ALLOWED_NETWORKS,
    canonical_host,
    check_addresses,
    parse_engine_url,
    parse_networks,
)

ALLOWED = parse_networks(DEFAULT_ALLOWED_NETWORKS)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://10.0.0.1/x",
        "gopher://127.0.0.1:70",
        "http://",
        "http://u:p@127.0.0.1:8901",
    ],
)
def test_bad_url_shapes_rejected(url: str) -> None:
    with pytest.raises(UrlPolicyError):
        parse_engine_url(url)


def test_good_url_normalised() -> None:
    parsed = parse_engine_url("http://127.0.0.1:8901/")
    assert (parsed.url, parsed.host, parsed.port) == ("http://127.0.0.1:8901", "127.0.0.1", 8901)
    assert parse_engine_url("http://[::1]:8901").host == "::1"
    check_addresses("127.0.0.1", ["127.0.0.1"], ALLOWED)


@pytest.mark.parametrize(
    ("host", "addresses", "match"),
    [
        ("169.254.169.254", ["169.254.169.254"], "link-local"),
        ("fe80::1", ["fe80::1"], "link-local"),
        ("metadata.google.internal", ["169.254.169.254"], "link-local"),
        ("8.8.8.8", ["8.8.8.8"], "not in the allowed"),
        ("mapped", ["::ffff:169.254.169.254"], "link-local"),
        ("aws6", ["fd00:ec2::254"], "metadata"),
        ("zero", ["0.0.0.0"], "unspecified"),
        ("nowhere", [], "did not resolve"),
        ("split", ["10.0.0.1", "8.8.8.8"], "8.8.8.8"),
    ],
)
def test_bad_addresses_rejected(host: str, addresses: list[str], match: str) -> None:
    with pytest.raises(UrlPolicyError, match=match):
        check_addresses(host, addresses, ALLOWED)


def test_link_local_refused_even_when_configured() -> None:
    allowed = parse_networks(["0.0.0.0/0", "::/0"])
    with pytest.raises(UrlPolicyError, match="link-local"):
        check_addresses("x", ["169.254.169.254"], allowed)
    check_addresses("x", ["8.8.8.8"], allowed)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.01",  # octal to a C resolver, refused by the HTTP client
        "10.0.0.05",
        "0177.0.0.1",
        "127.1",
        "0x7f.0.0.1",
        "2130706433",
        "exa mple.com",
        "under_score.example",
        "bücher.example",
        "-lead.example",
        "a" * 64 + ".example",
    ],
)
def test_only_canonical_hosts_are_accepted(host: str) -> None:
    with pytest.raises(UrlPolicyError, match="canonical"):
        canonical_host(host)
    with pytest.raises(UrlPolicyError):
        parse_engine_url(f"http://{host}:9/")


def test_canonical_spellings() -> None:
    assert canonical_host("LocalHost.") == "localhost"
    assert canonical_host("[::1]") == "::1"
    assert canonical_host("xn--bcher-kva.example") == "xn--bcher-kva.example"
    assert canonical_host("10.0.0.5") == "10.0.0.5"
    assert parse_engine_url("http://GPU-Node-1:8901").url == "http://gpu-node-1:8901"
