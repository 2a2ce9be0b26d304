"""Health probes of the engines registered directly (no agent reports on them).

Every ``probe_interval_s`` (or at once when an engine is registered) each registered
engine's ``/health`` is read, its URL host re-checked against the address policy (which
narrows a DNS-rebinding window to one probe), and the result fed to its
:class:`~._probing.ProbeTracker`; a state change is published. One engine whose probe
fails in an unexpected way is marked ``ERROR`` with the reason; the loop goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import httpx

from sage.unified.coordinator._addresses import AddressPolicy
from sage.unified.coordinator._errors import UrlPolicyError
from sage.unified.coordinator._probing import ProbeTracker
from sage.unified.coordinator._registry import Registry
from sage.unified.coordinator._reports import Publish
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.sdk.client import AsyncEngineClient
from sage.unified.sdk.models import EngineInfo
from sage.unified.sdk.states import EngineState

__all__ = ["RegisteredEngineProber", "StateSink"]

log = logging.getLogger("sage.unified.coordinator")


StateSink = Callable[[str, EngineState, str], Awaitable[None]]
"""Records a registered engine's new state somewhere else than in the registry (etcd)."""


class RegisteredEngineProber:
    """Probes registered engines until cancelled.

    Args:
        registry: where registered engines and their states live.
        settings: interval, timeout and the tracker's thresholds.
        addresses: the policy each engine's host must keep passing.
        http: the connection pool probes use.
        publish: called with the revision after a state change.
        notify: wakes the watchers when ``publish`` failed to persist the revision.
        sink: where state changes go instead of the registry (a store the registry
            follows); ``None``: the registry, then ``publish``.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        settings: CoordinatorSettings,
        addresses: AddressPolicy,
        http: httpx.AsyncClient,
        publish: Publish,
        notify: Callable[[], None],
        sink: StateSink | None = None,
    ) -> None:
        self._registry = registry
        self._sink = sink
        self._settings = settings
        self._addresses = addresses
        self._http = http
        self._publish = publish
        self._notify = notify
        self._trackers: dict[str, ProbeTracker] = {}
        self._kick = anyio.Event()

    def track(self, engine_id: str, state: EngineState = EngineState.STARTING) -> None:
        """Start probing ``engine_id`` from ``state`` and probe soon."""
        self._trackers[engine_id] = ProbeTracker(
            failures_to_error=self._settings.probe_failures,
            successes_to_start=self._settings.probe_successes_to_start,
            successes_to_recover=self._settings.probe_successes_to_recover,
            state=state,
            recovering=state is EngineState.ERROR,
        )
        self._kick.set()

    def forget(self, engine_id: str) -> None:
        self._trackers.pop(engine_id, None)

    async def run(self) -> None:
        """Probe every interval (or when :meth:`track` asks), until cancelled."""
        while True:
            self._kick = anyio.Event()
            engines = self._registry.registered_engines()
            for engine in engines:
                if engine.id not in self._trackers:
                    # Registered elsewhere (another gateway, or before this one led).
                    self.track(engine.id, engine.state)
            if engines:
                async with anyio.create_task_group() as task_group:
                    for engine in engines:
                        task_group.start_soon(self._probe_one, engine)
            with anyio.move_on_after(self._settings.probe_interval_s):
                await self._kick.wait()

    async def _probe_one(self, engine: EngineInfo) -> None:
        if self._sink is not None:
            await self._probe_to_sink(engine, self._sink)
            return
        try:
            ok, detail = await self._probe(engine)
            changed = self._record(engine, ok, detail)
        except Exception as exc:  # one bad record must not stop the loop
            log.exception("probe of registered engine %s failed", engine.id)
            changed = self._set_state(
                engine.id, EngineState.ERROR, f"probe failed: {type(exc).__name__}: {exc}"
            )
        if not changed:
            return
        try:
            await self._publish(self._registry.revision)
        except Exception:
            log.exception("could not persist the revision after a probe of %s", engine.id)
            self._notify()

    async def _probe_to_sink(self, engine: EngineInfo, sink: StateSink) -> None:
        try:
            ok, detail = await self._probe(engine)
            tracker = self._trackers.get(engine.id)
            if tracker is None:
                return
            moved = tracker.record(ok, detail)
            # Compared with the registry, not only on a move: a write that failed is
            # made again on the next probe.
            if tracker.state is not engine.state:
                reason = moved.reason if moved is not None else f"health probe: {detail or 'ok'}"
                await sink(engine.id, tracker.state, reason[:500])
        except Exception:  # one bad record must not stop the loop
            log.exception("probe of registered engine %s failed", engine.id)

    async def _probe(self, engine: EngineInfo) -> tuple[bool, str]:
        try:
            await self._addresses.check(engine.host, engine.port)
        except UrlPolicyError as exc:
            return False, exc.message
        client = AsyncEngineClient(
            engine.url, http=self._http, timeout=self._settings.probe_timeout_s
        )
        return await client.health()

    def _record(self, engine: EngineInfo, ok: bool, detail: str) -> bool:
        tracker = self._trackers.get(engine.id)
        if tracker is None or not self._registry.has_engine(engine.id):
            return False  # removed while the probe ran
        moved = tracker.record(ok, detail)
        return moved is not None and self._set_state(engine.id, moved.state, moved.reason)

    def _set_state(self, engine_id: str, state: EngineState, reason: str) -> bool:
        """Record a state; whether the revision went up."""
        if not self._registry.has_engine(engine_id):
            return False
        if not self._registry.set_state(engine_id, state, reason[:500]):
            return False
        log.info("registered engine %s -> %s (%s)", engine_id, state.value, reason)
        return True
