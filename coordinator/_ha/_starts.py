"""The leader carries out accepted engine starts: :class:`StartExecutor`.

Each start intent (``P state/starts/<engine id>``, see :class:`~._records.StartIntent`)
moves ``requested -> placed -> started | failed``; every move is a compare-and-swap on the
intent's revision and on the leader's own election key, so a deposed leader that wakes
up cannot overwrite its successor's work. The agent is called with the engine id the
intent carries: an agent that already started that engine answers with it instead of
starting another, so a leader that dies after the call and before recording its answer
leaves a start its successor finishes with exactly one engine.

An unreachable agent is asked again every round until ``start_timeout_s`` after the
request; a refusal (the agent's 4xx) fails the start at once. Finished intents are
deleted once an agent reports the engine, or after a minute (failed ones).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import msgspec

from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._commands import candidates
from sage.unified.coordinator._errors import (
    AgentRejectedError,
    AgentUnreachableError,
    CoordinatorError,
)
from sage.unified.coordinator._etcd import Compare, DeleteOp, EtcdClient, EtcdError, PutOp
from sage.unified.coordinator._ha._commands import EtcdEngineCommands
from sage.unified.coordinator._ha._mirror import StateMirror
from sage.unified.coordinator._ha._records import KeySpace, StartError, StartIntent
from sage.unified.coordinator._placement import place
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import EngineInfo, encode

__all__ = ["StartExecutor"]

log = logging.getLogger("sage.unified.coordinator")

_ROUND_S = 1.0
_KEEP_FAILED_S = 60.0
_KEEP_ANY_S = 600.0

Fence = Callable[[], Compare | None]
"""The compare that holds while this coordinator leads (``None``: not leading)."""


def _error(exc: CoordinatorError) -> StartError:
    return StartError(
        status=exc.status,
        code=str(exc.code) if exc.code is not None else None,
        type=exc.type,
        message=exc.message,
    )


class StartExecutor:
    """Carries accepted starts to agents while this coordinator leads (a leader task).

    Args:
        etcd: the client.
        keys: the deployment's key space.
        mirror: the intents and the registry placement reads.
        commands: builds agent clients.
        fence: the leadership compare for every write.
        settings: ``start_timeout_s``.
        clock: the intents' ages.
        auditor: each start's outcome is audited under the requester's name.
    """

    def __init__(
        self,
        etcd: EtcdClient,
        keys: KeySpace,
        mirror: StateMirror,
        commands: EtcdEngineCommands,
        fence: Fence,
        *,
        settings: CoordinatorSettings,
        clock: Clock,
        auditor: Auditor,
    ) -> None:
        self._etcd = etcd
        self._keys = keys
        self._mirror = mirror
        self._commands = commands
        self._fence = fence
        self._settings = settings
        self._clock = clock
        self._auditor = auditor
        self._busy: set[str] = set()

    async def run(self) -> None:
        """Advance every open intent each round (or when the mirror changes), until
        cancelled."""
        async with anyio.create_task_group() as task_group:
            while True:
                for engine_id in list(self._mirror.state.starts):
                    if engine_id not in self._busy:
                        self._busy.add(engine_id)
                        task_group.start_soon(self._advance_guarded, engine_id)
                await self._mirror.changed(_ROUND_S)

    async def _advance_guarded(self, engine_id: str) -> None:
        try:
            await self.advance(engine_id)
        except EtcdError as exc:
            log.warning("start %s: etcd failed (%s); next round", engine_id, exc)
        except Exception:  # one bad intent must not stop the others
            log.exception("start %s could not be advanced; next round", engine_id)
        finally:
            self._busy.discard(engine_id)

    async def advance(self, engine_id: str) -> None:
        """Take one intent one or two steps further (or delete it when done)."""
        entry = self._mirror.state.starts.get(engine_id)
        if entry is None:
            return
        kv, intent = entry
        age = self._clock.time() - intent.requested_at
        if intent.done:
            seen = self._mirror.state.registry.has_engine(engine_id)
            if seen or age > _KEEP_ANY_S or (intent.phase == "failed" and age > _KEEP_FAILED_S):
                await self._write(engine_id, kv.mod_revision, None)
            return
        if intent.phase == "requested":
            if not await self._place(engine_id, kv.mod_revision, intent):
                return
            entry = self._mirror.state.starts.get(engine_id)
            if entry is None or entry[1].phase != "placed":
                return
            kv, intent = entry
        await self._call_agent(engine_id, kv.mod_revision, intent, age)

    async def _place(
        self, engine_id: str, revision: int, intent: StartIntent
    ) -> StartIntent | None:
        try:
            known = candidates(self._mirror.state.registry, self._commands.is_cordoned)
            chosen = place(intent.spec, known, intent.host)
        except CoordinatorError as exc:
            await self._finish(engine_id, revision, intent, error=exc)
            return None
        placed = msgspec.structs.replace(
            intent, phase="placed", agent_id=chosen.agent_id, agent_url=chosen.url
        )
        if not await self._write(engine_id, revision, placed):
            return None
        return placed

    async def _call_agent(
        self, engine_id: str, revision: int, intent: StartIntent, age: float
    ) -> None:
        assert intent.agent_url is not None
        agent = self._commands.agent(intent.agent_url)
        try:
            info = await agent.start_engine(intent.spec, engine_id=engine_id)
        except AgentRejectedError as exc:
            await self._finish(engine_id, revision, intent, error=exc)
            return
        except AgentUnreachableError as exc:
            if age > self._settings.start_timeout_s:
                await self._finish(engine_id, revision, intent, error=exc)
            else:
                log.info("start %s: %s; asking again next round", engine_id, exc.message)
            return
        await self._finish(engine_id, revision, intent, info=info)

    async def _finish(
        self,
        engine_id: str,
        revision: int,
        intent: StartIntent,
        *,
        info: EngineInfo | None = None,
        error: CoordinatorError | None = None,
    ) -> None:
        if error is not None:
            done = msgspec.structs.replace(intent, phase="failed", error=_error(error))
            result = f"rejected: {error.message}"
        else:
            done = msgspec.structs.replace(intent, phase="started", result=info)
            result = f"ok: agent {intent.agent_id} model {intent.spec.name}"
        if await self._write(engine_id, revision, done):
            await self._auditor.record(intent.who, "engine.start", engine_id, result)

    async def _write(self, engine_id: str, revision: int, intent: StartIntent | None) -> bool:
        """Replace (or delete, for ``None``) the intent if nobody changed it and we lead."""
        fence = self._fence()
        if fence is None:
            return False
        key = self._keys.start(engine_id)
        op = DeleteOp(key) if intent is None else PutOp(key, encode(intent))
        result = await self._etcd.txn([Compare.mod_revision(key, "==", revision), fence], [op])
        if result.succeeded:
            await self._mirror.wait_for(result.header.revision, 5.0)
        return result.succeeded
