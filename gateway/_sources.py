"""Where the gateway's routing table comes from.

- :class:`EmbeddedSource`: the coordinator runs in this process; subscribe in-process.
- :class:`RemoteSource`: a standalone coordinator; long-poll
  ``GET /v1/management/backends?after=<rev>&wait=<s>``. If it is unreachable the gateway
  keeps serving from the last table (passive ejection still protects it) and says so in
  ``/readyz`` and ``sage_gateway_control_plane_reachable``.
- :class:`StaticSource`: ``--backend URL`` with no control plane; model names are learnt
  from each backend's ``/v1/models`` every few seconds.

Each source runs one background loop with a timeout per call, a jittered backoff after
failures and cancellation as its way to stop.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import httpx
import msgspec

from sage.unified.gateway.routing import RoutingState
from sage.unified.sdk.models import Backend, EngineKind, RoutingTable, decode

if TYPE_CHECKING:
    from sage.unified.coordinator import Coordinator

__all__ = ["EmbeddedSource", "RemoteSource", "StaticSource", "TableSource"]

log = logging.getLogger("sage.unified.gateway")

REBUILD_WAIT_S = 5.0
"""How long a gateway keeps its table over a smaller one from a coordinator that lost its
database (more than one heartbeat, so every live agent has re-reported)."""


class TableSource(Protocol):
    status: dict[str, Any]
    """``reachable`` (bool), ``last_update`` (epoch s or None), ``error`` (str or None)."""

    def unavailable_models(self) -> frozenset[str]: ...

    def settling(self) -> bool:
        """The control plane just restarted and the table may lack serving engines."""
        ...

    async def run(self, state: RoutingState) -> None:
        """Keep ``state`` up to date until cancelled."""
        ...


class _Base:
    def __init__(self) -> None:
        self.status: dict[str, Any] = {
            "reachable": False,
            "last_update": None,
            "error": None,
            "mode": "",
        }
        self._unavailable: frozenset[str] = frozenset()

    def unavailable_models(self) -> frozenset[str]:
        return self._unavailable

    def settling(self) -> bool:
        return False

    def _apply(self, state: RoutingState, table: RoutingTable) -> None:
        state.update(table)
        self._unavailable = frozenset(table.unavailable_models)
        self.status.update(reachable=True, last_update=time.time(), error=None)


class EmbeddedSource(_Base):
    """Subscribes to the in-process coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        super().__init__()
        self.status["mode"] = "embedded"
        self._coordinator = coordinator

    def settling(self) -> bool:
        return self._coordinator.settling

    async def run(self, state: RoutingState) -> None:
        self._apply(state, self._coordinator.routing_table())
        async for table in self._coordinator.watch(after=state.revision):
            self._apply(state, table)


class RemoteSource(_Base):
    """Long-polls a standalone coordinator."""

    def __init__(self, url: str, *, token: str | None, wait_s: float = 30.0) -> None:
        super().__init__()
        self.status["mode"] = "remote"
        self.status["coordinator_url"] = url
        self._url = url.rstrip("/") + "/v1/management/backends"
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._wait_s = wait_s
        self._settling = False

    def settling(self) -> bool:
        return self._settling

    async def run(self, state: RoutingState) -> None:
        backoff = 0.5
        revision = -1
        rebuilding_until = 0.0
        timeout = httpx.Timeout(connect=2.0, read=self._wait_s + 5.0, write=5.0, pool=5.0)
        async with httpx.AsyncClient(
            timeout=timeout, trust_env=False, headers=self._headers
        ) as client:
            while True:
                try:
                    response = await client.get(
                        self._url, params={"after": revision, "wait": self._wait_s}
                    )
                    response.raise_for_status()
                    table = decode(response.content, RoutingTable)
                except (httpx.HTTPError, msgspec.ValidationError, msgspec.DecodeError) as exc:
                    if self.status["reachable"] or self.status["error"] is None:
                        log.warning("coordinator unreachable, serving from the last table: %s", exc)
                    self.status.update(reachable=False, error=f"{type(exc).__name__}: {exc}")
                    await anyio.sleep(backoff * random.uniform(0.5, 1.5))
                    backoff = min(backoff * 2, 10.0)
                    continue
                backoff = 0.5
                self._settling = False
                if table.revision < revision:
                    # Revisions are persisted, so going back means the coordinator lost its
                    # database: its table fills as agents re-report over the next heartbeat.
                    log.info("coordinator revision went back (%d -> %d)", revision, table.revision)
                    rebuilding_until = time.monotonic() + REBUILD_WAIT_S
                revision = table.revision
                if time.monotonic() < rebuilding_until and len(table.backends) < len(state):
                    # Meanwhile keep routing on the fuller table we have.
                    self._settling = True
                    continue
                self._apply(state, table)


class StaticSource(_Base):
    """Serves a fixed list of backends; learns their models from ``/v1/models``."""

    def __init__(self, urls: list[str], *, refresh_s: float = 5.0) -> None:
        super().__init__()
        self.status["mode"] = "static"
        self._urls = [u.rstrip("/").removesuffix("/v1") for u in urls]
        self._refresh_s = refresh_s
        self._known: dict[str, list[str]] = {}

    async def run(self, state: RoutingState) -> None:
        revision = 0
        async with httpx.AsyncClient(timeout=httpx.Timeout(3.0), trust_env=False) as client:
            while True:
                changed = False
                for url in self._urls:
                    models = await self._models(client, url)
                    if models is not None and models != self._known.get(url):
                        self._known[url] = models
                        changed = True
                if changed or revision == 0:
                    revision += 1
                    self._apply(state, self.table(revision))
                self.status["reachable"] = bool(self._known)
                await anyio.sleep(self._refresh_s)

    def table(self, revision: int) -> RoutingTable:
        backends = [
            Backend(id=f"static-{index}-{kind.value}", model=model, kind=kind, url=url)
            for index, url in enumerate(self._urls)
            for model in self._known.get(url, [])
            # /v1/models does not say what a model serves, so a static backend is
            # offered for both; the engine answers a wrong-kind request with a 4xx.
            for kind in EngineKind
        ]
        return RoutingTable(revision=revision, backends=backends, generated_at=time.time())

    async def _models(self, client: httpx.AsyncClient, url: str) -> list[str] | None:
        try:
            response = await client.get(f"{url}/v1/models")
            response.raise_for_status()
            data = response.json().get("data", [])
            return sorted(
                str(item["id"]) for item in data if isinstance(item, dict) and "id" in item
            )
        except (httpx.HTTPError, ValueError, KeyError, AttributeError) as exc:
            log.debug("static backend %s: %s", url, exc)
            return None
