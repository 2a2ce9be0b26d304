"""The prefix index: longest held prefix per engine, eviction like an engine's, engines leaving."""

from __future__ import annotations

import gc
from collections.abc import Callable

from sage.unified.gateway.routing import BackendState, PrefixIndex, RoutingState
from sage.unified.sdk.models import Backend, RoutingTable

BackendFactory = Callable[..., Backend]
TableFactory = Callable[..., RoutingTable]


def test_match_counts_the_leading_keys_each_engine_holds() -> None:
    index = PrefixIndex()
    a, b, c = index.slot("a"), index.slot("b"), index.slot("c")
    index.insert(a, [1, 2, 3, 4])
    index.insert(b, [1, 2, 9])
    index.insert(c, [2, 3, 4])  # not a prefix of the prompt: key 1 is missing
    assert index.match([1, 2, 3, 4, 5], [a, b, c]) == [4, 2, 0]
    assert index.match([7], [a, b, c]) == [0, 0, 0]
    assert index.match([], [a]) == [0]


def test_eviction_drops_the_least_recent_tail_first() -> None:
    # As vLLM frees a finished sequence's blocks tail first, a prompt's prefix outlives
    # its tail: a later prompt sharing the prefix still matches it.
    index = PrefixIndex(capacity=4)
    slot = index.slot("a")
    index.insert(slot, [1, 2, 3])
    assert list(slot.keys) == [3, 2, 1]  # least recent first
    index.insert(slot, [1, 2, 7])
    assert list(slot.keys) == [3, 7, 2, 1]
    index.insert(slot, [8])
    assert list(slot.keys) == [7, 2, 1, 8]
    assert index.match([1, 2, 3], [slot]) == [2]
    assert index.match([1, 2, 7], [slot]) == [3]
    index.insert(slot, [9, 10])
    assert list(slot.keys) == [1, 8, 10, 9]
    assert index.match([1, 2, 7], [slot]) == [1]


def test_discard_clear_and_remove() -> None:
    index = PrefixIndex()
    a, b = index.slot("a"), index.slot("b")
    index.insert(a, [1, 2, 3])
    index.insert(b, [1, 2, 3])
    index.discard(a, [2, 42])
    assert index.match([1, 2, 3], [a, b]) == [1, 3]
    index.clear(b)
    assert index.match([1, 2, 3], [a, b]) == [1, 0]
    assert len(index) == 2  # a holds 1 and 3
    index.remove("a")
    assert len(index) == 0
    assert index.slot("c").bit == a.bit  # the bit is reused


def test_a_new_engine_behind_an_old_id_starts_empty(
    backend: BackendFactory, table: TableFactory
) -> None:
    state = RoutingState(table(backend("e1"), backend("e2")))
    index = PrefixIndex()
    first = state.get("e1")
    assert first is not None
    slot = index.slot_for(first)
    index.insert(slot, [1, 2])
    slot.pending = 500
    assert index.slot_for(first) is slot
    assert len(slot.keys) == 2
    # Restarted (new incarnation): same object, nothing cached any more.
    restarted = backend("e1")
    restarted.incarnation = 1
    state.update(table(restarted, backend("e2"), revision=2))
    assert state.get("e1") is first
    assert len(index.slot_for(first).keys) == 0
    assert slot.pending == 0
    # Replaced (new URL): a new backend object, nothing cached either.
    index.insert(slot, [3])
    state.update(table(backend("e1", url="http://elsewhere:1"), backend("e2"), revision=3))
    replaced = state.get("e1")
    assert isinstance(replaced, BackendState)
    assert replaced is not first
    assert len(index.slot_for(replaced).keys) == 0


def test_sweep_drops_engines_that_left_routing(
    backend: BackendFactory, table: TableFactory
) -> None:
    state = RoutingState(table(backend("e1"), backend("e2")))
    index = PrefixIndex()
    for key in ("e1", "e2"):
        found = state.get(key)
        assert found is not None
        index.insert(index.slot_for(found), [1, 2])
    found = None
    state.update(table(backend("e2"), revision=2))
    gc.collect()
    assert index.sweep() == 1
    assert index.engines == 1
    assert len(index) == 2
