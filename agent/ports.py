"""Engine port allocation within the agent's range (default 8900-8999)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from sage.unified.agent.errors import PortUnavailableError

__all__ = ["PortAllocator", "port_is_free"]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP listener could bind ``port`` on ``host`` and on all addresses.

    Binds without ``SO_REUSEADDR`` (so a port in ``TIME_WAIT`` counts as busy: the
    allocator then prefers another one) and closes the socket at once. Checking the
    wildcard address too catches engines that listen on a non-loopback address.
    """
    for address in dict.fromkeys((host, "0.0.0.0")):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((address, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out engine ports from ``[low, high]`` and remembers which are taken.

    Not thread-safe; use it from the agent's event loop only.
    """

    def __init__(
        self, low: int, high: int, *, is_free: Callable[[int], bool] = port_is_free
    ) -> None:
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"port range {low}-{high} must satisfy 1 <= low <= high <= 65535")
        self.low = low
        self.high = high
        self._is_free = is_free
        self._reserved: set[int] = set()

    @property
    def reserved(self) -> frozenset[int]:
        """Ports currently held by engines of this agent."""
        return frozenset(self._reserved)

    def reserve(self, port: int | None = None) -> int:
        """Reserve ``port``, or the lowest free port of the range when ``None``.

        Raises:
            PortUnavailableError: the port lies outside the range, is already reserved
                or is in use by another program; or (``port=None``) no port is free.
        """
        span = f"{self.low}-{self.high}"
        if port is not None:
            if not self.low <= port <= self.high:
                raise PortUnavailableError(
                    f"port {port} is outside this agent's engine port range {span}; "
                    "pick a port in the range or omit it to get one assigned"
                )
            if port in self._reserved:
                raise PortUnavailableError(
                    f"port {port} is already used by another engine on this agent "
                    f"(range {span}); omit the port to get a free one"
                )
            if not self._is_free(port):
                raise PortUnavailableError(
                    f"port {port} is in use by another program on this host (range {span}); "
                    "omit the port to get a free one"
                )
            self._reserved.add(port)
            return port
        for candidate in range(self.low, self.high + 1):
            if candidate not in self._reserved and self._is_free(candidate):
                self._reserved.add(candidate)
                return candidate
        raise PortUnavailableError(
            f"no free port in the engine port range {span} ({len(self._reserved)} held by "
            "engines of this agent); stop an engine or widen SAGE_AGENT_ENGINE_PORT_RANGE"
        )

    def release(self, port: int) -> None:
        """Give a port back. Releasing a port that is not reserved does nothing."""
        self._reserved.discard(port)

    def mark_reserved(self, port: int) -> None:
        """Record a port as taken without checking it (engines adopted after a restart
        already listen on theirs). Ports outside the range are recorded too."""
        self._reserved.add(port)
