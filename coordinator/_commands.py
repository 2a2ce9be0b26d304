"""Operators' engine commands: register, start (placement + the agent's API), stop.

Each command checks what it may, acts, and audits its outcome (a rejection too). Calls to
agents go through the SDK's agent client; its errors become the coordinator's: a refusal
is the agent's own 4xx status and message (:class:`AgentRejectedError`); anything else
(connection, timeout, 5xx, a garbled answer) is 502 ``agent_unreachable`` naming the agent.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable

import httpx
import msgspec

from sage.unified.coordinator._addresses import AddressPolicy
from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._errors import (
    AgentRejectedError,
    AgentUnreachableError,
    ConflictError,
    CoordinatorError,
    UrlPolicyError,
)
from sage.unified.coordinator._netcheck import parse_engine_url
from sage.unified.coordinator._placement import Candidate, place
from sage.unified.coordinator._prober import RegisteredEngineProber
from sage.unified.coordinator._registry import Registry
from sage.unified.coordinator._reports import Publish
from sage.unified.coordinator._store import StartRequestRecord, Store
from sage.unified.sdk.auth import is_loopback_host
from sage.unified.sdk.client import APIStatusError, AsyncAgentClient, SageClientError
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import (
    EngineInfo,
    EngineStartRequest,
    EngineStopRequest,
    RegisterEngineRequest,
)
from sage.unified.sdk.states import EngineState

__all__ = ["EngineCommands", "PendingStarts", "agent_error", "is_own_address"]

log = logging.getLogger("sage.unified.coordinator")


def is_own_address(host: str, port: int, own: tuple[str, int] | None) -> bool:
    """Whether ``host:port`` is where this control plane (and its gateway) listens
    (``own``: its bind host and port)."""
    if own is None or port != own[1]:
        return False
    own_host = own[0]
    if host == own_host:
        return True
    # A loopback or wildcard bind is reached through any loopback address.
    return is_loopback_host(host) and (
        is_loopback_host(own_host) or own_host in ("0.0.0.0", "::", "")
    )


def candidates(
    registry: Registry, is_cordoned: Callable[[str], bool] = lambda _agent_id: False
) -> list[Candidate]:
    """Every live agent as placement sees it."""
    return [
        Candidate.of(summary, len(engines), cordoned=is_cordoned(summary.agent_id))
        for summary, engines in registry.live_agents()
    ]


async def stop_engine(
    request: EngineStopRequest,
    who: str,
    registry: Registry,
    agent: Callable[[str], AsyncAgentClient],
    unregister: Callable[[str], Awaitable[EngineInfo]],
    auditor: Auditor,
    check: Callable[[], None] = lambda: None,
) -> EngineInfo:
    """Drain or stop an agent's engine (through ``agent(url)``), or ``unregister`` an engine
    no agent manages; audited either way. One rule for both control planes (``check``
    raises first when the store cannot take the change).

    Raises:
        NotFoundError: unknown engine.
        AgentUnreachableError, AgentRejectedError: the agent call failed.
    """
    try:
        check()
        owner = registry.agent_of(request.engine_id)
        if owner is None:
            info = await unregister(request.engine_id)
        else:
            client = agent(owner[1])
            if request.drain:
                info = await client.drain(request.engine_id, timeout_s=request.timeout_s)
            else:
                info = await client.stop(request.engine_id)
    except CoordinatorError as exc:
        await auditor.record(who, "engine.stop", request.engine_id, f"rejected: {exc.message}")
        raise
    action = "drain" if request.drain and owner is not None else "stop"
    await auditor.record(who, f"engine.{action}", request.engine_id, f"ok: {info.state.value}")
    return info


async def registration(
    request: RegisterEngineRequest,
    own: tuple[str, int] | None,
    addresses: AddressPolicy,
    registry: Registry,
    now: float,
) -> EngineInfo:
    """The engine a registration adds (STARTING until its first good probe), checked.

    One rule for both control planes (local and etcd); the caller stores it.

    Raises:
        UrlPolicyError: a bad URL, this gateway itself (every request would loop back), or
            a host outside the allowed networks.
        ConflictError: the id is taken.
    """
    parsed = parse_engine_url(request.url)
    if is_own_address(parsed.host, parsed.port, own):
        raise UrlPolicyError(
            f"engine url {parsed.url!r} is this gateway (or control plane) itself: "
            "every request would loop back here",
            param="url",
        )
    await addresses.check(parsed.host, parsed.port)
    engine_id = request.id or f"reg-{uuid.uuid4().hex[:12]}"
    if registry.has_engine(engine_id):
        raise ConflictError(
            f"engine id {engine_id!r} already exists", code="engine_exists", param="id"
        )
    return EngineInfo(
        id=engine_id,
        model=request.model,
        kind=request.kind,
        host=parsed.host,
        port=parsed.port,
        url=parsed.url,
        state=EngineState.STARTING,
        reason="registered; waiting for a good health probe",
        created_at=now,
        state_changed_at=now,
    )


def agent_error(agent_url: str) -> Callable[[SageClientError], CoordinatorError]:
    """The error translation for calls to the agent at ``agent_url``."""

    def translate(error: SageClientError) -> CoordinatorError:
        if isinstance(error, APIStatusError) and 400 <= error.status_code < 500:
            return AgentRejectedError(
                f"agent at {agent_url} refused: {error.message}", status=error.status_code
            )
        if isinstance(error, APIStatusError):
            return AgentUnreachableError(
                f"agent at {agent_url} answered {error.status_code}: {error.message}"
            )
        return AgentUnreachableError(f"agent at {agent_url} is unreachable: {error}")

    return translate


class PendingStarts:
    """Starts forwarded to agents that no report has shown yet (persisted).

    Args:
        store: where they are kept.
        records: those loaded from the store.
    """

    def __init__(self, store: Store, records: Iterable[StartRequestRecord] = ()) -> None:
        self._store = store
        self._records = {r.engine_id: r for r in records}

    def list(self) -> list[StartRequestRecord]:
        return list(self._records.values())

    async def add(self, record: StartRequestRecord) -> None:
        self._records[record.engine_id] = record
        await self._store.put_start_request(record)

    async def seen(self, engine_ids: Iterable[str]) -> None:
        """An agent reported these engines: their starts are no longer pending."""
        if not self._records:
            return
        for engine_id in engine_ids:
            if self._records.pop(engine_id, None) is not None:
                await self._store.delete_start_request(engine_id)


class EngineCommands:
    """Register, start and stop engines.

    Args:
        registry: the registry.
        clock: timestamps.
        store: persistence of registered engines.
        addresses: the policy registered URLs must pass.
        auditor: every outcome is audited.
        prober: probes registered engines.
        starts: pending starts.
        http: the connection pool agent calls use.
        agent_token: sent to agents (``None``: no ``Authorization``).
        agent_timeout_s: read timeout of agent calls.
        publish: called with the revision after a change.
        own_address: ``(bind host, port)`` of this control plane's server: an engine
            registered there would loop.
        is_cordoned: whether an agent takes no new engines (``sage agent cordon``).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        clock: Clock,
        store: Store,
        addresses: AddressPolicy,
        auditor: Auditor,
        prober: RegisteredEngineProber,
        starts: PendingStarts,
        http: httpx.AsyncClient,
        agent_token: str | None,
        agent_timeout_s: float,
        publish: Publish,
        own_address: tuple[str, int] | None = None,
        is_cordoned: Callable[[str], bool] = lambda _agent_id: False,
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._store = store
        self._addresses = addresses
        self._auditor = auditor
        self._prober = prober
        self._starts = starts
        self._http = http
        self._agent_token = agent_token
        self._agent_timeout_s = agent_timeout_s
        self._publish = publish
        self._own = own_address
        self._is_cordoned = is_cordoned

    def agent(self, agent_url: str) -> AsyncAgentClient:
        """The client of one agent's API (on the shared pool)."""
        return AsyncAgentClient(
            agent_url,
            self._agent_token,
            timeout=self._agent_timeout_s,
            http=self._http,
            translate_error=agent_error(agent_url),
        )

    async def register(self, request: RegisterEngineRequest, who: str) -> EngineInfo:
        """Add an engine no agent manages; it is probed and routed once healthy.

        Raises:
            UrlPolicyError: bad scheme, or the host resolves outside the allowed networks.
            ConflictError: the id is taken.
        """
        target = request.id or request.url
        try:
            info = await registration(
                request, self._own, self._addresses, self._registry, self._clock.time()
            )
            engine_id = info.id
            self._registry.put_registered(info)
            self._prober.track(engine_id)
            await self._store.put_registered(info)
        except CoordinatorError as exc:
            await self._auditor.record(who, "engine.register", target, f"rejected: {exc.message}")
            raise
        await self._auditor.record(
            who, "engine.register", engine_id, f"ok: {info.url} model {request.model}"
        )
        await self._publish(self._registry.revision)
        return self._registry.engine(engine_id)

    async def start(self, request: EngineStartRequest, who: str) -> EngineInfo:
        """Place an engine and ask that agent to start it; returns the agent's answer.

        Raises:
            PlacementError: nothing fits, no agent, or the named host is unknown.
            AgentUnreachableError: the agent did not answer (502, names the agent).
            AgentRejectedError: the agent refused (its 4xx status and message).
        """
        target = request.spec.name
        try:
            known = candidates(self._registry, self._is_cordoned)
            chosen = place(request.spec, known, request.host)
            info = await self.agent(chosen.url).start_engine(request.spec)
            if not self._registry.has_engine(info.id):
                await self._starts.add(
                    StartRequestRecord(info.id, chosen.agent_id, request.spec, self._clock.time())
                )
        except CoordinatorError as exc:
            await self._auditor.record(who, "engine.start", target, f"rejected: {exc.message}")
            raise
        await self._auditor.record(
            who, "engine.start", info.id, f"ok: agent {chosen.agent_id} model {target}"
        )
        return info

    async def stop(self, request: EngineStopRequest, who: str) -> EngineInfo:
        """Drain or stop an agent's engine, or remove a registered one.

        Raises:
            NotFoundError: unknown engine.
            AgentUnreachableError, AgentRejectedError: the agent call failed.
        """
        return await stop_engine(
            request, who, self._registry, self.agent, self._unregister, self._auditor
        )

    async def _unregister(self, engine_id: str) -> EngineInfo:
        current = self._registry.engine(engine_id)
        self._registry.remove_engine(engine_id)
        self._prober.forget(engine_id)
        await self._store.delete_registered(engine_id)
        await self._publish(self._registry.revision)
        return msgspec.structs.replace(
            current,
            state=EngineState.STOPPED,
            reason="unregistered",
            state_changed_at=self._clock.time(),
        )
