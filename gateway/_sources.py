"""Where the gateway's routing table comes from.

- :class:`EmbeddedSource`: the coordinator runs in this process; follow its table feed.
- :class:`RemoteSource`: a standalone coordinator; the SDK client's ``watch_table()``
  (a long-poll of ``GET /v1/management/backends``). If it is unreachable the gateway
  keeps serving from the last table (passive ejection still protects it) and says so in
  ``/readyz`` and ``sage_gateway_control_plane_reachable``.
- :class:`StaticSource`: ``--backend URL`` with no control plane; model names are learnt
  from each backend's ``/v1/models`` every few seconds.

Each source runs one background loop with a timeout per call, a backoff after failures
and cancellation as its way to stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Protocol

import anyio
import httpx

from sage.unified.gateway.routing import RoutingState
from sage.unified.sdk.client import AsyncEngineClient, AsyncGatewayManagementClient, SageClientError
from sage.unified.sdk.models import Backend, EngineKind, RoutingTable

__all__ = [
    "EmbeddedSource",
    "RebuildGuard",
    "RemoteSource",
    "StaticSource",
    "TableFeed",
    "TableSource",
]

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


class TableFeed(Protocol):
    """An in-process source of routing tables (the embedded coordinator is one)."""

    @property
    def settling(self) -> bool:
        """Just restarted; the table may lack serving engines for a moment."""
        ...

    def routing_table(self) -> RoutingTable: ...

    def watch(self, after: int = -1) -> AsyncGenerator[RoutingTable, None]: ...


class EmbeddedSource(_Base):
    """Follows an in-process table feed (the embedded coordinator)."""

    def __init__(self, feed: TableFeed) -> None:
        super().__init__()
        self.status["mode"] = "embedded"
        self._feed = feed

    def settling(self) -> bool:
        return self._feed.settling

    async def run(self, state: RoutingState) -> None:
        self._apply(state, self._feed.routing_table())
        async with aclosing(self._feed.watch(after=state.revision)) as tables:
            async for table in tables:
                self._apply(state, table)


class RemoteSource(_Base):
    """Watches a standalone coordinator through the SDK's control-plane client.

    Args:
        client: the control-plane client (owned by the caller).
        wait_s: the long-poll wait.
    """

    def __init__(self, client: AsyncGatewayManagementClient, *, wait_s: float = 30.0) -> None:
        super().__init__()
        self.status["mode"] = "remote"
        self.status["coordinator_url"] = client.url
        self._client = client
        self._wait_s = wait_s
        self._settling = False
        self._rebuild = RebuildGuard()

    def settling(self) -> bool:
        return self._settling

    def _unreachable(self, error: SageClientError) -> None:
        if self.status["reachable"] or self.status["error"] is None:
            log.warning("coordinator unreachable, serving from the last table: %s", error)
        self.status.update(reachable=False, error=f"{type(error).__name__}: {error}")

    async def run(self, state: RoutingState) -> None:
        async with aclosing(
            self._client.watch_table(wait_s=self._wait_s, on_error=self._unreachable)
        ) as tables:
            async for table in tables:
                keep_ours = self._rebuild.keep_current(table, len(state), time.monotonic())
                # Meanwhile keep routing on the fuller table we have.
                self._settling = keep_ours
                if not keep_ours:
                    self._apply(state, table)


class RebuildGuard:
    """Keeps a fuller table while a coordinator that lost its database refills (pure).

    Revisions are persisted, so a revision that goes back means the coordinator lost
    its database: its table fills as agents re-report over the next heartbeat. For
    ``REBUILD_WAIT_S`` after that, a table with fewer backends than the current one is
    not applied.
    """

    def __init__(self) -> None:
        self._revision = -1
        self._until = 0.0

    def keep_current(self, table: RoutingTable, current_backends: int, now: float) -> bool:
        if table.revision < self._revision:
            log.info("coordinator revision went back (%d -> %d)", self._revision, table.revision)
            self._until = now + REBUILD_WAIT_S
        self._revision = table.revision
        return now < self._until and len(table.backends) < current_backends


class StaticSource(_Base):
    """Serves a fixed list of backends; learns their models from ``/v1/models``.

    Args:
        urls: the backends' base URLs.
        http: the connection pool the reads use (owned by the caller).
        refresh_s: how often the model lists are read again.
    """

    def __init__(self, urls: list[str], *, http: httpx.AsyncClient, refresh_s: float = 5.0) -> None:
        super().__init__()
        self.status["mode"] = "static"
        self._urls = [u.rstrip("/").removesuffix("/v1") for u in urls]
        self._engines = [AsyncEngineClient(url, http=http, timeout=3.0) for url in self._urls]
        self._refresh_s = refresh_s
        self._known: dict[str, list[str]] = {}

    def settling(self) -> bool:
        # A backend whose model list was never read may serve any model: until each has
        # answered once, an unknown model is "retry shortly" (503), not "not served" (404).
        return len(self._known) < len(self._urls)

    async def run(self, state: RoutingState) -> None:
        revision = 0
        while True:
            changed = False
            for url, engine in zip(self._urls, self._engines, strict=True):
                models = await self._models(url, engine)
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

    async def _models(self, url: str, engine: AsyncEngineClient) -> list[str] | None:
        try:
            return await engine.models()
        except SageClientError as exc:
            log.debug("static backend %s: %s", url, exc)
            return None
