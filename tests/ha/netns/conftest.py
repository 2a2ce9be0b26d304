"""Emulated hosts: one Linux network namespace per host, all on one private bridge.

Layout of one test's network (``network`` fixture)::

    root namespace (this pytest)   sgt<pid>d<n>: 10.77.<n>.254/24, the test's own port
        │  veth
    sgt-<pid>-<n>-switch           bridge br0 (ports: up0 for the test, p<i> per host)
        │  veth pairs
    sgt-<pid>-<n>-<host>           eth0: 10.77.<n>.<i+1>/24, lo; processes of that host

The test process reaches the hosts directly through its own port on the bridge (its
threads and child processes all stay in the root namespace). Each network takes a /24
of 10.77.0.0/16 that no route of the root namespace uses yet, so concurrent runs do not
clash. While the session runs, the rest of 10.77.0.0/16 is ``unreachable`` in the root
namespace: a stray connection to a test address fails at once instead of leaving the
machine through the default route.

Faults: :meth:`Host.isolate` sets the host's bridge port down (the host is cut off from
everyone, the test included); :meth:`Network.partition` makes groups of hosts unable to
reach each other by pointing each host's neighbour entries for the other groups at an
unused MAC address (frames vanish silently, as in a real partition; a blackhole route
would fail fast with EINVAL instead); :meth:`Host.degrade` delays and drops what a host
sends, with ``tc netem`` where the kernel has it, else with ``wire.py`` (a user-space
cable) spliced in between the host and the bridge.

Everything is undone at teardown, even when the test fails: processes are killed (also
any other process found in the namespaces), then the namespaces deleted, which deletes
their links, the bridge and the test's port. Every name starts with ``sgt-<pid>-`` (root
links ``sgt<pid>``); at session start, namespaces of runs whose process is gone are swept.

Without root or namespace support the ``network`` fixture falls back to loopback
aliases (127.0.0.x, one per host, processes run directly) and says why in
``network.reason``; faults then skip the test with that reason.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PREFIX = "sgt-"
TEST_NET = "10.77.0.0/16"
"""Each network takes one /24 of it."""
_RUN = f"{PREFIX}{os.getpid()}-"
_ROOT_LINK = f"sgt{os.getpid()}d"
_UNUSED_MAC = "02:00:00:00:00:01"  # locally administered, never given to an interface
_WIRE = Path(__file__).with_name("wire.py")
_networks = itertools.count()


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; raise with its stderr when it fails and ``check`` is set."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


_OFFLOADS_OFF = """
import ctypes, fcntl, socket, struct, sys
for interface in sys.argv[1:]:
    for command in (0x17, 0x1F, 0x24, 0x2C):  # ETHTOOL_S{TXCSUM,TSO,GSO,GRO}
        value = ctypes.create_string_buffer(struct.pack("II", command, 0))
        request = struct.pack("16sP", interface.encode(), ctypes.addressof(value))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock, 0x8946, request.ljust(40, b"\\0"))  # SIOCETHTOOL
"""


def disable_offloads(namespace: str | None, *interfaces: str) -> None:
    """Checksum and segmentation offloads off (ethtool's ioctl, no ethtool needed):
    ``wire.py`` copies frames, which must be complete and fit the MTU."""
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run(
        [*prefix, sys.executable, "-c", _OFFLOADS_OFF, *interfaces],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _kill_namespace_processes(namespace: str) -> None:
    for pid in ip("netns", "pids", namespace, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            continue


def sweep_stale_namespaces() -> list[str]:
    """Delete namespaces of earlier runs whose pytest process is gone; returns their names."""
    swept = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        owner = name[len(PREFIX) :].split("-", 1)[0]
        if not name.startswith(PREFIX) or not owner.isdigit():
            continue
        if int(owner) != os.getpid() and not Path(f"/proc/{owner}").exists():
            _kill_namespace_processes(name)
            ip("netns", "delete", name, check=False)
            swept.append(name)
    return swept


def our_namespaces() -> list[str]:
    """Namespaces this pytest process made and has not deleted."""
    listed = ip("netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(_RUN)]


def our_root_links() -> list[str]:
    """Links of the root namespace this pytest process made and has not deleted."""
    listed = ip("-o", "link", "show", check=False).stdout.splitlines()
    names = [line.split(":")[1].strip().split("@")[0] for line in listed if ":" in line]
    return [name for name in names if name.startswith(_ROOT_LINK)]


@dataclass(frozen=True)
class NetnsSupport:
    available: bool
    reason: str
    """Why hosts fall back to loopback (empty when namespaces work)."""
    netem: bool
    """Whether the kernel has ``sch_netem`` (else ``wire.py`` emulates it)."""


def probe_support() -> NetnsSupport:
    if not sys.platform.startswith("linux"):
        return NetnsSupport(False, "network namespaces need Linux", False)
    if shutil.which("ip") is None:
        return NetnsSupport(False, "no `ip` command (install iproute2: make test does)", False)
    if os.geteuid() != 0:
        return NetnsSupport(False, "network namespaces need root (CAP_NET_ADMIN)", False)
    probe = f"{_RUN}probe"
    try:
        ip("netns", "add", probe)
        ip("-n", probe, "link", "add", "name", "probe0", "type", "veth", "peer", "name", "probe1")
        return NetnsSupport(True, "", _has_netem(probe))
    except RuntimeError as exc:
        return NetnsSupport(False, f"the kernel refused a network namespace: {exc}", False)
    finally:
        ip("netns", "delete", probe, check=False)


def _has_netem(namespace: str) -> bool:
    """Whether ``tc`` can put a ``netem`` qdisc on a link: tried on the loopback of the
    throw-away ``namespace`` (nothing else has a qdisc there to clash with, and nothing
    outside it is touched). A kernel without ``sch_netem`` answers "Specified qdisc kind
    is unknown"."""
    if shutil.which("tc") is None:
        return False
    tried = subprocess.run(
        ["ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", "lo", "root",
         "netem", "delay", "1ms"],
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return tried.returncode == 0


@pytest.fixture(scope="session")
def netns_support() -> Iterator[NetnsSupport]:
    """Whether namespaces work here; sweeps stale namespaces first and guards
    10.77.0.0/16 in the root namespace for the session (see the module docstring)."""
    support = probe_support()
    if not support.available:
        yield support
        return
    sweep_stale_namespaces()
    guard = ["unreachable", TEST_NET, "metric", "4242"]
    added = ip("route", "add", *guard, check=False).returncode == 0  # else another run's
    try:
        yield support
    finally:
        if added:
            ip("route", "del", *guard, check=False)


@dataclass
class Host:
    """One emulated machine: a namespace with one address (or a loopback alias)."""

    network: Network
    name: str
    index: int
    address: str
    namespace: str | None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    _wire: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _netem: bool = field(default=False, repr=False)

    @property
    def port(self) -> str:
        """This host's port on the bridge (in the switch namespace)."""
        return f"p{self.index}"

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on this host."""
        prefix = ["ip", "netns", "exec", self.namespace] if self.namespace else []
        return [*prefix, *argv]

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        name: str = "proc",
        log_path: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on this host (the test's environment plus ``env``), output to
        ``log_path`` (default a file named after host and ``name``); killed at teardown."""
        log_path = (
            log_path or self.network.log_dir / f"{self.name}-{name}-{len(self.processes)}.log"
        )
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                self.command(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.processes.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on this host to completion; returns its output."""
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout)

    def isolate(self) -> None:
        """Cut this host off (its bridge port down); :meth:`rejoin` undoes it."""
        self.network.require_namespaces("isolate a host")
        ip("-n", self.network.switch, "link", "set", self.port, "down")

    def rejoin(self) -> None:
        ip("-n", self.network.switch, "link", "set", self.port, "up")

    def degrade(self, *, delay_s: float = 0.0, loss: float = 0.0) -> None:
        """Delay (seconds) and drop (share 0..1) what this host sends; :meth:`restore`."""
        self.network.require_namespaces("add latency or loss")
        assert self.namespace is not None
        self.restore()
        if self.network.support.netem:
            subprocess.run(
                self.command(
                    ["tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay",
                     f"{delay_s * 1000:.3f}ms", "loss", f"{loss * 100:.3f}%"]
                ),
                check=True,
                capture_output=True,
            )  # fmt: skip
            self._netem = True
            return
        self._splice_wire(delay_s, loss)

    def restore(self) -> None:
        """Undo :meth:`degrade`."""
        if self._netem and self.namespace is not None:
            subprocess.run(self.command(["tc", "qdisc", "del", "dev", "eth0", "root"]), check=False)
            self._netem = False
        if self._wire is not None:
            switch = self.network.switch
            self._wire.kill()
            self._wire.wait(timeout=10)
            if self._wire.stdout is not None:
                self._wire.stdout.close()
            self._wire = None
            ip("-n", switch, "link", "delete", f"w{self.index}", check=False)
            ip("-n", switch, "link", "set", self.port, "master", "br0")

    def _splice_wire(self, delay_s: float, loss: float) -> None:
        # p<i> leaves the bridge; wire.py copies frames between it and w<i>, whose peer
        # x<i> takes its place on the bridge.
        switch = self.network.switch
        ip("-n", switch, "link", "set", self.port, "nomaster")
        ip(
            "-n",
            switch,
            "link",
            "add",
            f"w{self.index}",
            "type",
            "veth",
            "peer",
            "name",
            f"x{self.index}",
        )
        disable_offloads(switch, f"w{self.index}", f"x{self.index}")
        for link in (f"w{self.index}", f"x{self.index}"):
            ip("-n", switch, "link", "set", link, "up")
        ip("-n", switch, "link", "set", f"x{self.index}", "master", "br0")
        argv = [sys.executable, str(_WIRE), self.port, f"w{self.index}",
                "--delay-ms", str(delay_s * 1000), "--loss", str(loss), "--seed", "7"]  # fmt: skip
        log = open(self.network.log_dir / f"wire-{self.name}.log", "wb")  # noqa: SIM115
        self._wire = subprocess.Popen(
            ["ip", "netns", "exec", switch, *argv],
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        assert self._wire.stdout is not None
        if self._wire.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"wire.py did not start for {self.name}")

    def kill_processes(self) -> None:
        self.restore()
        for proc in self.processes:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(timeout=10)
        if self.namespace is not None:
            _kill_namespace_processes(self.namespace)


class Network:
    """The hosts of one test and the bridge between them; see the module docstring."""

    def __init__(self, support: NetnsSupport, log_dir: Path) -> None:
        self.support = support
        self.namespaced = support.available
        self.reason = support.reason
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.hosts: list[Host] = []
        number = next(_networks)
        self._names = f"{_RUN}{number}-"
        self.switch = f"{self._names}switch"
        self.subnet = ""
        """``10.77.<n>``: the first three octets of this network's /24."""
        self.root_link = f"{_ROOT_LINK}{number}"
        if self.namespaced:
            self._create_switch(self.root_link)

    def _create_switch(self, root_link: str) -> None:
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        self.subnet = _free_subnet()
        ip("link", "add", root_link, "type", "veth", "peer", "name", "up0", "netns", self.switch)
        ip("-n", self.switch, "link", "set", "up0", "master", "br0", "up")
        ip("addr", "add", f"{self.subnet}.254/24", "dev", root_link)
        ip("link", "set", root_link, "up")
        if not self.support.netem:
            disable_offloads(None, root_link)

    @property
    def test_address(self) -> str:
        """The address the test process has on this network."""
        return f"{self.subnet}.254" if self.namespaced else "127.0.0.1"

    def add_host(self, name: str) -> Host:
        """A new host on the bridge with the next address (10.77.<n>.1, .2, ...)."""
        index = len(self.hosts)
        if not self.namespaced:
            host = Host(self, name, index, f"127.0.0.{10 + index}", None)
            self.hosts.append(host)
            return host
        namespace = f"{self._names}{name}"
        ip("netns", "add", namespace)
        host = Host(self, name, index, f"{self.subnet}.{index + 1}", namespace)
        self.hosts.append(host)  # from here on, close() removes it
        ip("-n", self.switch, "link", "add", host.port, "type", "veth",
           "peer", "name", "eth0", "netns", namespace)  # fmt: skip
        ip("-n", self.switch, "link", "set", host.port, "master", "br0", "up")
        ip("-n", namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        if not self.support.netem:
            disable_offloads(namespace, "eth0")
        return host

    def require_namespaces(self, what: str) -> None:
        if not self.namespaced:
            pytest.skip(f"cannot {what} with loopback aliases: {self.reason}")

    def partition(self, *groups: Sequence[Host]) -> None:
        """Hosts of different groups can no longer reach each other (silently);
        :meth:`heal` undoes it."""
        self.require_namespaces("partition hosts")
        for group, other in itertools.permutations(groups, 2):
            for host in group:
                for peer in other:
                    assert host.namespace is not None
                    ip("-n", host.namespace, "neigh", "replace", peer.address,
                       "lladdr", _UNUSED_MAC, "nud", "permanent", "dev", "eth0")  # fmt: skip

    def heal(self) -> None:
        """Undo every partition, isolation and degradation."""
        for host in self.hosts:
            if host.namespace is not None:
                ip("-n", host.namespace, "neigh", "flush", "nud", "permanent", check=False)
                host.restore()
                host.rejoin()

    def close(self) -> None:
        """Kill every process on the hosts, then delete every namespace (and so every
        link, the bridge and the test's port) this network made."""
        for host in self.hosts:
            host.kill_processes()
        if not self.namespaced:
            return
        for host in self.hosts:
            assert host.namespace is not None
            ip("netns", "delete", host.namespace, check=False)
        _kill_namespace_processes(self.switch)
        # Deleting a namespace frees its links asynchronously; delete ours in the root
        # namespace now, so that nothing of the network is left when close() returns.
        ip("link", "delete", self.root_link, check=False)
        ip("netns", "delete", self.switch, check=False)


def _free_subnet() -> str:
    """``10.77.<n>`` for the lowest n that no route of the root namespace uses."""
    used = ip("-4", "route", "show", "root", TEST_NET, check=False).stdout
    for n in range(1, 255):
        if f"10.77.{n}.0/24" not in used:
            return f"10.77.{n}"
    raise RuntimeError("every /24 of 10.77.0.0/16 is in use")


@pytest.fixture
def network(netns_support: NetnsSupport, tmp_path: Path) -> Iterator[Network]:
    """An empty network; add hosts with ``network.add_host(name)``. Removed at teardown."""
    net = Network(netns_support, tmp_path / "netns-logs")
    try:
        yield net
    finally:
        net.close()


@dataclass
class NetnsTools:
    """What tests of the harness itself need (they cannot import this file)."""

    support: NetnsSupport
    log_dir: Path
    networks: list[Network] = field(default_factory=list)

    def new_network(self) -> Network:
        network = Network(self.support, self.log_dir / str(len(self.networks)))
        self.networks.append(network)
        return network

    @staticmethod
    def our_namespaces() -> list[str]:
        return our_namespaces()

    @staticmethod
    def our_root_links() -> list[str]:
        return our_root_links()

    @staticmethod
    def sweep() -> list[str]:
        return sweep_stale_namespaces()

    @staticmethod
    def probe_support() -> NetnsSupport:
        return probe_support()

    @staticmethod
    def ip(*args: str) -> subprocess.CompletedProcess[str]:
        return ip(*args)


@pytest.fixture
def netns_tools(netns_support: NetnsSupport, tmp_path: Path) -> Iterator[NetnsTools]:
    tools = NetnsTools(netns_support, tmp_path / "netns-tools")
    try:
        yield tools
    finally:
        for network in tools.networks:
            network.close()


@pytest.fixture(scope="module")
def module_network(
    netns_support: NetnsSupport, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    """A network for all the tests of a module (removed at the module's end, also after a
    failure); tests that fault it must heal it."""
    net = Network(netns_support, tmp_path_factory.mktemp("netns-module") / "logs")
    try:
        yield net
    finally:
        net.close()
