"""etcd cluster URLs (pure): ``etcd://h1:2379,h2:2379,h3:2379`` and ``etcds://`` for TLS.

Grammar (one URL names the whole cluster)::

    etcd-url  = scheme "://" [ user [ ":" password ] "@" ] endpoint *( "," endpoint ) [ "/" ]
    scheme    = "etcd" | "etcds"            (also "http" | "https", as etcdctl spells them)
    endpoint  = host [ ":" port ]           (port defaults to 2379; IPv6 as "[::1]:2379")

User and password are percent-decoded. They are accepted in the URL for convenience; a
password from a settings field or a file keeps it out of shell history and process lists.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import unquote

from sage.unified.coordinator._etcd._errors import EtcdConfigError

__all__ = ["DEFAULT_PORT", "EtcdEndpoint", "EtcdTarget", "parse_etcd_url"]

DEFAULT_PORT = 2379
_PLAIN_SCHEMES = frozenset({"etcd", "http"})
_TLS_SCHEMES = frozenset({"etcds", "https"})


@dataclass(frozen=True, slots=True)
class EtcdEndpoint:
    """One etcd member's client address."""

    host: str
    """A host name or an IP address (IPv6 without brackets)."""
    port: int = DEFAULT_PORT

    @property
    def netloc(self) -> str:
        """``host:port``, with brackets around an IPv6 address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def base_url(self, tls: bool) -> str:
        """The HTTP base URL of this member's v3 JSON gateway."""
        return f"{'https' if tls else 'http'}://{self.netloc}"


@dataclass(frozen=True, slots=True)
class EtcdTarget:
    """A parsed etcd URL: the members to try, in order, and how to talk to them."""

    endpoints: tuple[EtcdEndpoint, ...]
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        """The URL without the password (safe to log)."""
        user = f"{self.username}@" if self.username else ""
        hosts = ",".join(endpoint.netloc for endpoint in self.endpoints)
        return f"{'etcds' if self.tls else 'etcd'}://{user}{hosts}"


def parse_etcd_url(url: str) -> EtcdTarget:
    """Parse an etcd cluster URL into its endpoints, TLS flag and credentials.

    Args:
        url: For example ``etcd://10.0.0.1:2379,10.0.0.2:2379`` or
            ``etcds://user:secret@etcd-a,etcd-b:2380``.

    Raises:
        EtcdConfigError: The URL has another scheme, no endpoint, a bad port, a path or a
            query, or a user without a password (the message never contains the password).
    """
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _PLAIN_SCHEMES | _TLS_SCHEMES:
        raise EtcdConfigError(
            f"etcd URL must start with etcd:// or etcds:// (got {_redact(url)!r}); "
            "example: etcd://10.0.0.1:2379,10.0.0.2:2379"
        )
    userinfo, at, hosts = rest.rpartition("@")
    if not at:
        userinfo, hosts = "", rest
    hosts = hosts.removesuffix("/")
    if any(char in hosts for char in "/?#"):
        raise EtcdConfigError(f"etcd URL takes no path or query: {_redact(url)!r}")
    username, password = _parse_userinfo(userinfo) if at else (None, None)
    endpoints = tuple(_parse_endpoint(item, url) for item in hosts.split(","))
    if len(set(endpoints)) != len(endpoints):
        raise EtcdConfigError(f"etcd URL names an endpoint twice: {_redact(url)!r}")
    return EtcdTarget(endpoints, scheme in _TLS_SCHEMES, username, password)


def _parse_userinfo(userinfo: str) -> tuple[str, str]:
    user, colon, password = userinfo.partition(":")
    if not user or not colon:
        raise EtcdConfigError("etcd URL credentials must be user:password@ (both present)")
    return unquote(user), unquote(password)


def _parse_endpoint(item: str, url: str) -> EtcdEndpoint:
    item = item.strip()
    if not item:
        raise EtcdConfigError(f"etcd URL has an empty endpoint: {_redact(url)!r}")
    if item.startswith("["):
        host, bracket, port_text = item[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise EtcdConfigError(f"bad IPv6 endpoint {item!r} in etcd URL")
        port_text = port_text[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise EtcdConfigError(f"bad IPv6 address {host!r} in etcd URL") from None
    else:
        host, _, port_text = item.partition(":")
        if ":" in port_text:
            raise EtcdConfigError(f"IPv6 endpoint {item!r} needs brackets: [{item}]:2379")
    if not host:
        raise EtcdConfigError(f"endpoint {item!r} in etcd URL has no host")
    if not port_text:
        return EtcdEndpoint(host)
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise EtcdConfigError(f"endpoint {item!r} in etcd URL has a bad port")
    return EtcdEndpoint(host, int(port_text))


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not at:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{hosts}"
