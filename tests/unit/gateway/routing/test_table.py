from __future__ import annotations

from collections.abc import Callable

from sage.unified.gateway.routing import RoutingState
from sage.unified.sdk.models import Backend, EngineKind, RoutingTable
from sage.unified.sdk.states import EngineState

BackendFactory = Callable[..., Backend]
TableFactory = Callable[..., RoutingTable]


def test_candidates_by_model_and_kind(backend: BackendFactory, table: TableFactory) -> None:
    state = RoutingState(
        table(
            backend("a", "chat"),
            backend("b", "chat"),
            backend("e", "embed", kind=EngineKind.EMBEDDING),
        )
    )
    assert [b.key for b in state.candidates("chat", EngineKind.LLM)] == ["a", "b"]
    assert [b.key for b in state.candidates("chat")] == ["a", "b"]
    # An embedding model is not offered for chat, and vice versa.
    assert state.candidates("embed", EngineKind.LLM) == ()
    assert [b.key for b in state.candidates("embed", EngineKind.EMBEDDING)] == ["e"]
    assert state.candidates("chat", EngineKind.EMBEDDING) == ()


def test_unknown_model_has_no_candidates(backend: BackendFactory, table: TableFactory) -> None:
    state = RoutingState(table(backend("a", "chat")))
    assert state.candidates("nope") == ()
    assert state.candidates("nope", EngineKind.LLM) == ()
    assert RoutingState().candidates("chat") == ()


def test_models_sorted_and_filtered(backend: BackendFactory, table: TableFactory) -> None:
    state = RoutingState(
        table(
            backend("a", "zeta"),
            backend("b", "alpha"),
            backend("c", "alpha"),
            backend("e", "embed", kind=EngineKind.EMBEDDING),
        )
    )
    assert state.models() == ["alpha", "embed", "zeta"]
    assert state.models(EngineKind.LLM) == ["alpha", "zeta"]
    assert state.models(EngineKind.EMBEDDING) == ["embed"]
    state.models().clear()  # a copy: the caller cannot corrupt the state
    assert state.models() == ["alpha", "embed", "zeta"]


def test_update_keeps_counters_of_unchanged_backends(
    backend: BackendFactory, table: TableFactory
) -> None:
    state = RoutingState(table(backend("a", url="http://h:1"), backend("b", url="http://h:2")))
    a = state.candidates("m")[0]
    state.acquire(a)
    state.acquire(a)
    a.consecutive_failures = 3

    state.update(
        table(
            backend("a", url="http://h:1", waiting=7),
            backend("c", url="http://h:3"),
            revision=2,
        )
    )
    by_key = {b.key: b for b in state.candidates("m")}
    assert set(by_key) == {"a", "c"}  # b dropped, c added
    assert by_key["a"] is a
    assert a.in_flight == 2
    assert a.consecutive_failures == 3
    assert a.waiting == 7  # the new row's load is used
    assert by_key["c"].in_flight == 0
    assert state.get("b") is None
    assert state.revision == 2

    # The request still holding ``a`` releases it after another update: no underflow.
    state.release(a)
    state.release(a)
    state.release(a)
    assert a.in_flight == 0


def test_update_with_new_url_starts_fresh(backend: BackendFactory, table: TableFactory) -> None:
    state = RoutingState(table(backend("a", url="http://h:1")))
    old = state.candidates("m")[0]
    state.acquire(old)
    state.update(table(backend("a", url="http://h:9")))
    new = state.candidates("m")[0]
    assert new is not old
    assert new.in_flight == 0
    assert new.backend.url == "http://h:9"


def test_removed_backend_release_is_harmless(backend: BackendFactory, table: TableFactory) -> None:
    state = RoutingState(table(backend("a"), backend("b")))
    a = state.get("a")
    assert a is not None
    state.acquire(a)
    state.update(table(backend("b")))
    state.release(a)
    assert a.in_flight == 0
    assert [b.key for b in state.candidates("m")] == ["b"]


def test_static_backends_are_merged_and_win(backend: BackendFactory, table: TableFactory) -> None:
    static = backend("s", url="http://static:1")
    state = RoutingState(static_backends=[static])
    assert [b.key for b in state.candidates("m")] == ["s"]
    state.update(table(backend("s", url="http://other:1"), backend("t")))
    cands = {b.key: b for b in state.candidates("m")}
    assert set(cands) == {"s", "t"}
    assert cands["s"].backend.url == "http://static:1"
    state.update(None)  # a missing table keeps only the static rows
    assert [b.key for b in state.candidates("m")] == ["s"]


def test_non_ready_rows_are_ignored(backend: BackendFactory, table: TableFactory) -> None:
    draining = backend("d")
    draining.state = EngineState.DRAINING
    state = RoutingState(table(backend("a"), draining))
    assert [b.key for b in state.candidates("m")] == ["a"]


def test_acquire_release_count_in_flight(backend: BackendFactory, table: TableFactory) -> None:
    state = RoutingState(table(backend("a")))
    a = state.candidates("m")[0]
    state.acquire(a)
    assert a.in_flight == 1
    state.release(a)
    assert a.in_flight == 0


def test_candidates_are_precomputed(backend: BackendFactory, table: TableFactory) -> None:
    state = RoutingState(table(backend("a"), backend("b")))
    # No per-request list building while nothing is ejected.
    assert state.candidates("m") is state.candidates("m")
