"""Which hosts the coordinator lets the gateway send prompts to (resolution + policy).

The I/O half of :mod:`._netcheck`: a host is resolved, then every address it resolves to
is judged by the network allow-list, so a name is judged by its addresses, not by how it
is spelt.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Sequence

import anyio

from sage.unified.coordinator._errors import UrlPolicyError
from sage.unified.coordinator._netcheck import IPNetwork, canonical_host, check_addresses

__all__ = ["AddressPolicy", "Resolver"]

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> addresses``; raises :class:`OSError` when the name does not resolve."""


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class AddressPolicy:
    """Resolves a host and checks its addresses against the allowed networks.

    Args:
        networks: the allowed networks.
        resolver: name resolution (``anyio.getaddrinfo`` by default).
    """

    def __init__(self, networks: Sequence[IPNetwork], resolver: Resolver | None = None) -> None:
        self._networks = tuple(networks)
        self._resolver: Resolver = resolver or _getaddrinfo

    async def check(self, host: str, port: int) -> None:
        """Raises :class:`UrlPolicyError` when ``host`` is not a canonical address or host
        name, does not resolve, or resolves outside the allowed networks."""
        host = canonical_host(host)
        try:
            addresses = await self._resolver(host, port)
        except (OSError, UnicodeError) as exc:
            # UnicodeError: a name IDNA cannot encode (idna.IDNAError), not a server fault.
            raise UrlPolicyError(f"host {host!r} does not resolve: {exc}", param="url") from None
        check_addresses(host, addresses, self._networks)
