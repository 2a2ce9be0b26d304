"""Which engines hold which prompt blocks: the cache-aware policy's index (pure).

Keys are chained prefix hashes (a key stands for everything before it): the gateway's
approximate chunk keys (:meth:`RoutingRequest.chunk_hashes`) or, in precise mode, an
engine's own block hashes from its KV events. The index answers one question per
request, cheaply: for each candidate engine, how many leading keys of this prompt does
it hold?

Layout: each engine has a slot with a bit; ``holders`` maps a key to the bitmask of the
slots holding it. A lookup walks the prompt's keys in order and stops at the first key
no remaining candidate holds, so it costs one dict lookup per matched key, whatever the
number of engines.

Memory and eviction follow what an engine can hold: each slot keeps its keys in LRU
order and at most ``capacity`` of them (the engine's KV cache in keys; unbounded when
engine events do the evicting). A routed prompt's keys are touched last-to-first, so
its prefix is the most recently used and its tail goes first, as vLLM frees a finished
sequence's blocks tail first: what the index forgets first is what the engine evicts
first.

Engines come and go: a slot is bound to the routing state's backend object (weakly)
and its incarnation. A backend replaced under the same id (new URL) or restarted (new
incarnation) starts with an empty slot; a slot whose backend is gone is dropped by
:meth:`PrefixIndex.sweep`.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from sage.unified.gateway.routing._table import BackendState

__all__ = ["EngineSlot", "PrefixIndex"]


class EngineSlot:
    """One engine's part of the index, and the policy's pending work on it.

    Attributes:
        key: the engine (backend) id.
        bit: its bit in the holder masks.
        keys: the keys it holds, least recently used first.
        capacity: most keys kept (``None``: unbounded).
        pending: the routing policy's estimate of prefill work sent here and not yet
            started answering (in the index's unit).
        pending_requests: requests counted in ``pending``.
    """

    __slots__ = (
        "bit",
        "capacity",
        "incarnation",
        "key",
        "keys",
        "owner",
        "pending",
        "pending_requests",
    )

    def __init__(self, key: str, bit: int, capacity: int | None) -> None:
        self.key = key
        self.bit = bit
        self.capacity = capacity
        self.keys: OrderedDict[int, None] = OrderedDict()
        self.owner: weakref.ref[BackendState] | None = None
        self.incarnation = -1
        self.pending = 0
        self.pending_requests = 0


class PrefixIndex:
    """Engines' cached prefixes by chained key (module docstring).

    Args:
        capacity: keys kept per engine (``None``: unbounded, for event-fed indexes).
    """

    __slots__ = ("_free_bits", "_holders", "_next_bit", "_slots", "capacity")

    def __init__(self, *, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._slots: dict[str, EngineSlot] = {}
        self._holders: dict[int, int] = {}
        self._free_bits: list[int] = []
        self._next_bit = 0

    # -- engines ------------------------------------------------------------------

    def slot_for(self, backend: BackendState) -> EngineSlot:
        """The slot of a routable backend; emptied first when the backend object or its
        incarnation changed (a new engine behind the same id holds nothing yet)."""
        slot = self._slots.get(backend.key) or self.slot(backend.key)
        incarnation = backend.backend.incarnation
        if slot.owner is not None:
            if slot.owner() is backend and slot.incarnation == incarnation:
                return slot
            self.clear(slot)
            slot.pending = 0
            slot.pending_requests = 0
        slot.owner = weakref.ref(backend)
        slot.incarnation = incarnation
        return slot

    def slot(self, engine: str) -> EngineSlot:
        """The slot of engine id ``engine`` (created empty if new)."""
        slot = self._slots.get(engine)
        if slot is None:
            if self._free_bits:
                bit = self._free_bits.pop()
            else:
                bit = 1 << self._next_bit
                self._next_bit += 1
            slot = self._slots[engine] = EngineSlot(engine, bit, self.capacity)
        return slot

    def clear(self, slot: EngineSlot) -> None:
        """Forget everything ``slot`` holds (its engine restarted or reset its cache)."""
        self._drop(slot, slot.keys)
        slot.keys.clear()

    def remove(self, engine: str) -> None:
        """Drop an engine's slot and free its bit."""
        slot = self._slots.pop(engine, None)
        if slot is not None:
            self._drop(slot, slot.keys)
            self._free_bits.append(slot.bit)

    def sweep(self) -> int:
        """Drop the slots whose backend left the routing state; returns how many."""
        gone = [k for k, s in self._slots.items() if s.owner is not None and s.owner() is None]
        for engine in gone:
            self.remove(engine)
        return len(gone)

    def set_capacity(self, capacity: int | None) -> None:
        """Change every slot's capacity (evicting down to it)."""
        self.capacity = capacity
        for slot in self._slots.values():
            slot.capacity = capacity
            self._evict(slot)

    # -- keys ---------------------------------------------------------------------

    def match(self, keys: Sequence[int], slots: Sequence[EngineSlot]) -> list[int]:
        """For each of ``slots``, how many leading ``keys`` it holds."""
        n = len(slots)
        matched = [0] * n
        if not keys or not n:
            return matched
        alive = 0
        for slot in slots:
            alive |= slot.bit
        holders = self._holders
        index = 0
        for key in keys:
            held = holders.get(key, 0) & alive
            if held != alive:
                dropped = alive & ~held
                for i in range(n):
                    if slots[i].bit & dropped:
                        matched[i] = index
                alive = held
                if not alive:
                    return matched
            index += 1
        for i in range(n):
            if slots[i].bit & alive:
                matched[i] = index
        return matched

    def insert(self, slot: EngineSlot, keys: Sequence[int]) -> None:
        """``slot``'s engine holds ``keys`` now (a prompt routed there, or stored blocks);
        they become its most recently used, the first key most of all."""
        held = slot.keys
        holders = self._holders
        bit = slot.bit
        for key in reversed(keys):
            if key in held:
                held.move_to_end(key)
            else:
                held[key] = None
                holders[key] = holders.get(key, 0) | bit
        self._evict(slot)

    def discard(self, slot: EngineSlot, keys: Iterable[int]) -> None:
        """``slot``'s engine no longer holds ``keys`` (evicted blocks)."""
        held = slot.keys
        gone = [key for key in keys if key in held]
        for key in gone:
            del held[key]
        self._drop(slot, gone)

    def __len__(self) -> int:
        """Keys held, over all engines (an engine's copy counts once per engine)."""
        return sum(len(slot.keys) for slot in self._slots.values())

    @property
    def engines(self) -> int:
        return len(self._slots)

    # -- internals ------------------------------------------------------------------

    def _evict(self, slot: EngineSlot) -> None:
        capacity = slot.capacity
        held = slot.keys
        if capacity is None or len(held) <= capacity:
            return
        holders = self._holders
        clear = ~slot.bit
        while len(held) > capacity:
            key, _ = held.popitem(last=False)
            mask = holders.get(key, 0) & clear
            if mask:
                holders[key] = mask
            else:
                holders.pop(key, None)

    def _drop(self, slot: EngineSlot, keys: Iterable[int]) -> None:
        holders = self._holders
        clear = ~slot.bit
        for key in keys:
            mask = holders.get(key, 0) & clear
            if mask:
                holders[key] = mask
            else:
                holders.pop(key, None)
