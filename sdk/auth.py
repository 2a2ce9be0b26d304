"""Bearer tokens: parsing, hashed storage and constant-time checks.

Every component keeps only SHA-256 digests of the tokens it accepts and compares
digests with :func:`hmac.compare_digest`, so a token never sits in memory or logs
in clear after start-up and a timing side channel cannot reveal it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable

__all__ = ["TokenSet", "bearer_token", "hash_token", "is_loopback_host"]


def hash_token(token: str) -> bytes:
    """SHA-256 digest of a token (what is stored and compared)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The token in an ``Authorization: Bearer <token>`` header value, or ``None``."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


class TokenSet:
    """A set of accepted tokens, held as digests.

    An empty set accepts nothing; callers decide separately whether a component
    runs without authentication (allowed only on loopback).
    """

    def __init__(self, tokens: Iterable[str] = (), digests: Iterable[bytes] = ()) -> None:
        self._digests: tuple[bytes, ...] = tuple({*(hash_token(t) for t in tokens if t), *digests})

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def verify(self, presented: str | None) -> bool:
        """Whether ``presented`` is one of the tokens, checked in constant time per digest."""
        if not presented:
            return False
        digest = hash_token(presented)
        matched = False
        for known in self._digests:
            # No early exit: the time taken does not depend on which digest matched.
            matched |= hmac.compare_digest(digest, known)
        return matched


def is_loopback_host(host: str) -> bool:
    """Whether binding (or calling) ``host`` stays on this machine: the one rule of every
    component.

    Loopback addresses (``127.0.0.0/8``, ``::1``, IPv4-mapped ``::ffff:127.x``, with or
    without IPv6 brackets) and the names RFC 6761 reserves for loopback: ``localhost`` and
    ``*.localhost``. Other names (``localhost.localdomain``, ``ip6-localhost``) are not:
    only ``/etc/hosts`` says where they point, and it may say anything.
    """
    name = host.strip().lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
