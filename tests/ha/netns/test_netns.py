"""The emulated-hosts harness itself: processes on two hosts talk over the bridge,
faults cut and slow them, and nothing is left behind."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time

import pytest

# TCP (one connection at a time) and UDP echo on one port.
ECHO_SERVER = """
import socket, sys, threading
address = (sys.argv[1], int(sys.argv[2]))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(address)
def echo_udp():
    while True:
        data, peer = udp.recvfrom(2048)
        udp.sendto(data, peer)
threading.Thread(target=echo_udp, daemon=True).start()
server = socket.create_server(address)
while True:
    conn, _ = server.accept()
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
"""
# Run on a host: TCP round trips to the echo server, or UDP datagrams counted back.
ECHO_CLIENT = """
import json, socket, sys, time
address, mode, count = (sys.argv[1], int(sys.argv[2])), sys.argv[3], int(sys.argv[4])
try:
    if mode == "tcp":
        rtts = []
        with socket.create_connection(address, timeout=float(sys.argv[5])) as conn:
            for i in range(count):
                started = time.monotonic()
                conn.sendall(b"ping %d" % i)
                assert conn.recv(100) == b"ping %d" % i
                rtts.append(time.monotonic() - started)
        print(json.dumps({"rtts": rtts}))
    else:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.connect(address)
        for i in range(count):
            udp.send(b"%d" % i)
            time.sleep(0.001)  # no burst: a full socket queue would drop them too
        udp.settimeout(0.5)
        echoed = set()
        try:
            while True:
                echoed.add(udp.recv(100))
        except TimeoutError:
            pass
        print(json.dumps({"echoed": len(echoed)}))
except OSError as exc:
    print(json.dumps({"error": type(exc).__name__}))
"""
PORT = 7000


def _probe(host, target, *, mode: str = "tcp", count: int = 1, timeout: float = 2.0) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """Run the echo client on ``host`` against ``target``; returns what it printed."""
    argv = [sys.executable, "-c", ECHO_CLIENT, target.address, str(PORT), mode, str(count)]
    done = host.run([*argv, str(timeout)], timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _wait_reachable(host, target, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while "rtts" not in (result := _probe(host, target, timeout=1.0)):
        assert time.monotonic() < deadline, f"{target.name} unreachable from {host.name}: {result}"
        time.sleep(0.05)


@pytest.fixture
def two_hosts(network):  # type: ignore[no-untyped-def]
    """h1 and h2; h2 runs a TCP and UDP echo server; returns (network, h1, h2)."""
    h1, h2 = network.add_host("h1"), network.add_host("h2")
    h2.spawn([sys.executable, "-c", ECHO_SERVER, h2.address, str(PORT)], name="echo")
    _wait_reachable(h1, h2)
    return network, h1, h2


def test_processes_on_two_hosts_talk_over_the_bridge(two_hosts) -> None:  # type: ignore[no-untyped-def]
    network, h1, h2 = two_hosts
    assert network.namespaced, network.reason  # this machine: root, namespaces allowed
    assert (h1.address, h2.address) == (f"{network.subnet}.1", f"{network.subnet}.2")
    assert len(_probe(h1, h2, count=5)["rtts"]) == 5
    assert h2.run(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout.split()[3] == (
        f"{h2.address}/24"
    )
    with socket.create_connection((h2.address, PORT), timeout=5) as conn:  # the test's port
        conn.sendall(b"hi")
        assert conn.recv(10) == b"hi"


def test_test_addresses_never_leave_the_machine(two_hosts) -> None:  # type: ignore[no-untyped-def]
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    assert "unreachable 10.77.0.0/16" in routes
    with pytest.raises(OSError, match="No route to host"):
        socket.create_connection(("10.77.255.1", PORT), timeout=1)  # no network uses it


def test_isolation_and_partition_stop_traffic_until_healed(two_hosts) -> None:  # type: ignore[no-untyped-def]
    network, h1, h2 = two_hosts
    h2.isolate()
    assert _probe(h1, h2, timeout=0.5) == {"error": "TimeoutError"}  # dropped, not refused
    h2.rejoin()
    _wait_reachable(h1, h2)

    network.partition([h1], [h2])
    assert _probe(h1, h2, timeout=0.5) == {"error": "TimeoutError"}
    network.heal()
    _wait_reachable(h1, h2)


def test_degrade_adds_measurable_latency_and_restore_removes_it(two_hosts) -> None:  # type: ignore[no-untyped-def]
    _, h1, h2 = two_hosts
    baseline = min(_probe(h1, h2, count=5)["rtts"])
    h2.degrade(delay_s=0.1)  # what h2 sends (its echoes) leaves 100 ms late
    slowed = min(_probe(h1, h2, count=5)["rtts"])
    h2.restore()
    restored = min(_probe(h1, h2, count=5)["rtts"])
    assert baseline < 0.05
    assert 0.09 < slowed < 1.0
    assert restored < 0.05


def test_loss_drops_a_share_of_packets(two_hosts) -> None:  # type: ignore[no-untyped-def]
    _, h1, h2 = two_hosts
    assert _probe(h1, h2, mode="udp", count=200)["echoed"] == 200
    h1.degrade(loss=0.5)  # h1's datagrams; h2's echoes come back intact
    echoed = _probe(h1, h2, mode="udp", count=200)["echoed"]
    assert 30 < echoed < 170


def _stand_in_tc(directory, monkeypatch, script: str):  # type: ignore[no-untyped-def]
    """A `tc` first on PATH (also inside `ip netns exec`) that logs its namespace and
    arguments to ``directory/tc.calls`` and then runs ``script``; returns the log's path."""
    calls = directory / "tc.calls"
    tc = directory / "bin" / "tc"
    tc.parent.mkdir()
    tc.write_text(f'#!/bin/sh\necho "$(ip netns identify): $*" >> {calls}\n{script}\n')
    tc.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tc.parent}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_a_kernel_without_netem_is_told_apart(netns_tools, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = _stand_in_tc(
        tmp_path, monkeypatch, 'echo "Error: Specified qdisc kind is unknown." >&2; exit 2'
    )
    assert not netns_tools.probe_support().netem
    # Tried in a throw-away namespace, never on the machine's own loopback.
    assert calls.read_text() == f"sgt-{os.getpid()}-probe: qdisc add dev lo root netem delay 1ms\n"


def test_degrade_uses_tc_netem_where_the_kernel_has_it(netns_tools, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The development VM's kernel has no sch_netem: a stand-in `tc` that takes netem shows
    # the harness then asks tc for it (on the host's own link) and splices in no wire.py.
    calls = _stand_in_tc(tmp_path, monkeypatch, "exit 0")
    assert netns_tools.probe_support().netem
    netns_tools.support = dataclasses.replace(netns_tools.support, netem=True)
    network = netns_tools.new_network()
    host = network.add_host("h1")
    host.degrade(delay_s=0.1, loss=0.02)
    switch_links = netns_tools.ip("-n", network.switch, "-o", "link", "show").stdout
    host.restore()
    namespace = f"{network.switch.removesuffix('switch')}h1"
    assert calls.read_text().splitlines()[1:] == [
        f"{namespace}: qdisc add dev eth0 root netem delay 100.000ms loss 2.000%",
        f"{namespace}: qdisc del dev eth0 root",
    ]
    assert " w0@" not in switch_links  # no user-space cable
    assert not list(network.log_dir.glob("wire-*.log"))


def test_everything_is_removed_even_when_left_dirty(netns_tools) -> None:  # type: ignore[no-untyped-def]
    network = netns_tools.new_network()
    hosts = [network.add_host(name) for name in ("a", "b", "c")]
    sleeper = hosts[0].spawn([sys.executable, "-c", "import time; time.sleep(600)"])
    orphan = hosts[1].run(["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"]).stdout.strip()
    hosts[2].degrade(delay_s=0.01)
    network.partition(hosts[:1], hosts[1:])
    hosts[1].isolate()
    assert len(netns_tools.our_namespaces()) == 4
    assert len(netns_tools.our_root_links()) == 1

    network.close()
    assert netns_tools.our_namespaces() == []
    assert netns_tools.our_root_links() == []
    assert sleeper.poll() is not None
    assert not _alive(int(orphan))  # started behind the harness's back, found in the namespace


def test_stale_namespaces_of_dead_runs_are_swept(netns_tools) -> None:  # type: ignore[no-untyped-def]
    netns_tools.ip("netns", "add", "sgt-999999999-0-switch")  # above pid_max: run is gone
    assert "sgt-999999999-0-switch" in netns_tools.sweep()
    assert "sgt-999999999" not in netns_tools.ip("netns", "list").stdout


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
