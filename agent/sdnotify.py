"""systemd notify protocol, spoken directly on the socket (no dependency).

The protocol is one datagram per message on the ``AF_UNIX`` socket named by
``NOTIFY_SOCKET``; a leading ``@`` means the Linux abstract namespace. systemd
documents it as stable and ships a self-contained example of the same shape
(research/reliability.md §4.1). Messages the agent sends: ``READY=1`` once its API
listens and local engines are re-adopted, ``WATCHDOG=1`` from the event loop every
:func:`watchdog_interval_s` / 2, ``STOPPING=1``, ``STATUS=...``.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "watchdog_interval_s"]


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to the service manager.

    Returns:
        ``True`` if it was sent; ``False`` when not run under systemd
        (``NOTIFY_SOCKET`` unset) or the socket cannot be reached. Never raises:
        a missing notification must not stop the agent.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    elif address[0] != "/":
        # vsock addresses (vsock:CID:PORT) are for VMs; the agent does not need them.
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_interval_s() -> float | None:
    """The service watchdog timeout in seconds (``WatchdogSec=``), or ``None``.

    ``None`` when ``WATCHDOG_USEC`` is unset or invalid, or when ``WATCHDOG_PID`` is
    set to another process (the watchdog is meant for that one). Ping with
    ``notify("WATCHDOG=1")`` every half of the returned interval.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None
