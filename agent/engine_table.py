"""The agent's engines by id, with the port and GPUs each engine that is not STOPPED holds.

Owned by the :class:`~sage.unified.agent.service.Agent` and used from its event loop
only. A STOPPED engine gives its port and GPUs back at once but stays listed (its state
and log remain visible) until :meth:`EngineTable.forget_old_stopped` drops it.
"""

from __future__ import annotations

from sage.unified.agent.errors import EngineNotFoundError
from sage.unified.agent.gpus import GpuClaim
from sage.unified.agent.ports import PortAllocator
from sage.unified.agent.reconcile import STOPPED_KEEP_COUNT, STOPPED_KEEP_S
from sage.unified.agent.supervisor import EngineSupervisor
from sage.unified.sdk.models import EngineInfo

__all__ = ["EngineTable"]


class EngineTable:
    """Supervisors by engine id, their port reservations and GPU claims.

    Args:
        agent_id: named in the not-found error.
        port_range: the engine port range ``(low, high)``.
    """

    def __init__(self, agent_id: str, port_range: tuple[int, int]) -> None:
        self._agent_id = agent_id
        self._supervisors: dict[str, EngineSupervisor] = {}
        self._ports = PortAllocator(*port_range)
        self._claims: dict[str, GpuClaim] = {}
        self._forgotten_restarts = 0
        self._forgotten_probe_failures = 0

    def __contains__(self, engine_id: object) -> bool:
        return engine_id in self._supervisors

    def get(self, engine_id: str) -> EngineSupervisor:
        """Raises: EngineNotFoundError."""
        try:
            return self._supervisors[engine_id]
        except KeyError:
            raise EngineNotFoundError(
                f"no engine {engine_id!r} on agent {self._agent_id!r}"
            ) from None

    def find(self, engine_id: str) -> EngineSupervisor | None:
        """The engine ``engine_id``, or ``None``."""
        return self._supervisors.get(engine_id)

    def supervisors(self) -> list[EngineSupervisor]:
        """Every engine's supervisor (a copy: the table may change while it is used)."""
        return list(self._supervisors.values())

    def ids(self) -> list[str]:
        return list(self._supervisors)

    def infos(self) -> list[EngineInfo]:
        return [sup.info() for sup in self._supervisors.values()]

    def gpu_claims(self) -> list[GpuClaim]:
        """The GPUs held by engines that are not STOPPED."""
        return list(self._claims.values())

    @property
    def restarts_total(self) -> int:
        """Engine restarts, forgotten engines included (a monotonic counter)."""
        return self._forgotten_restarts + sum(s.restarts for s in self._supervisors.values())

    @property
    def probe_failures_total(self) -> int:
        """Failed engine probes, forgotten engines included (a monotonic counter)."""
        return self._forgotten_probe_failures + sum(
            s.probe_failures for s in self._supervisors.values()
        )

    def reserve_port(self, port: int | None) -> int:
        """Reserve ``port``, or a free one when ``None``.

        Raises:
            PortUnavailableError: see :meth:`PortAllocator.reserve`.
        """
        return self._ports.reserve(port)

    def release_port(self, port: int) -> None:
        """Give back a port reserved for an engine that was never added."""
        self._ports.release(port)

    def claim_gpus(self, engine_id: str, gpu_ids: tuple[int, ...], fraction: float | None) -> None:
        """Record that ``engine_id`` holds ``fraction`` of each of ``gpu_ids`` (``None``:
        the whole GPU)."""
        self._claims[engine_id] = GpuClaim(engine_id, gpu_ids, fraction)

    def reserve_adopted(
        self, engine_id: str, port: int, gpu_ids: tuple[int, ...], fraction: float | None
    ) -> None:
        """Record the port and GPUs of an engine found again after a restart, unchecked:
        it already listens on its port."""
        self._ports.mark_reserved(port)
        self.claim_gpus(engine_id, gpu_ids, fraction)

    def add(self, sup: EngineSupervisor) -> None:
        """List ``sup`` under its engine id."""
        self._supervisors[sup.engine_id] = sup

    def release_if_stopped(self, sup: EngineSupervisor) -> None:
        """Give back the port and GPUs of ``sup`` once it is STOPPED (idempotent)."""
        if sup.stopped and sup.engine_id in self._claims:
            del self._claims[sup.engine_id]
            self._ports.release(sup.port)

    def forget_old_stopped(self, now: float) -> bool:
        """Drop STOPPED engines beyond the newest ``STOPPED_KEEP_COUNT`` or older than
        ``STOPPED_KEEP_S``; their counters stay in the totals.

        Returns:
            Whether any engine was dropped.
        """
        stopped = sorted(
            (s for s in self._supervisors.values() if s.stopped),
            key=lambda s: s.state_changed_at,
            reverse=True,
        )
        forgot = False
        for index, sup in enumerate(stopped):
            if index >= STOPPED_KEEP_COUNT or now - sup.state_changed_at >= STOPPED_KEEP_S:
                self._forgotten_restarts += sup.restarts
                self._forgotten_probe_failures += sup.probe_failures
                del self._supervisors[sup.engine_id]
                forgot = True
        return forgot
