"""etcd URLs: several endpoints, TLS scheme, credentials, and clear errors."""

from __future__ import annotations

import pytest

from sage.unified.coordinator._etcd import EtcdConfigError, EtcdEndpoint, parse_etcd_url


def test_several_endpoints_with_default_port() -> None:
    target = parse_etcd_url("etcd://h1:2379,h2,10.0.0.3:32379")
    assert target.endpoints == (
        EtcdEndpoint("h1", 2379),
        EtcdEndpoint("h2", 2379),
        EtcdEndpoint("10.0.0.3", 32379),
    )
    assert not target.tls
    assert target.username is None


@pytest.mark.parametrize(("scheme", "tls"), [("etcds", True), ("https", True), ("http", False)])
def test_schemes(scheme: str, tls: bool) -> None:
    target = parse_etcd_url(f"{scheme}://h1/")
    assert target.tls is tls
    assert target.endpoints[0].base_url(target.tls) == f"{'https' if tls else 'http'}://h1:2379"


def test_ipv6_and_credentials() -> None:
    target = parse_etcd_url("ETCDS://sage:p%40ss:w@[::1]:2379,[fd00::2]")
    assert target.endpoints == (EtcdEndpoint("::1", 2379), EtcdEndpoint("fd00::2", 2379))
    assert target.endpoints[1].netloc == "[fd00::2]:2379"
    assert (target.username, target.password) == ("sage", "p@ss:w")
    assert "p@ss" not in repr(target)
    assert str(target) == "etcds://sage@[::1]:2379,[fd00::2]:2379"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("h1:2379", "must start with etcd://"),
        ("redis://h1", "must start with etcd://"),
        ("etcd://", "empty endpoint"),
        ("etcd://h1,,h2", "empty endpoint"),
        ("etcd://h1:0", "bad port"),
        ("etcd://h1:99999", "bad port"),
        ("etcd://h1:abc", "bad port"),
        ("etcd://:2379", "no host"),
        ("etcd://h1/v3", "no path"),
        ("etcd://h1?x=1", "no path"),
        ("etcd://::1", "needs brackets"),
        ("etcd://[::1", "bad IPv6"),
        ("etcd://[nope]:1", "bad IPv6"),
        ("etcd://h1,h1:2379", "twice"),
        ("etcd://user@h1", "user:password"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(EtcdConfigError, match=message):
        parse_etcd_url(url)


def test_errors_never_show_the_password() -> None:
    with pytest.raises(EtcdConfigError) as bad:
        parse_etcd_url("etcd://root:hunter2@h1:bad")
    assert "hunter2" not in str(bad.value)
    with pytest.raises(EtcdConfigError) as bad_scheme:
        parse_etcd_url("etc://root:hunter2@h1")
    assert "hunter2" not in str(bad_scheme.value)
