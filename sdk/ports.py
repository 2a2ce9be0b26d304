"""Whether a TCP port can be listened on, and which process holds it when it cannot.

One rule for the gateway, the coordinator and the agent (``sage gateway start|run``,
``sage coordinator run``, ``sage agent run``): probe with a bind, as the servers
themselves bind (``SO_REUSEADDR``, so sockets left in ``TIME_WAIT`` by a process that
just stopped do not count), and when it fails name the holder from psutil's connection
table: ``pid 4242 (python3 -m http.server 8000)``, or "another process" when it belongs
to a user whose sockets this one may not see.

Blocking: psutil reads ``/proc`` (tens of milliseconds on a busy host). Call
:func:`check_port_free` before an event loop starts, or from a worker thread.
"""

from __future__ import annotations

import errno
import socket

import psutil

__all__ = [
    "PortInUseError",
    "can_listen",
    "check_port_free",
    "describe_holders",
    "find_port_in_use",
    "listening_pids",
    "port_error",
]

_COMMAND_CHARS = 80


class PortInUseError(OSError):
    """``host:port`` cannot be listened on; ``str(error)`` is one line saying who holds
    it (when it is held) and what to do."""


def listening_pids(port: int) -> set[int | None]:
    """The pids of the processes with a TCP socket listening on ``port`` (any address).

    ``None`` stands for a process whose pid this user may not see. Empty when none
    listens or when the table cannot be read.
    """
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return set()
    return {
        conn.pid
        for conn in connections
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
    }


def _command(pid: int) -> str:
    try:
        process = psutil.Process(pid)
        words = process.cmdline() or [process.name()]
    except (psutil.Error, OSError):
        return ""
    text = " ".join(words)
    return text if len(text) <= _COMMAND_CHARS else text[: _COMMAND_CHARS - 1] + "…"


def describe_holders(port: int) -> str:
    """Who listens on ``port``: ``"pid 4242 (python3 -m http.server 8000)"``, several
    joined with ``", "``, or ``"another process"`` when none can be seen."""
    pids = listening_pids(port)
    visible = sorted(pid for pid in pids if pid is not None)
    if not visible:
        return "another process"
    named = []
    for pid in visible:
        command = _command(pid)
        named.append(f"pid {pid} ({command})" if command else f"pid {pid}")
    if None in pids:
        named.append("a process of another user")
    return ", ".join(named)


def check_port_free(host: str, port: int, *, hint: str) -> None:
    """Refuse early, in one line, when ``host:port`` cannot be listened on.

    Args:
        host: the address the server will bind (``[::1]`` and ``::1`` both work).
        port: the TCP port.
        hint: what the operator can do instead, e.g. ``"choose another port with
            --port"``; it ends the message.

    Raises:
        PortInUseError: the port is taken (the message names the holder) or the address
            cannot be bound here (not this host's, or a privileged port).
    """
    failure = _bind_failure(host, port)
    if failure is not None:
        raise port_error(host, port, failure, hint=hint)


def can_listen(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (no psutil: cheap)."""
    return _bind_failure(host, port) is None


def _bind_failure(host: str, port: int) -> OSError | None:
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            return exc
    return None


def port_error(host: str, port: int, failure: OSError, *, hint: str) -> PortInUseError:
    """The :class:`PortInUseError` for a bind of ``host:port`` that failed with
    ``failure`` (names the holder; blocking, see the module docstring)."""
    if failure.errno == errno.EADDRINUSE:
        return PortInUseError(
            f"port {port} on {host} is already in use by {describe_holders(port)}; "
            f"stop it or {hint}",
        )
    reason = failure.strerror or str(failure)
    return PortInUseError(f"cannot listen on {host}:{port} ({reason}); {hint}")


def find_port_in_use(error: BaseException) -> PortInUseError | None:
    """The :class:`PortInUseError` in ``error``, however deeply task groups nested it."""
    if isinstance(error, PortInUseError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            if (found := find_port_in_use(inner)) is not None:
                return found
    return None
