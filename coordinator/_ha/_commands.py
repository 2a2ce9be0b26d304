"""Operators' engine commands in a highly available control plane: any gateway takes them.

- **register**: the engine is written with a compare-and-swap that creates its key only
  if absent (two gateways cannot both take one id); the leader probes it.
- **start**: the gateway records a start intent under a fresh engine id (created only if
  absent) and waits for the leader to carry it out (:mod:`._starts`): placement happens
  once, on the leader, and the agent call carries the engine id, so a leader that dies
  half-way leaves a start its successor finishes without starting a second engine.
- **stop**: the agent is called directly (drain and stop are idempotent); an engine
  registered by URL is deleted from etcd.

Every command answers 503 ``control_plane_unavailable`` at once while etcd is
unreachable, and is audited as the local coordinator audits it.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable

import anyio
import httpx
import msgspec

from sage.unified.coordinator._addresses import AddressPolicy
from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._commands import (
    agent_error,
    candidates,
    registration,
    stop_engine,
)
from sage.unified.coordinator._errors import ConflictError, CoordinatorError
from sage.unified.coordinator._etcd import Compare, DeleteOp, EtcdClient, PutOp
from sage.unified.coordinator._ha._mirror import StateMirror, StoreHealth
from sage.unified.coordinator._ha._records import KeySpace, StartError, StartIntent
from sage.unified.coordinator._placement import place
from sage.unified.coordinator._registry import Registry
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.sdk.client import AsyncAgentClient
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import (
    EngineInfo,
    EngineStartRequest,
    EngineStopRequest,
    RegisterEngineRequest,
    encode,
)
from sage.unified.sdk.states import EngineState

__all__ = ["EtcdEngineCommands", "candidates", "new_engine_id", "start_error"]

log = logging.getLogger("sage.unified.coordinator")

_APPLY_WAIT_S = 5.0


def new_engine_id(name: str) -> str:
    """``<served-name-slug>-<6 hex>``, the agents' own format (``qwen2-5-0-5b-1a2b3c``)."""
    base = name.rsplit("/", 1)[-1] or name
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")[:48].strip("-") or "engine"
    return f"{slug}-{secrets.token_hex(3)}"


def start_error(error: StartError) -> CoordinatorError:
    """The recorded failure of a start, as the error the caller gets."""
    return CoordinatorError(error.message, status=error.status, code=error.code, type_=error.type)


class EtcdEngineCommands:
    """Register, start and stop engines through etcd.

    Args:
        etcd: the client.
        keys: the deployment's key space.
        mirror: this gateway's mirror (checks, and waiting for the leader's answer).
        health: etcd's reachability.
        settings: agent timeout and token, start timeout.
        clock: timestamps.
        addresses: the policy registered URLs must pass.
        auditor: every outcome is audited.
        http: the connection pool agent calls use.
        is_cordoned: whether an agent takes no new engines.
    """

    def __init__(
        self,
        etcd: EtcdClient,
        keys: KeySpace,
        mirror: StateMirror,
        health: StoreHealth,
        *,
        settings: CoordinatorSettings,
        clock: Clock,
        addresses: AddressPolicy,
        auditor: Auditor,
        http: httpx.AsyncClient,
        is_cordoned: Callable[[str], bool] = lambda _agent_id: False,
    ) -> None:
        self.is_cordoned = is_cordoned
        self._etcd = etcd
        self._keys = keys
        self._mirror = mirror
        self._health = health
        self._settings = settings
        self._clock = clock
        self._addresses = addresses
        self._auditor = auditor
        self._http = http

    @property
    def _registry(self) -> Registry:
        return self._mirror.state.registry

    def agent(self, agent_url: str) -> AsyncAgentClient:
        settings = self._settings
        token = settings.agent_command_token or (
            settings.agent_tokens[0] if settings.agent_tokens else None
        )
        return AsyncAgentClient(
            agent_url,
            token,
            timeout=self._settings.agent_timeout_s,
            http=self._http,
            translate_error=agent_error(agent_url),
        )

    async def register(self, request: RegisterEngineRequest, who: str) -> EngineInfo:
        """Add an engine no agent manages (see :meth:`EngineCommands.register`).

        Raises:
            ControlPlaneUnavailableError: etcd cannot be reached.
            UrlPolicyError, ConflictError: as the local coordinator.
        """
        target = request.id or request.url
        try:
            self._health.require()
            own = (self._settings.host, self._settings.port)
            info = await registration(
                request, own, self._addresses, self._registry, self._clock.time()
            )
            engine_id = info.id
            key = self._keys.registered(engine_id)
            with self._health.guard():
                result = await self._etcd.txn(
                    [Compare.create_revision(key, "==", 0)], [PutOp(key, encode(info))]
                )
            if not result.succeeded:
                raise ConflictError(
                    f"engine id {engine_id!r} already exists", code="engine_exists", param="id"
                )
            await self._mirror.wait_for(result.header.revision, _APPLY_WAIT_S)
        except CoordinatorError as exc:
            await self._auditor.record(who, "engine.register", target, f"rejected: {exc.message}")
            raise
        await self._auditor.record(
            who, "engine.register", engine_id, f"ok: {info.url} model {request.model}"
        )
        return self._registry.engine(engine_id) if self._registry.has_engine(engine_id) else info

    async def start(self, request: EngineStartRequest, who: str) -> EngineInfo:
        """Record a start for the leader and wait for its outcome.

        Returns the agent's answer; when the leader has not carried the start out within
        the agent timeout plus one leader lease (a leader change), the engine as
        accepted (STARTING): the start will still happen, once.

        Raises:
            ControlPlaneUnavailableError: etcd cannot be reached (nothing is recorded).
            PlacementError: nothing fits (checked here first, then by the leader).
            AgentUnreachableError, AgentRejectedError: as the leader found them.
        """
        target = request.spec.name
        try:
            self._health.require()
            place(request.spec, candidates(self._registry, self.is_cordoned), request.host)
            engine_id = new_engine_id(request.spec.name)
            intent = StartIntent(
                engine_id=engine_id,
                spec=request.spec,
                host=request.host,
                who=who,
                requested_at=self._clock.time(),
            )
            key = self._keys.start(engine_id)
            with self._health.guard():
                result = await self._etcd.txn(
                    [Compare.create_revision(key, "==", 0)], [PutOp(key, encode(intent))]
                )
            if not result.succeeded:  # a fresh random id was taken: vanishingly rare
                raise ConflictError(f"engine id {engine_id!r} is taken; send the start again")
        except CoordinatorError as exc:
            await self._auditor.record(who, "engine.start", target, f"rejected: {exc.message}")
            raise
        return await self._outcome(intent)

    async def _outcome(self, intent: StartIntent) -> EngineInfo:
        wait_s = self._settings.agent_timeout_s + self._settings.leader_lease_ttl_s + 5.0
        with anyio.move_on_after(wait_s):
            while True:
                entry = self._mirror.state.starts.get(intent.engine_id)
                if entry is not None and entry[1].done:
                    done = entry[1]
                    if done.phase == "started" and done.result is not None:
                        return done.result
                    if done.error is not None:
                        raise start_error(done.error)
                await self._mirror.changed(1.0)
        return EngineInfo(
            id=intent.engine_id,
            model=intent.spec.name,
            kind=intent.spec.kind,
            runtime=intent.spec.runtime,
            state=EngineState.STARTING,
            reason="start accepted; the control-plane leader has not confirmed it yet",
            created_at=intent.requested_at,
            state_changed_at=intent.requested_at,
        )

    async def stop(self, request: EngineStopRequest, who: str) -> EngineInfo:
        """Drain or stop an agent's engine, or remove a registered one.

        Raises:
            ControlPlaneUnavailableError: etcd cannot be reached.
            NotFoundError, AgentUnreachableError, AgentRejectedError: as the local
                coordinator.
        """
        return await stop_engine(
            request,
            who,
            self._registry,
            self.agent,
            self._unregister,
            self._auditor,
            check=self._health.require,
        )

    async def _unregister(self, engine_id: str) -> EngineInfo:
        current = self._registry.engine(engine_id)
        with self._health.guard():
            result = await self._etcd.txn([], [DeleteOp(self._keys.registered(engine_id))])
        await self._mirror.wait_for(result.header.revision, _APPLY_WAIT_S)
        return msgspec.structs.replace(
            current,
            state=EngineState.STOPPED,
            reason="unregistered",
            state_changed_at=self._clock.time(),
        )
