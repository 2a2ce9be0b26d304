"""Deployments and cordons in etcd: :class:`EtcdFleetStore` (what
:class:`~sage.unified.coordinator._fleet.Fleet` writes through) and :func:`fleet_records`
(what every gateway's fleet is reloaded from).

Keys: ``P state/deployments/<name>`` (a ``DeploymentRecord``) and
``P state/cordons/<agent id>`` (a ``CordonRecord``). Each write is a compare-and-swap on
the revision this gateway's mirror holds for the key, so two gateways changing one
deployment at the same moment cannot both win: the one that loses answers 409
``concurrent_change`` and the operator applies again (apply is idempotent). The
reconciler that acts on them runs on the leader only.
"""

from __future__ import annotations

import logging

from sage.unified.coordinator._errors import ConflictError
from sage.unified.coordinator._etcd import Compare, DeleteOp, EtcdClient, PutOp
from sage.unified.coordinator._fleet_records import CordonRecord, DeploymentRecord
from sage.unified.coordinator._ha._mirror import StateMirror, StoreHealth
from sage.unified.coordinator._ha._records import KeySpace
from sage.unified.coordinator._ha._view import MirrorState
from sage.unified.sdk.models import decode, encode

__all__ = ["CORDONS", "DEPLOYMENTS", "EtcdFleetStore", "fleet_records"]

log = logging.getLogger("sage.unified.coordinator")

DEPLOYMENTS = "deployments"
CORDONS = "cordons"
_APPLY_WAIT_S = 5.0


def fleet_records(state: MirrorState) -> tuple[list[DeploymentRecord], list[CordonRecord]]:
    """The deployments and cordons the mirror holds (a record that does not decode is
    logged and left out)."""
    deployments = []
    for name, kv in state.other.get(DEPLOYMENTS, {}).items():
        try:
            deployments.append(decode(kv.value, DeploymentRecord))
        except ValueError as exc:
            log.error("deployment %s in etcd skipped: %s", name, exc)
    cordons = []
    for agent_id, kv in state.other.get(CORDONS, {}).items():
        try:
            cordons.append(decode(kv.value, CordonRecord))
        except ValueError as exc:
            log.error("cordon of %s in etcd skipped: %s", agent_id, exc)
    return deployments, cordons


class EtcdFleetStore:
    """The fleet's store on etcd (see the module docstring).

    Args:
        etcd: the client.
        keys: the deployment's key space.
        mirror: the revisions the compare-and-swaps expect.
        health: etcd's reachability (writes answer 503 while it is down).
    """

    def __init__(
        self, etcd: EtcdClient, keys: KeySpace, mirror: StateMirror, health: StoreHealth
    ) -> None:
        self._etcd = etcd
        self._keys = keys
        self._mirror = mirror
        self._health = health

    async def put_deployment(self, record: DeploymentRecord) -> None:
        await self._write(DEPLOYMENTS, record.name, encode(record))

    async def delete_deployment(self, name: str) -> None:
        await self._write(DEPLOYMENTS, name, None)

    async def put_cordon(self, record: CordonRecord) -> None:
        await self._write(CORDONS, record.agent_id, encode(record))

    async def delete_cordon(self, agent_id: str) -> None:
        await self._write(CORDONS, agent_id, None)

    async def _write(self, kind: str, name: str, value: bytes | None) -> None:
        """Raises ControlPlaneUnavailableError (503) or ConflictError (409)."""
        self._health.require()
        key = self._keys.key(kind, name)
        known = self._mirror.state.other.get(kind, {}).get(name)
        compare = Compare.mod_revision(key, "==", known.mod_revision if known else 0)
        op = DeleteOp(key) if value is None else PutOp(key, value)
        with self._health.guard():
            result = await self._etcd.txn([compare], [op])
        if not result.succeeded:
            raise ConflictError(
                f"{kind[:-1]} {name!r} was changed through another gateway at the same "
                "moment; send the change again",
                code="concurrent_change",
            )
        await self._mirror.wait_for(result.header.revision, _APPLY_WAIT_S)
