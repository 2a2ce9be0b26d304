from __future__ import annotations

import socket

import pytest

from sage.unified.agent.errors import PortUnavailableError
from sage.unified.agent.ports import PortAllocator, port_is_free


def test_lowest_free_port_skips_reserved_and_busy() -> None:
    busy = {8900}
    alloc = PortAllocator(8900, 8903, is_free=lambda p: p not in busy)
    assert alloc.reserve() == 8901
    assert alloc.reserve() == 8902
    assert alloc.reserved == frozenset({8901, 8902})
    alloc.release(8901)
    assert alloc.reserve() == 8901


def test_exhausted_range_names_the_range() -> None:
    alloc = PortAllocator(8900, 8901, is_free=lambda p: True)
    alloc.reserve()
    alloc.reserve()
    with pytest.raises(PortUnavailableError, match="8900-8901") as info:
        alloc.reserve()
    assert info.value.status == 409


def test_explicit_port_rules() -> None:
    alloc = PortAllocator(8900, 8999, is_free=lambda p: p != 8950)
    assert alloc.reserve(8910) == 8910
    with pytest.raises(PortUnavailableError, match=r"port 8910 .*already used"):
        alloc.reserve(8910)
    with pytest.raises(PortUnavailableError, match=r"port 9100 is outside .*8900-8999"):
        alloc.reserve(9100)
    with pytest.raises(PortUnavailableError, match=r"port 8950 is in use"):
        alloc.reserve(8950)
    assert alloc.reserved == frozenset({8910})


def test_release_is_idempotent_and_mark_reserved_skips_check() -> None:
    alloc = PortAllocator(8900, 8902, is_free=lambda p: False)
    alloc.release(8900)
    alloc.mark_reserved(8901)
    assert alloc.reserved == frozenset({8901})
    alloc.release(8901)
    alloc.release(8901)
    assert alloc.reserved == frozenset()


def test_bad_range() -> None:
    with pytest.raises(ValueError, match="port range"):
        PortAllocator(9000, 8000)


def test_port_is_free_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_is_free(port)
    assert port_is_free(port)
