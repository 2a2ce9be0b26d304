"""``make demo`` keeps its port when the only sockets left on it are in TIME_WAIT."""

from __future__ import annotations

import socket
import time

import psutil

from sage.unified.cli.demo import pick_port


def _time_wait_on(port: int) -> None:
    with socket.create_server(("127.0.0.1", port)) as server:
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the side that closes first keeps the TIME_WAIT
        client.recv(1)
        client.close()
    deadline = time.monotonic() + 10
    while not any(
        c.status == psutil.CONN_TIME_WAIT and c.laddr and c.laddr.port == port
        for c in psutil.net_connections(kind="tcp")
    ):
        assert time.monotonic() < deadline, "no TIME_WAIT socket appeared"
        time.sleep(0.05)


def test_a_port_with_only_time_wait_sockets_is_kept() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _time_wait_on(port)
    assert pick_port(port) == port


def test_a_port_someone_listens_on_is_skipped() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert pick_port(port) != port
