"""Which engines age out of the listings. Pure: no I/O.

An agent's engine that is STOPPED, or ERROR, for ``retention_s`` (the coordinator's
``stopped_engine_retention_s``) and belongs to no deployment (none, or one that no longer
exists) is no longer listed (``GET /v1/management/engines``, ``sage llm engine list``); the
lease sweep audits it once as it leaves, so the audit log keeps the record. A live
deployment's replicas are the reconciler's to replace, registered engines can recover,
and a lost host's engines have their own retention, so none of those ages out here.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from sage.unified.coordinator._registry import HOST_LOST_REASON
from sage.unified.sdk.models import EngineInfo
from sage.unified.sdk.states import EngineState

__all__ = ["AgedEngines", "aged_out"]

_DONE = (EngineState.STOPPED, EngineState.ERROR)


def aged_out(
    engine: EngineInfo, now: float, retention_s: float, deployments: Container[str] = ()
) -> bool:
    """Whether ``engine`` (as listed, wall time ``now``) has aged out of the listings;
    ``deployments`` are the names of the deployments that exist."""
    if engine.state not in _DONE or engine.agent_id is None:
        return False
    if engine.reason == HOST_LOST_REASON:
        return False
    if engine.spec is not None and engine.spec.deployment in deployments:
        return False
    return now - engine.state_changed_at >= retention_s


class AgedEngines:
    """Remembers which engines aged out, to tell each one once.

    Args:
        retention_s: how long a STOPPED or ERROR engine stays listed.
    """

    def __init__(self, retention_s: float) -> None:
        self.retention_s = retention_s
        self._seen: set[str] = set()

    def newly_aged(
        self, engines: Iterable[EngineInfo], now: float, deployments: Container[str] = ()
    ) -> list[EngineInfo]:
        """The engines of ``engines`` that aged out since the last call."""
        aged = [e for e in engines if aged_out(e, now, self.retention_s, deployments)]
        fresh = [e for e in aged if e.id not in self._seen]
        self._seen = {e.id for e in aged}
        return fresh
