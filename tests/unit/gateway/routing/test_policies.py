from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from sage.unified.gateway.routing import (
    DEFAULT_POLICY,
    BackendState,
    LeastLoadPolicy,
    RoundRobinPolicy,
    RoutingPolicy,
    RoutingState,
    SessionAffinityPolicy,
    UnknownPolicyError,
    get_policy,
    policy_names,
)
from sage.unified.sdk.models import Backend, RoutingTable

BackendFactory = Callable[..., Backend]
TableFactory = Callable[..., RoutingTable]


def _state(backend: BackendFactory, table: TableFactory, n: int) -> RoutingState:
    return RoutingState(table(*(backend(f"b{i}") for i in range(n))))


# -- registry ---------------------------------------------------------------------


def test_registry_names_and_default() -> None:
    assert policy_names() == ["cache_aware", "least_load", "round_robin", "session"]
    assert DEFAULT_POLICY == "cache_aware"
    assert get_policy("least_load") is LeastLoadPolicy
    assert get_policy("round_robin") is RoundRobinPolicy
    assert get_policy("session") is SessionAffinityPolicy


def test_unknown_policy_lists_known_names() -> None:
    with pytest.raises(
        UnknownPolicyError, match="known: cache_aware, least_load, round_robin, session"
    ):
        get_policy("fastest")


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):

        class _Again(RoutingPolicy, name="least_load"):
            pass


@pytest.mark.parametrize("name", ["least_load", "round_robin", "session", "cache_aware"])
def test_no_candidates_gives_none(name: str) -> None:
    policy = get_policy(name)()
    assert policy.select((), session_key="k", rng=random.Random(0)) is None


@pytest.mark.parametrize("name", ["least_load", "round_robin", "session", "cache_aware"])
@pytest.mark.parametrize("session_key", [None, "user-1"])
def test_never_picks_excluded(
    backend: BackendFactory, table: TableFactory, name: str, session_key: str | None
) -> None:
    policy = get_policy(name)()
    cands = _state(backend, table, 4).candidates("m")
    rng = random.Random(1)
    for _ in range(200):
        picked = policy.select(cands, session_key=session_key, exclude={"b0", "b2"}, rng=rng)
        assert picked is not None
        assert picked.key in {"b1", "b3"}
    # Everything excluded: no second backend, the caller must know.
    all_keys = {b.key for b in cands}
    assert policy.select(cands, session_key=session_key, exclude=all_keys, rng=rng) is None


# -- least_load ---------------------------------------------------------------------


def test_least_load_single_candidate(backend: BackendFactory, table: TableFactory) -> None:
    cands = _state(backend, table, 1).candidates("m")
    assert LeastLoadPolicy().select(cands, session_key=None, rng=random.Random(0)) is cands[0]


def test_least_load_prefers_lower_in_flight(backend: BackendFactory, table: TableFactory) -> None:
    cands = _state(backend, table, 4).candidates("m")
    cands[0].in_flight = 0
    for b in cands[1:]:
        b.in_flight = 5
    rng = random.Random(42)
    picks = Counter(LeastLoadPolicy().select(cands, rng=rng) for _ in range(4000))
    # b0 wins every pair it is sampled in: 1 - P(not sampled) = 1 - (3/4 * 2/3) = 0.5.
    share = picks[cands[0]] / 4000
    assert share > 0.45
    # Against one rival it always wins.
    two = cands[:2]
    picks2 = Counter(LeastLoadPolicy().select(two, rng=rng) for _ in range(1000))
    assert picks2[two[0]] / 1000 >= 0.7
    assert picks2[two[0]] == 1000


def test_least_load_counts_engine_queue(backend: BackendFactory, table: TableFactory) -> None:
    state = RoutingState(table(backend("busy", waiting=10), backend("idle", waiting=0)))
    cands = state.candidates("m")
    busy = state.get("busy")
    assert busy is not None
    idle = state.get("idle")
    assert idle is not None
    idle.in_flight = 3  # 3 < 0 + 10
    rng = random.Random(7)
    picks = Counter(LeastLoadPolicy().select(cands, rng=rng) for _ in range(500))
    assert picks[idle] == 500


def test_least_load_ties_are_random(backend: BackendFactory, table: TableFactory) -> None:
    cands = _state(backend, table, 2).candidates("m")
    rng = random.Random(3)
    picks = Counter(LeastLoadPolicy().select(cands, rng=rng) for _ in range(2000))
    assert 0.4 < picks[cands[0]] / 2000 < 0.6


def test_least_load_spreads_with_in_flight(backend: BackendFactory, table: TableFactory) -> None:
    state = _state(backend, table, 8)
    cands = state.candidates("m")
    rng = random.Random(5)
    policy = LeastLoadPolicy()
    for _ in range(800):  # requests that never finish: counts must stay balanced
        b = policy.select(cands, rng=rng)
        assert b is not None
        state.acquire(b)
    loads = [b.in_flight for b in cands]
    assert max(loads) - min(loads) <= 4


# -- round_robin --------------------------------------------------------------------


def test_round_robin_cycles(backend: BackendFactory, table: TableFactory) -> None:
    cands = _state(backend, table, 3).candidates("m")
    policy = RoundRobinPolicy()
    rng = random.Random(0)
    keys = [policy.select(cands, rng=rng).key for _ in range(7)]  # type: ignore[union-attr]
    assert keys == ["b0", "b1", "b2", "b0", "b1", "b2", "b0"]


def test_round_robin_cursor_per_model(backend: BackendFactory, table: TableFactory) -> None:
    state = RoutingState(
        table(backend("x0", "x"), backend("x1", "x"), backend("y0", "y"), backend("y1", "y"))
    )
    policy = RoundRobinPolicy()
    rng = random.Random(0)
    seq = [
        policy.select(state.candidates(m), rng=rng).key  # type: ignore[union-attr]
        for m in ["x", "y", "x", "y", "x"]
    ]
    assert seq == ["x0", "y0", "x1", "y1", "x0"]


def test_round_robin_skips_excluded(backend: BackendFactory, table: TableFactory) -> None:
    cands = _state(backend, table, 3).candidates("m")
    policy = RoundRobinPolicy()
    rng = random.Random(0)
    keys = [policy.select(cands, exclude={"b1"}, rng=rng).key for _ in range(4)]  # type: ignore[union-attr]
    assert keys == ["b0", "b2", "b0", "b2"]


# -- session ------------------------------------------------------------------------


def _pick(policy: SessionAffinityPolicy, cands: Sequence[BackendState], key: str) -> str:
    b = policy.select(cands, session_key=key, rng=random.Random(0))
    assert b is not None
    return b.key


def test_session_is_sticky(backend: BackendFactory, table: TableFactory) -> None:
    state = _state(backend, table, 5)
    policy = SessionAffinityPolicy()
    first = {f"user-{i}": _pick(policy, state.candidates("m"), f"user-{i}") for i in range(200)}
    # Same answer every time, also from a fresh policy (another gateway) and after a
    # table update that keeps the backends.
    other = SessionAffinityPolicy()
    state.update(table(*(backend(f"b{i}") for i in range(5)), revision=2))
    for key, chosen in first.items():
        assert _pick(policy, state.candidates("m"), key) == chosen
        assert _pick(other, state.candidates("m"), key) == chosen
    # And keys spread over all backends.
    assert set(first.values()) == {f"b{i}" for i in range(5)}


def test_session_keys_are_balanced(backend: BackendFactory, table: TableFactory) -> None:
    policy = SessionAffinityPolicy()
    for n in (2, 5, 16):
        cands = _state(backend, table, n).candidates("m")
        counts = Counter(_pick(policy, cands, f"user-{i}") for i in range(4000))
        expected = 4000 / n
        assert len(counts) == n
        assert min(counts.values()) > 0.75 * expected, counts
        assert max(counts.values()) < 1.25 * expected, counts


def test_session_minimal_movement_on_add_and_remove(
    backend: BackendFactory, table: TableFactory
) -> None:
    keys = [f"session-{i}" for i in range(2000)]
    policy = SessionAffinityPolicy()
    five = _state(backend, table, 5)
    before = {k: _pick(policy, five.candidates("m"), k) for k in keys}

    six = _state(backend, table, 6)  # b5 added
    after_add = {k: _pick(policy, six.candidates("m"), k) for k in keys}
    moved = [k for k in keys if before[k] != after_add[k]]
    # Only keys that now belong to the new backend move: ~1/6 of them.
    assert all(after_add[k] == "b5" for k in moved)
    assert 0.12 < len(moved) / len(keys) < 0.22

    four = RoutingState(table(*(backend(f"b{i}") for i in range(5) if i != 2)))
    after_remove = {k: _pick(policy, four.candidates("m"), k) for k in keys}
    moved = [k for k in keys if before[k] != after_remove[k]]
    # Only the removed backend's keys move: ~1/5.
    assert all(before[k] == "b2" for k in moved)
    assert 0.15 < len(moved) / len(keys) < 0.25


def test_session_bounded_load_spills(backend: BackendFactory, table: TableFactory) -> None:
    state = _state(backend, table, 4)
    cands = state.candidates("m")
    policy = SessionAffinityPolicy(load_factor=1.25)
    home = _pick(policy, cands, "hot")
    home_state = state.get(home)
    assert home_state is not None
    picks: list[str] = []
    for _ in range(40):  # one hot session, nothing finishes
        b = policy.select(cands, session_key="hot", rng=random.Random(0))
        assert b is not None
        state.acquire(b)
        picks.append(b.key)
    assert picks[0] == home
    assert len(set(picks)) > 1  # it spilled
    total = sum(b.in_flight for b in cands)
    bound = math.ceil(1.25 * total / 4 + 1)
    assert home_state.in_flight <= bound + 1
    # Once the load drains, the session goes home again.
    for b in cands:
        b.in_flight = 0
    assert _pick(policy, cands, "hot") == home


def test_session_spills_in_hrw_order(backend: BackendFactory, table: TableFactory) -> None:
    cands = _state(backend, table, 3).candidates("m")
    policy = SessionAffinityPolicy()
    home = _pick(policy, cands, "k")
    # The HRW second choice is what a retry (home excluded) gets...
    second_b = policy.select(cands, session_key="k", exclude={home}, rng=random.Random(0))
    assert second_b is not None
    second = second_b.key
    # ...and also where an overloaded home spills to.
    for b in cands:
        if b.key == home:
            b.in_flight = 100
    assert _pick(policy, cands, "k") == second


def test_session_without_key_uses_least_load(backend: BackendFactory, table: TableFactory) -> None:
    cands = _state(backend, table, 2).candidates("m")
    cands[0].in_flight = 9
    policy = SessionAffinityPolicy()
    rng = random.Random(0)
    assert all(policy.select(cands, session_key=None, rng=rng) is cands[1] for _ in range(50))


def test_session_load_factor_validated() -> None:
    with pytest.raises(ValueError, match="load_factor"):
        SessionAffinityPolicy(load_factor=0.5)


def test_session_cache_is_bounded_and_exact(backend: BackendFactory, table: TableFactory) -> None:
    state = _state(backend, table, 6)
    reference = SessionAffinityPolicy()
    small = SessionAffinityPolicy(max_cached_keys=2)
    keys = [f"k{i}" for i in range(30)]
    expected = {k: _pick(reference, state.candidates("m"), k) for k in keys}
    for _ in range(3):
        for k in keys:
            assert _pick(small, state.candidates("m"), k) == expected[k]
            assert _pick(small, list(state.candidates("m")), k) == expected[k]
    assert len(small._top) <= 2
    # A changed candidate list (new table without the winner) is never answered
    # from the cache.
    gone = expected["k0"]
    state.update(table(*(backend(f"b{i}") for i in range(6) if f"b{i}" != gone)))
    assert _pick(small, state.candidates("m"), "k0") != gone
