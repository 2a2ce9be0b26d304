"""This gateway's copy of the control plane's state in etcd, and how etcd's changes apply
to it (pure: the I/O is in :mod:`._mirror`).

:class:`MirrorState` keeps the state keys by kind and feeds a
:class:`~sage.unified.coordinator._mirrored.MirroredRegistry`: snapshots, liveness,
registered engines. A value that does not decode is logged and skipped (the key is kept
out of the registry) so that one bad record never stops the mirror.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from sage.unified.coordinator._errors import CoordinatorError
from sage.unified.coordinator._etcd._types import KeyValue, WatchEvent
from sage.unified.coordinator._ha._records import (
    KeySpace,
    KnownAgent,
    StartIntent,
    StoredAgent,
    significant,
)
from sage.unified.coordinator._mirrored import MirroredRegistry
from sage.unified.sdk.models import EngineInfo, decode

__all__ = ["AgentEntry", "MirrorState"]

log = logging.getLogger("sage.unified.coordinator")


@dataclass(frozen=True, slots=True)
class AgentEntry:
    kv: KeyValue
    stored: StoredAgent
    significant: bytes


class MirrorState:
    """The state keys of one deployment, as of :attr:`revision`.

    Args:
        keys: the deployment's key space.
        registry: the registry the table is published from.
    """

    def __init__(self, keys: KeySpace, registry: MirroredRegistry) -> None:
        self.keys = keys
        self.registry = registry
        self.revision = 0
        """The etcd revision everything up to which has been applied."""
        self.agents: dict[str, AgentEntry] = {}
        self.alive: dict[str, KeyValue] = {}
        self.registered: dict[str, KeyValue] = {}
        self.starts: dict[str, tuple[KeyValue, StartIntent]] = {}
        self.other: dict[str, dict[str, KeyValue]] = {}
        """Kinds this module does not interpret (deployments, cordons...), by kind."""
        self.other_changed = False
        """One of :attr:`other` changed since the flag was last cleared."""

    # ------------------------------------------------------------------ queries

    def known_agent(self, agent_id: str, expired: Callable[[int], bool]) -> KnownAgent | None:
        """What :func:`~._records.plan_report_write` needs about an agent."""
        entry = self.agents.get(agent_id)
        if entry is None:
            return None
        alive = self.alive.get(agent_id)
        lease = alive.lease if alive is not None and alive.lease else None
        return KnownAgent(
            record_revision=entry.kv.mod_revision,
            significant=entry.significant,
            written_at=entry.stored.written_at,
            lease_id=lease,
            lease_expired=lease is not None and expired(lease),
        )

    # ------------------------------------------------------------------ changes

    def reset(self, kvs: Iterable[KeyValue], revision: int) -> None:
        """Replace everything with a full read of the state at ``revision``."""
        for agent_id in list(self.agents):
            self.registry.remove_agent(agent_id)
        for engine in self.registry.registered_engines():
            self.registry.remove_engine(engine.id)
        self.agents.clear()
        self.alive.clear()
        self.registered.clear()
        self.starts.clear()
        self.other.clear()
        ordered = sorted(kvs, key=lambda kv: self._load_order(kv))
        for kv in ordered:
            self._put(kv)
        self.revision = revision
        self.registry.stamp(revision)
        self.other_changed = True

    def apply(self, event: WatchEvent) -> bool:
        """Apply one change; returns whether the registry changed (stamp it then)."""
        self.revision = max(self.revision, event.kv.mod_revision)
        if event.type == "put":
            return self._put(event.kv)
        return self._delete(event.kv.key)

    def _load_order(self, kv: KeyValue) -> int:
        parsed = self.keys.parse(kv.key)
        # Liveness first, so each snapshot is applied knowing whether its agent is lost.
        return 0 if parsed is not None and parsed[0] == "alive" else 1

    def _put(self, kv: KeyValue) -> bool:
        parsed = self.keys.parse(kv.key)
        if parsed is None:
            return False
        kind, name = parsed
        try:
            return self._put_kind(kind, name, kv)
        except (msgspec.ValidationError, msgspec.DecodeError, CoordinatorError) as exc:
            log.error("etcd key %s skipped: %s", kv.key.decode(errors="replace"), exc)
            return False

    def _put_kind(self, kind: str, name: str, kv: KeyValue) -> bool:
        if kind == "agents":
            stored = decode(kv.value, StoredAgent)
            self.agents[name] = AgentEntry(kv, stored, significant(stored.report))
            return self.registry.apply_stored(stored.report, lost=name not in self.alive)
        if kind == "alive":
            self.alive[name] = kv
            return self.registry.set_lost(name, False)
        if kind == "registered":
            info = decode(kv.value, EngineInfo)
            self.registered[name] = kv
            return self.registry.put_registered(info)
        if kind == "starts":
            self.starts[name] = (kv, decode(kv.value, StartIntent))
            return False
        self.other.setdefault(kind, {})[name] = kv
        self.other_changed = True
        return False

    def _delete(self, key: bytes) -> bool:
        parsed = self.keys.parse(key)
        if parsed is None:
            return False
        kind, name = parsed
        if kind == "agents":
            self.agents.pop(name, None)
            return self.registry.remove_agent(name)
        if kind == "alive":
            self.alive.pop(name, None)
            return self.registry.set_lost(name, True)
        if kind == "registered":
            self.registered.pop(name, None)
            if self.registry.has_engine(name) and self.registry.agent_of(name) is None:
                self.registry.remove_engine(name)
                return True
            return False
        if kind == "starts":
            self.starts.pop(name, None)
            return False
        self.other_changed |= self.other.get(kind, {}).pop(name, None) is not None
        return False
