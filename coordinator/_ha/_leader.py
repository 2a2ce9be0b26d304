"""Who does the work that must happen once: :class:`LeaderElection`.

Every coordinator of the deployment campaigns with a lease of ``leader_lease_ttl_s``
(etcd's election recipe, :class:`~sage.unified.coordinator._etcd.Election`). The leader
runs the leader tasks (start executor, prober of registered engines, upkeep, and any the
caller added, e.g. a deployment reconciler) until its lease ends: it could not renew it
within its TTL (etcd unreachable, the process paused), which is also when etcd lets the
next candidate lead. The tasks are then cancelled, and the coordinator campaigns again.

Leader writes carry :meth:`LeaderElection.fence`, a compare on the leader's own election
key: a leader that was paused and has not noticed that it lost leadership yet cannot
overwrite its successor's work. A coordinator that stops resigns, so that another leads
at once rather than after one TTL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from sage.unified.coordinator._backend import LeaderTask, run_leader_tasks
from sage.unified.coordinator._etcd import (
    Compare,
    Election,
    EtcdClient,
    EtcdError,
    Leadership,
    Lease,
)

__all__ = ["LeaderElection"]

log = logging.getLogger("sage.unified.coordinator")

_MAX_BACKOFF_S = 2.0
_RESIGN_TIMEOUT_S = 2.0


class LeaderElection:
    """Campaigns until cancelled and runs ``tasks`` while leading.

    Args:
        etcd: the client.
        prefix: the election's key prefix.
        identity: published as the leader's value (who leads, for people).
        ttl_s: the leader lease's TTL (seconds).
        tasks: the leader tasks (:attr:`tasks` may be changed until the first term).
    """

    def __init__(
        self,
        etcd: EtcdClient,
        prefix: str,
        identity: str,
        ttl_s: int,
        tasks: Sequence[LeaderTask],
    ) -> None:
        self._etcd = etcd
        self._election = Election(etcd, prefix)
        self.identity = identity
        self._ttl_s = ttl_s
        self.tasks: Sequence[LeaderTask] = tasks
        self.leadership: Leadership | None = None
        self.terms = 0
        """How many times this coordinator started to lead."""
        self._unrevoked: list[int] = []
        """Our earlier leases that could not be revoked (etcd was down): revoked before the
        next campaign, so that our own stale candidacy is not waited for."""

    @property
    def is_leader(self) -> bool:
        return self.leadership is not None

    def fence(self) -> Compare | None:
        """The compare that holds only while we lead (``None``: we do not)."""
        leadership = self.leadership
        if leadership is None:
            return None
        return Compare.create_revision(leadership.key, "==", leadership.create_revision)

    async def leader(self) -> str | None:
        """Who leads now (its identity), ``None`` when nobody does.

        Raises:
            EtcdError: etcd could not be read.
        """
        current = await self._election.leader()
        return None if current is None else current.value.decode(errors="replace")

    async def run(self) -> None:
        """Campaign, lead, and campaign again, until cancelled."""
        failures = 0
        while True:
            try:
                await self._term()
                failures = 0
            except EtcdError as exc:
                failures += 1
                log.warning("leader election: etcd failed (%s); campaigning again", exc)
                await anyio.sleep(min(0.1 * 2**failures, _MAX_BACKOFF_S))

    async def _term(self) -> None:
        for stale in list(self._unrevoked):
            await self._etcd.lease_revoke(stale, timeout_s=_RESIGN_TIMEOUT_S)
            self._unrevoked.remove(stale)
        lease = await self._etcd.lease_grant(self._ttl_s)
        error: EtcdError | None = None
        try:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(self._keep_alive, lease, scope)
                    try:
                        self.leadership = await self._election.campaign(self.identity, lease)
                        self.terms += 1
                        log.info("leading the control plane (%s)", self.identity)
                        await run_leader_tasks(self.tasks)
                    except EtcdError as exc:
                        # Raised out here, not through the task group (an exception group).
                        error = exc
                    scope.cancel()
        finally:
            was_leading, self.leadership = self.leadership is not None, None
            if was_leading:
                log.warning("no longer leading the control plane (%s)", self.identity)
            with anyio.move_on_after(_RESIGN_TIMEOUT_S, shield=True):
                try:
                    await self._etcd.lease_revoke(lease.id, timeout_s=_RESIGN_TIMEOUT_S)
                except EtcdError as exc:
                    log.debug("could not revoke the leader lease: %s", exc)
                    self._unrevoked.append(lease.id)
        if error is not None:
            raise error

    async def _keep_alive(self, lease: Lease, scope: anyio.CancelScope) -> None:
        try:
            await self._etcd.keep_lease_alive(lease)
        except EtcdError as exc:
            log.warning("leader lease lost: %s", exc)
        scope.cancel()
