from __future__ import annotations

import pytest

from sage.unified.sdk.auth import TokenSet, bearer_token, hash_token, is_loopback_host


def test_tokens_are_held_as_digests_and_verified() -> None:
    tokens = TokenSet(["s3cret", "other"])
    assert tokens.verify("s3cret")
    assert tokens.verify("other")
    assert not tokens.verify("s3cre")
    assert not tokens.verify(None)
    assert not tokens.verify("")
    assert b"s3cret" not in repr(vars(tokens)).encode()
    assert TokenSet(digests=[hash_token("x")]).verify("x")


def test_empty_token_set_accepts_nothing() -> None:
    assert not TokenSet()
    assert not TokenSet([""]).verify("")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_bearer_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("", False),
        ("example.com", False),
        # One rule for every component: RFC 6761 names, mapped addresses, nothing that
        # only /etc/hosts could make loopback.
        ("LOCALHOST.", True),
        ("gpu.localhost", True),
        ("::ffff:127.0.0.1", True),
        ("localhost.localdomain", False),
        ("ip6-localhost", False),
        ("127.0.0.1.example.com", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
