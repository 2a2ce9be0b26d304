"""Following etcd: the state mirror's loops and the store's health.

:class:`StateMirror` reads every state key once (:meth:`StateMirror.load`), then watches
the prefix from the read's revision + 1, so no change is missed and none applied twice;
the watch itself resumes across member failures. When etcd has compacted the revisions
the watch needs, the state is read again. Each applied batch stamps the registry with
the etcd revision of its last change and wakes the table's watchers.

:class:`StoreHealth` says whether etcd answers: a probe (a linearizable read, once a
second) and every call update it. While etcd is unreachable nothing here changes the
registry: the gateway keeps routing with the table it has (static stability).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio

from sage.unified.coordinator._backend import StoreStatus
from sage.unified.coordinator._errors import ControlPlaneUnavailableError
from sage.unified.coordinator._etcd import (
    EtcdAuthError,
    EtcdClient,
    EtcdCompactedError,
    EtcdError,
    EtcdUnavailableError,
    RangeOp,
    Watch,
)
from sage.unified.coordinator._ha._records import KeySpace
from sage.unified.coordinator._ha._view import MirrorState

__all__ = ["StateMirror", "StoreHealth"]

log = logging.getLogger("sage.unified.coordinator")

_PROBE_INTERVAL_S = 1.0
_MAX_BACKOFF_S = 2.0


class StoreHealth:
    """Whether etcd answers, as last found by the probe and by calls.

    Args:
        target: the etcd URL without credentials, for messages.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.reachable = False
        self.error: str | None = "not connected yet"
        self.since: float | None = time.time()

    def ok(self) -> None:
        if not self.reachable:
            log.info("etcd at %s answers again", self.target)
        self.reachable = True
        self.error = None
        self.since = None

    def failed(self, error: BaseException | str) -> None:
        message = error.message if isinstance(error, EtcdError) else str(error)
        if self.reachable:
            log.warning(
                "etcd at %s unreachable (%s): serving the last routing table", self.target, message
            )
            self.since = time.time()
        self.reachable = False
        self.error = message

    def status(self) -> StoreStatus:
        return StoreStatus("etcd", self.reachable, self.error, self.since)

    def require(self) -> None:
        """Raise :class:`ControlPlaneUnavailableError` at once while etcd is unreachable."""
        if not self.reachable:
            raise self.unavailable(self.error or "unreachable")

    def unavailable(self, why: str) -> ControlPlaneUnavailableError:
        return ControlPlaneUnavailableError(
            f"the control plane's store (etcd at {self.target}) cannot be reached ({why}); "
            "gateways keep routing with the last known table; retry in a few seconds"
        )

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Turn etcd being unreachable (or refusing our credentials) into a 503
        :class:`ControlPlaneUnavailableError`, and note it."""
        try:
            yield
        except EtcdUnavailableError as exc:
            self.failed(exc)
            raise self.unavailable(exc.message) from None
        except EtcdAuthError as exc:
            raise self.unavailable(
                f"etcd refused this coordinator's credentials: {exc.message}"
            ) from None

    async def probe(self, etcd: EtcdClient, key: str, timeout_s: float) -> None:
        """A linearizable read every second, until cancelled."""
        while True:
            try:
                await etcd.range(RangeOp(key, count_only=True), timeout_s=timeout_s)
            except EtcdError as exc:
                self.failed(exc)
            else:
                self.ok()
            await anyio.sleep(_PROBE_INTERVAL_S)


class StateMirror:
    """Keeps a :class:`MirrorState` equal to etcd's state keys.

    Args:
        etcd: the client.
        keys: the deployment's key space.
        state: what is kept (and the registry it feeds).
        health: told when etcd fails or answers.
        on_change: called after each batch that changed the registry or another kind of
            state (deployments, cordons): wakes the watchers and the reconciler.
        timeout_s: deadline of the full read; the watch's idle timeout.
    """

    def __init__(
        self,
        etcd: EtcdClient,
        keys: KeySpace,
        state: MirrorState,
        health: StoreHealth,
        on_change: Callable[[], None],
        timeout_s: float,
    ) -> None:
        self._etcd = etcd
        self._keys = keys
        self.state = state
        self._health = health
        self._on_change = on_change
        self._timeout_s = timeout_s
        self.loaded = anyio.Event()
        self._applied = anyio.Event()

    async def load(self) -> None:
        """Read every state key and replace the mirror with them.

        Raises:
            EtcdError: etcd could not be read.
        """
        result = await self._etcd.get_prefix(self._keys.state, timeout_s=self._timeout_s)
        self.state.reset(result.kvs, result.header.revision)
        self._health.ok()
        self.loaded.set()
        self._batch_applied(changed=True)
        log.info(
            "etcd state read at revision %d: %d agents, %d registered engines, %d starts",
            result.header.revision,
            len(self.state.agents),
            len(self.state.registered),
            len(self.state.starts),
        )

    async def run(self) -> None:
        """Load (until it works), then follow the watch, until cancelled."""
        failures = 0
        while True:
            try:
                if not self.loaded.is_set() or failures:
                    await self.load()
                await self._follow()
            except EtcdCompactedError as exc:
                log.warning(
                    "etcd compacted the revisions the watch needed (%s); reading again", exc
                )
                failures = 1
            except EtcdError as exc:
                self._health.failed(exc)
                failures += 1
                await anyio.sleep(min(0.1 * 2**failures, _MAX_BACKOFF_S))
            else:
                failures = 0

    async def _follow(self) -> None:
        watch: Watch
        async with self._etcd.watch(
            self._keys.state,
            prefix=True,
            start_revision=self.state.revision + 1,
            idle_timeout_s=max(self._timeout_s, 2.0),
            unavailable_timeout_s=self._timeout_s,
        ) as watch:
            changed_at = 0
            while True:
                try:
                    event = await watch.__anext__()
                except EtcdUnavailableError as exc:
                    # The watch goes on from where it stopped once etcd answers again;
                    # meanwhile the mirror, and so the routing table, stays as it is.
                    self._health.failed(exc)
                    continue
                except StopAsyncIteration:
                    return
                if self.state.apply(event):
                    changed_at = event.kv.mod_revision
                if watch.buffered == 0:
                    # The revision of the batch's last change, not of its last event: a
                    # gateway that got the same changes in other batches stamps the same.
                    self._batch_applied(changed_at > 0, changed_at)
                    changed_at = 0

    def _batch_applied(self, changed: bool, revision: int | None = None) -> None:
        if changed and revision is not None:
            self.state.registry.stamp(revision)
        if changed or self.state.other_changed:
            self.state.other_changed = False
            self._on_change()
        applied, self._applied = self._applied, anyio.Event()
        applied.set()

    async def wait_for(self, revision: int, timeout_s: float) -> bool:
        """Wait until every change up to ``revision`` is applied; False at the timeout."""
        with anyio.move_on_after(timeout_s):
            while self.state.revision < revision:
                await self._applied.wait()
            return True
        return False

    async def changed(self, timeout_s: float) -> None:
        """Return after the next applied batch, or after ``timeout_s``."""
        with anyio.move_on_after(timeout_s):
            await self._applied.wait()
