"""Which process holds an engine's port (psutil; blocking, call it off the event loop).

An engine answering ``/health`` on its port is not proof that *this* engine answers:
while a slow engine is still loading, another process may have taken the port, and its
answers would make the engine READY and bring it traffic. The supervisor asks here once
before it declares an engine READY.
"""

from __future__ import annotations

import psutil

from sage.unified.sdk.ports import listening_pids

__all__ = ["port_taken_by_another"]


def port_taken_by_another(root_pid: int, port: int) -> str | None:
    """Who holds TCP ``port`` when other processes listen on it and no process of the
    engine ``root_pid``'s tree does, e.g. ``"held by pid 4242"``; otherwise ``None``.

    ``None`` also when it cannot be told (the process is gone, or this user may not list
    sockets): callers then go on without the check.
    """
    try:
        root = psutil.Process(root_pid)
        tree = {root.pid, *(child.pid for child in root.children(recursive=True))}
    except (psutil.Error, OSError):
        return None
    listeners = listening_pids(port)
    if not listeners or listeners & tree:
        return None
    # A pid psutil cannot see (None) belongs to a process of another user.
    who = sorted("a process of another user" if pid is None else f"pid {pid}" for pid in listeners)
    return "held by " + ", ".join(who)
