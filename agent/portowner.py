"""Which process holds an engine's port (psutil; blocking, call it off the event loop).

An engine answering ``/health`` on its port is not proof that *this* engine answers:
while a slow engine is still loading, another process may have taken the port, and its
answers would make the engine READY and bring it traffic. The supervisor asks here once
before it declares an engine READY.
"""

from __future__ import annotations

import psutil

__all__ = ["PortHolder", "port_holder"]


class PortHolder:
    """The answer for one port.

    Attributes:
        ours: a process of the engine's tree listens on the port.
        others: pids of other processes listening on it (``None``: a process this
            user may not inspect).
    """

    __slots__ = ("others", "ours")

    def __init__(self, ours: bool, others: list[int | None]) -> None:
        self.ours = ours
        self.others = others

    @property
    def taken_by_another(self) -> bool:
        """Someone else listens on the port and no process of the engine does."""
        return not self.ours and bool(self.others)

    def describe(self) -> str:
        who = ", ".join(
            "a process of another user" if p is None else f"pid {p}" for p in self.others
        )
        return f"held by {who or 'nobody'}"


def port_holder(root_pid: int, port: int) -> PortHolder | None:
    """Who listens on TCP ``port``, seen from the engine process ``root_pid``'s tree.

    Returns ``None`` when it cannot be told: the process is gone, or the host does not
    let this user list sockets. Callers then go on without the check.
    """
    try:
        root = psutil.Process(root_pid)
        tree = {root.pid, *(child.pid for child in root.children(recursive=True))}
        listeners = [
            conn.pid
            for conn in psutil.net_connections(kind="tcp")
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
        ]
    except (psutil.Error, OSError):
        return None
    ours = any(pid in tree for pid in listeners if pid is not None)
    others = sorted({pid for pid in listeners if pid not in tree}, key=lambda p: p or 0)
    return PortHolder(ours, others)
