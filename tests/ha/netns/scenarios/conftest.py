"""A highly available deployment on emulated hosts, shared by the scenarios of this folder.

Hosts (one network namespace each, see ``../conftest.py``)::

    etcd0 etcd1 etcd2   a three-member etcd cluster (client port 2379)
    gw1 gw2             gateways: `sage gateway run --store etcd://...` (embedded coordinators)
    cp                  a standalone coordinator on the same store (`sage coordinator run`)
    host1 host2         agents (`sage agent run`), reporting to cp, gw1, gw2; host1 runs two
                        simulated engines of model ``m``, host2 one

The test process sends the load (the SDK's client with both gateway URLs) and reads the
management API through the bridge. Leases are short so scenarios stay quick: agents'
lease TTL 4 s (heartbeat 1 s), the leader's 3 s, etcd's election timeout 500 ms.
``SAGE_HA_FULL=1`` runs the outage (60 s), partition (30 s) and latency (30 s) scenarios
at full length; without it the outage and partition last 10 s and the latency scenario
watches for three lease TTLs (12 s).

Each scenario begins with :meth:`HaCluster.converge` (every process running, the network
healed, both gateways holding the same table of the three engines) and leaves what it
broke to the next one's; the network fixture removes every namespace, link and process at
the end, also after a failure. Figures go to :func:`record` and are printed at the end of
the session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sage.unified.sdk.client import UnifiedInferenceClient

API_KEY = "ha-key"
ADMIN = "ha-admin"
AGENT_TOKEN = "ha-agent"
LEASE_TTL_S = 4.0
HEARTBEAT_S = 1.0
LEADER_TTL_S = 3
MODEL = "m"
FULL = os.environ.get("SAGE_HA_FULL") == "1"
OUTAGE_S = 60.0 if FULL else 10.0
PARTITION_S = 30.0 if FULL else 10.0
FLAP_WATCH_S = 30.0 if FULL else 3 * LEASE_TTL_S
"""How long the latency scenario watches the tables: a flapping lease would show within
one TTL, three give it room to show more than once."""
ENGINES = {"host1": 2, "host2": 1}

_FIGURES: list[dict[str, Any]] = []

COMMON_ENV = {
    "SAGE_API_KEYS": API_KEY,
    "SAGE_ADMIN_TOKEN": ADMIN,
    "SAGE_AGENT_TOKEN": AGENT_TOKEN,
    "SAGE_COORDINATOR_LEASE_TTL_S": str(LEASE_TTL_S),
    "SAGE_COORDINATOR_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
    "SAGE_COORDINATOR_LEADER_LEASE_TTL_S": str(LEADER_TTL_S),
    "SAGE_COORDINATOR_ETCD_TIMEOUT_S": "2",
    "SAGE_COORDINATOR_AGENT_TIMEOUT_S": "3",
    "PYTHONUNBUFFERED": "1",
}


def record(scenario: str, **figures: Any) -> None:
    """Keep one scenario's figures for the summary (and print them now)."""
    _FIGURES.append({"scenario": scenario, **figures})
    print(f"\n[ha] {scenario}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("HA scenarios (emulated hosts)")
    for entry in _FIGURES:
        rest = ", ".join(f"{k}={v}" for k, v in entry.items() if k != "scenario")
        terminalreporter.write_line(f"{entry['scenario']}: {rest}")


def wait_for(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> float:
    """Poll ``check`` until true; returns the seconds it took. Raises with ``what``."""
    started = time.monotonic()
    last: BaseException | None = None
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(poll)
    raise TimeoutError(f"{what} not within {timeout} s" + (f" (last: {last!r})" if last else ""))


@dataclass
class Service:
    """One of our processes on one host, which a scenario may kill and start again."""

    name: str
    host: Any
    port: int
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host.address}:{self.port}"

    def start(self) -> None:
        self.proc = self.host.spawn(self.argv, env=self.env, name=self.name)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, signum: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signum)

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass
class Outcome:
    at: float
    error: str | None


class Load:
    """Chat requests through the SDK client given both gateway URLs, from a few threads."""

    def __init__(
        self, urls: list[str], workers: int = 3, pause_s: float = 0.03, model: str = MODEL
    ) -> None:
        self._urls = urls
        self._model = model
        self._workers = workers
        self._pause_s = pause_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []

    def __enter__(self) -> Load:
        for _ in range(self._workers):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        with UnifiedInferenceClient(
            self._urls, api_key=API_KEY, timeout=20.0, stall_timeout_s=5.0, watch=False
        ) as client:
            while not self._stop.is_set():
                error = None
                try:
                    client.chat([{"role": "user", "content": "hello"}], model=self._model)
                except Exception as exc:  # every failure is a client error to count
                    error = f"{type(exc).__name__}: {exc}"[:300]
                with self._lock:
                    self.outcomes.append(Outcome(time.monotonic(), error))
                self._stop.wait(self._pause_s)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    def errors(self, since: float = 0.0) -> list[str]:
        with self._lock:
            return [o.error for o in self.outcomes if o.error is not None and o.at >= since]

    def wait_for_requests(self, count: int, timeout: float = 30.0) -> None:
        start = self.sent
        wait_for(lambda: self.sent >= start + count, timeout, f"{count} requests sent")


@dataclass
class HaCluster:
    network: Any
    etcd: Any
    work: Path
    members: list[Any] = field(default_factory=list)
    gateways: dict[str, Service] = field(default_factory=dict)
    coordinator: Service | None = None
    agents: dict[str, Service] = field(default_factory=dict)
    engine_ids: set[str] = field(default_factory=set)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=5.0, trust_env=False))

    # ------------------------------------------------------------------ for tests
    # (test modules cannot import this file: pytest runs in importlib mode)

    lease_ttl_s = LEASE_TTL_S
    leader_ttl_s = LEADER_TTL_S
    outage_s = OUTAGE_S
    partition_s = PARTITION_S
    flap_watch_s = FLAP_WATCH_S
    model = MODEL
    admin_token = ADMIN

    def load(self, workers: int = 3, model: str = MODEL) -> Load:
        """The SDK's client, given both gateway URLs, sending chat requests for ``model``
        in threads."""
        return Load(self.gateway_urls, workers, model=model)

    @staticmethod
    def record(scenario: str, **figures: Any) -> None:
        record(scenario, **figures)

    @staticmethod
    def wait_for(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> float:
        return wait_for(check, timeout, what, poll)

    # ------------------------------------------------------------------ building

    @property
    def store(self) -> str:
        return "etcd://" + ",".join(m.endpoint for m in self.members)

    @property
    def gateway_urls(self) -> list[str]:
        return [g.url for g in self.gateways.values()]

    @property
    def coordinators(self) -> list[Service]:
        assert self.coordinator is not None
        return [*self.gateways.values(), self.coordinator]

    def build(self) -> None:
        hosts = {
            name: self.network.add_host(name)
            for name in ("etcd0", "etcd1", "etcd2", "gw1", "gw2", "cp", *ENGINES)
        }
        self.members = self.etcd.start(
            3,
            hosts=[hosts[f"etcd{i}"].address for i in range(3)],
            spawn=[partial(_spawn_on, hosts[f"etcd{i}"]) for i in range(3)],
            extra_args=["--heartbeat-interval=50", "--election-timeout=500"],
        )
        python = [sys.executable, "-m", "sage.unified.cli"]
        for name in ("gw1", "gw2"):
            host = hosts[name]
            self.gateways[name] = Service(
                name, host, 8000,
                [*python, "gateway", "run", "--host", host.address, "--port", "8000",
                 "--no-local-agent", "--store", self.store],
                {**COMMON_ENV, "SAGE_HOME": str(self.work / name)},
            )  # fmt: skip
        host = hosts["cp"]
        self.coordinator = Service(
            "cp", host, 8100,
            [*python, "coordinator", "run", "--host", host.address, "--port", "8100",
             "--store", self.store],
            {**COMMON_ENV, "SAGE_HOME": str(self.work / "cp")},
        )  # fmt: skip
        report_to = ",".join([self.coordinator.url, *self.gateway_urls])
        for name in ENGINES:
            host = hosts[name]
            self.agents[name] = Service(
                name, host, 8200,
                [*python, "agent", "run", "--coordinator", report_to, "--port", "8200"],
                {**COMMON_ENV, "SAGE_HOME": str(self.work / name), "SAGE_AGENT_AGENT_ID": name,
                 "SAGE_AGENT_TOKEN": AGENT_TOKEN, "SAGE_AGENT_BIND_HOST": host.address,
                 "SAGE_AGENT_ADVERTISE_HOST": host.address,
                 "SAGE_AGENT_ENGINE_BIND_HOST": host.address},
            )  # fmt: skip
        for service in self.coordinators:
            service.start()
        for service in self.coordinators:
            self.wait_ready(service)
        for agent in self.agents.values():
            agent.start()
        wait_for(lambda: len(self.agents_seen()) == len(ENGINES), 60, "agents registered")
        self.start_engines()

    def start_engines(self) -> None:
        spec = {
            "model": MODEL,
            "runtime": "simulated",
            "simulator": {"ttft_ms": 2, "itl_ms": 1, "output_tokens": 4},
        }
        for agent, count in ENGINES.items():
            for _ in range(count):
                info = self.admin_post(
                    self.gateway_urls[0],
                    "/v1/management/engines/start",
                    {"spec": spec, "host": agent},
                )
                self.engine_ids.add(info["id"])
        self.wait_tables(self.engine_ids, 60)

    # ------------------------------------------------------------------ reading

    def admin_get(self, url: str, path: str) -> Any:
        answer = self.http.get(url + path, headers={"authorization": f"Bearer {ADMIN}"})
        answer.raise_for_status()
        return answer.json()

    def admin_post(self, url: str, path: str, body: dict[str, Any]) -> Any:
        answer = self.http.post(
            url + path, json=body, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30
        )
        answer.raise_for_status()
        return answer.json()

    def table(self, url: str) -> set[str]:
        return {b["id"] for b in self.admin_get(url, "/v1/management/backends")["backends"]}

    def engines(self, url: str | None = None) -> dict[str, dict[str, Any]]:
        listed = self.admin_get(url or self.gateway_urls[0], "/v1/management/engines")
        return {e["id"]: e for e in listed["engines"]}

    def agents_seen(self, url: str | None = None) -> dict[str, dict[str, Any]]:
        listed = self.admin_get(url or self.gateway_urls[0], "/v1/management/agents")
        return {a["agent_id"]: a for a in listed["agents"]}

    def agent_engines(self, agent: Service) -> list[dict[str, Any]]:
        """What the agent itself runs (not the control plane's view)."""
        answer = self.http.get(
            agent.url + "/v1/engines", headers={"authorization": f"Bearer {AGENT_TOKEN}"}
        )
        answer.raise_for_status()
        engines: list[dict[str, Any]] = answer.json()["engines"]
        return engines

    def views_agree(self) -> bool:
        """Every gateway shows each agent's engines as the agent runs them (same process,
        incarnation, restarts and state)."""

        def view(engines: Any) -> set[tuple[Any, ...]]:
            keys = ("id", "pid", "incarnation", "restarts", "state")
            return {tuple(e[k] for k in keys) for e in engines if e["model"] == MODEL}

        for name, agent in self.agents.items():
            own = view(self.agent_engines(agent))
            for url in self.gateway_urls:
                shown = [e for e in self.engines(url).values() if e["agent_id"] == name]
                if view(shown) != own:
                    return False
        return True

    def metric(self, service: Service, name: str, **labels: str) -> float:
        """The sum of the samples ``name`` (``..._total`` for a counter) in ``service``'s
        ``/metrics`` whose labels include ``labels``; 0 when there is none."""
        text = self.http.get(service.url + "/metrics", timeout=2).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def readyz(self, service: Service) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get(service.url + "/readyz", timeout=2).json()
        return body

    def leads(self, service: Service) -> bool:
        """Whether ``service`` says it leads (one that does not answer does not)."""
        try:
            text = self.http.get(service.url + "/metrics", timeout=1).text
        except httpx.HTTPError:
            return False
        return "sage_coordinator_leader 1.0" in text

    def leader(self, timeout: float = 20.0, among: list[Service] | None = None) -> Service:
        """The one coordinator of ``among`` (all by default) that leads."""
        found: list[Service] = []
        candidates = among if among is not None else self.coordinators

        def one_leads() -> bool:
            found[:] = [s for s in candidates if s.running() and self.leads(s)]
            return len(found) == 1

        wait_for(one_leads, timeout, "one leader")
        return found[0]

    def wait_ready(self, service: Service, timeout: float = 60.0) -> float:
        def ready() -> bool:
            answer = self.http.get(service.url + "/readyz", timeout=2)
            return answer.status_code == 200

        return wait_for(ready, timeout, f"{service.name} ready", poll=0.1)

    def wait_tables(self, expected: set[str], timeout: float) -> float:
        """Both gateways route exactly ``expected``; returns the seconds it took."""
        return wait_for(
            lambda: all(self.table(url) == expected for url in self.gateway_urls),
            timeout,
            f"both gateways routing {sorted(expected)}",
        )

    # ------------------------------------------------------------------ repair

    def converge(self, timeout: float = 60.0) -> None:
        """Undo what an earlier scenario broke and wait for the steady state."""
        self.network.heal()
        for member in self.members:
            if not member.is_running():
                member.start()
        for service in self.coordinators:
            if not service.running():
                service.start()
        for service in self.coordinators:
            self.wait_ready(service, timeout)
        wait_for(
            lambda: all(self.readyz(g)["control_plane_reachable"] for g in self.gateways.values()),
            timeout,
            "gateways reaching etcd",
        )
        self.wait_tables(self.engine_ids, timeout)
        wait_for(
            lambda: not any(a["lost"] for a in self.agents_seen().values()), timeout, "agents live"
        )
        wait_for(self.views_agree, timeout, "gateways showing the agents' engines as they run")


def _spawn_on(host: Any, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    spawned: subprocess.Popen[bytes] = host.spawn(argv, name="etcd", log_path=log_path)
    return spawned


@pytest.fixture(scope="module")
def cluster(
    module_network: Any, module_etcd_cluster: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HaCluster]:
    module_network.require_namespaces("emulate hosts for the HA scenarios")
    ha = HaCluster(module_network, module_etcd_cluster, tmp_path_factory.mktemp("ha"))
    try:
        ha.build()
        yield ha
    finally:
        ha.http.close()


@pytest.fixture
def ha(cluster: HaCluster) -> HaCluster:
    """The deployment, converged to its steady state."""
    cluster.converge()
    return cluster
