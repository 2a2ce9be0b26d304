"""The cache_aware policy: reuse weighed against load, hot prefixes, cold starts, engines
leaving, eviction, sessions and several gateways."""

from __future__ import annotations

import gc
import json
import random
from collections import Counter
from collections.abc import Callable

from sage.unified.gateway.routing import (
    BackendState,
    CacheAwarePolicy,
    RoutingRequest,
    RoutingState,
    get_policy,
)
from sage.unified.sdk.models import Backend, RoutingTable

BackendFactory = Callable[..., Backend]
TableFactory = Callable[..., RoutingTable]
CHAT = b"/v1/chat/completions"
SYSTEM = "You are the support assistant of a large hardware store. " * 30  # ~1.7 KB


def chat(user: str, system: str = SYSTEM, model: str = "m") -> RoutingRequest:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        }
    ).encode()
    return RoutingRequest(model, CHAT, body)


def fleet(backend: BackendFactory, table: TableFactory, n: int) -> RoutingState:
    return RoutingState(table(*(backend(f"e{i}") for i in range(n))))


def pick(
    policy: CacheAwarePolicy,
    state: RoutingState,
    request: RoutingRequest,
    *,
    session: str | None = None,
    busy: bool = False,
) -> BackendState:
    """One routing decision; ``busy`` keeps the request in flight (prefill unfinished)."""
    chosen = policy.select(
        state.candidates(request.model), session_key=session, rng=random.Random(1), request=request
    )
    assert chosen is not None
    if busy:
        state.acquire(chosen)
    else:
        request.first_byte(0.05)
        policy.finished(request)
    return chosen


def test_registered_and_built_from_settings_names() -> None:
    assert get_policy("cache_aware") is CacheAwarePolicy


def test_a_returning_prefix_goes_where_it_is_cached(
    backend: BackendFactory, table: TableFactory
) -> None:
    state = fleet(backend, table, 4)
    policy = CacheAwarePolicy()
    first = pick(policy, state, chat("How do I return a drill?"))
    again = chat("And a saw?")
    assert pick(policy, state, again) is first
    assert again.reason == "prefix"
    assert again.captured_units == again.available_units
    assert again.captured_units
    assert again.captured_units >= len(SYSTEM) - 128


def test_one_hot_prefix_does_not_pile_onto_one_engine(
    backend: BackendFactory, table: TableFactory
) -> None:
    # Pure longest-prefix routing would send all 64 to one engine: every request shares
    # the system prompt. Their prefill is queued (no first byte yet), so the engine that
    # holds the prefix grows expensive and the prefix spreads.
    state = fleet(backend, table, 8)
    policy = CacheAwarePolicy()
    picks = Counter(pick(policy, state, chat(f"question {i}"), busy=True).key for i in range(64))
    assert len(picks) == 8
    assert max(picks.values()) <= 64 / 8 * 1.5


def test_load_outweighs_a_short_prefix(backend: BackendFactory, table: TableFactory) -> None:
    state = fleet(backend, table, 2)
    policy = CacheAwarePolicy()
    short = "Hi. " * 40  # 160 bytes: one chunk
    holder = pick(policy, state, chat("x", system=short))
    other = next(b for b in state.candidates("m") if b is not holder)
    policy.index.slot_for(holder).pending += 50_000  # a long prefill queued there
    request = chat("y", system=short)
    assert pick(policy, state, request) is other
    assert request.reason == "load"
    assert request.available_units
    assert not request.captured_units


def test_cold_gateways_agree_on_where_a_prefix_goes(
    backend: BackendFactory, table: TableFactory
) -> None:
    # Two gateways (two policy instances, two routing states) that never saw a prefix
    # send it to the same engine, so their caches do not split; different prefixes spread.
    first_gateway = CacheAwarePolicy()
    second_gateway = CacheAwarePolicy()
    one, two = fleet(backend, table, 8), fleet(backend, table, 8)
    homes = set()
    for g in range(40):
        system = f"System prompt number {g}. " * 20
        a = pick(first_gateway, one, chat("hello", system=system))
        b = pick(second_gateway, two, chat("hola", system=system))
        assert a.key == b.key
        homes.add(a.key)
    assert len(homes) >= 6


def test_a_session_sticks_to_its_engine_until_it_is_overloaded(
    backend: BackendFactory, table: TableFactory
) -> None:
    state = fleet(backend, table, 4)
    policy = CacheAwarePolicy()
    home = pick(policy, state, chat("turn 1", system="short"), session="s1")
    for turn in range(2, 6):
        request = chat(f"turn {turn}", system=f"other {turn}")  # nothing cached anywhere
        assert pick(policy, state, request, session="s1") is home
        assert request.reason == "affinity"
    home.in_flight = 20  # far over the bounded load (mean in flight 5)
    away = pick(policy, state, chat("turn 6", system="short"), session="s1")
    assert away is not home
    assert pick(policy, state, chat("turn 7", system="short"), session="s1") is away


def test_a_cold_session_goes_where_the_session_key_hashes(
    backend: BackendFactory, table: TableFactory
) -> None:
    # A restarted gateway (empty index, no memory of sessions) agrees with the old one.
    state = fleet(backend, table, 8)
    homes = {
        pick(CacheAwarePolicy(), state, chat(f"turn {t}", system=f"s{t}"), session="user-42").key
        for t in range(5)
    }
    assert len(homes) == 1


def test_an_engine_that_leaves_takes_its_prefixes_along(
    backend: BackendFactory, table: TableFactory
) -> None:
    state = fleet(backend, table, 3)
    policy = CacheAwarePolicy()
    holder = pick(policy, state, chat("first"))
    gone = holder.key
    state.update(table(*(backend(f"e{i}") for i in range(3) if f"e{i}" != gone), revision=2))
    request = chat("second")
    assert pick(policy, state, request).key != gone
    assert request.available_units == 0  # the prefix left with its engine
    del holder
    gc.collect()
    assert policy.index.sweep() == 1
    # Back with a fresh engine behind the same id: nothing is cached there.
    state.update(table(*(backend(f"e{i}") for i in range(3)), revision=3))
    assert request.model == "m"
    back = chat("third")
    pick(policy, state, back)
    assert back.available_units == back.captured_units  # only what "second" left


def test_the_index_forgets_what_engines_cannot_hold(
    backend: BackendFactory, table: TableFactory
) -> None:
    state = fleet(backend, table, 2)
    # Room for about 2 KB of prompt per engine (with the index's 2x headroom).
    policy = CacheAwarePolicy(engine_cache_tokens=256)
    home = pick(policy, state, chat("first", system="A" * 1800))
    other = next(b for b in state.candidates("m") if b is not home)
    policy.index.slot_for(other).pending = 10**9  # everything goes home for a while
    for i in range(6):
        pick(policy, state, chat(f"other {i}", system=f"{i}" * 1800))
    policy.index.slot_for(other).pending = 0
    assert policy.index.capacity == 2 * 256 * 4 // 128  # 2x headroom, 4 bytes per token
    assert len(policy.index.slot_for(home).keys) <= policy.index.capacity
    again = chat("again", system="A" * 1800)
    pick(policy, state, again)
    assert again.available_units == 0


def test_bytes_per_token_are_learned_from_usage(
    backend: BackendFactory, table: TableFactory
) -> None:
    state = fleet(backend, table, 2)
    policy = CacheAwarePolicy(engine_cache_tokens=1000)
    before = policy.index.capacity
    for i in range(100):
        request = chat(f"q{i}")
        policy.select(state.candidates("m"), rng=random.Random(0), request=request)
        request.usage = (request.prompt_units // 8, 0)  # 8 bytes per token
        policy.finished(request)
    assert before is not None
    assert policy.index.capacity is not None
    assert policy.index.capacity > 1.5 * before


def test_prefill_counts_until_the_first_byte(backend: BackendFactory, table: TableFactory) -> None:
    state = fleet(backend, table, 2)
    policy = CacheAwarePolicy()
    request = chat("hello")
    chosen = pick(policy, state, request, busy=True)
    slot = policy.index.slot_for(chosen)
    assert slot.pending == request.prompt_units
    assert slot.pending_requests == 1
    request.first_byte(0.1)
    assert (slot.pending, slot.pending_requests) == (0, 0)


def test_one_engine_is_no_choice(backend: BackendFactory, table: TableFactory) -> None:
    state = fleet(backend, table, 1)
    policy = CacheAwarePolicy()
    request = chat("hi")
    assert pick(policy, state, request) is state.candidates("m")[0]
    assert request.reason == "only"
    assert request.available_units is None
    assert len(policy.index) == 0


def test_no_prompt_routes_on_load_alone(backend: BackendFactory, table: TableFactory) -> None:
    state = fleet(backend, table, 3)
    policy = CacheAwarePolicy()
    busy = state.candidates("m")[0]
    busy.in_flight = 10
    picks = Counter()
    for _ in range(30):
        request = RoutingRequest("m", b"/v1/embeddings", b'{"input": "x"}')
        picks[pick(policy, state, request).key] += 1
        assert request.reason == "fallback"
    assert picks[busy.key] == 0
