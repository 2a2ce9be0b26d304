"""sdk.ports: a taken port is refused in one line that names its holder."""

from __future__ import annotations

import os
import socket

import pytest

from sage.unified.sdk.ports import PortInUseError, can_listen, check_port_free, describe_holders


def test_a_listener_is_named_with_its_pid_and_command() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert not can_listen("127.0.0.1", port)
        assert describe_holders(port).startswith(f"pid {os.getpid()} (")
        with pytest.raises(PortInUseError) as info:
            check_port_free("127.0.0.1", port, hint="choose another port with --port")
    message = str(info.value)
    assert message.startswith(f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}")
    assert message.endswith("; stop it or choose another port with --port")
    assert "\n" not in message


def test_a_free_port_passes() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_port_free("127.0.0.1", port, hint="")
    assert can_listen("127.0.0.1", port)
    assert describe_holders(port) == "another process"


def test_an_address_that_is_not_this_hosts_is_not_called_in_use() -> None:
    with pytest.raises(PortInUseError, match=r"cannot listen on 192\.0\.2\.1:80 \("):
        check_port_free("192.0.2.1", 80, hint="bind another address")
