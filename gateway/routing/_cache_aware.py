"""``cache_aware``: route to the engine with the lowest predicted time to first token.

The cost of sending a request to engine ``e`` is the prefill work it would wait for:

    cost(e) = pending(e) + uncached(e) + decode_weight * mean_prompt * in_flight(e)
              [+ mean_uncached * waiting(e) not sent by this gateway]

* ``uncached(e)``: the request's prompt minus its prefix that ``e`` holds, as the
  :class:`~.PrefixIndex` knows it (every engine of a model prefills at the same
  rate, so work in bytes or tokens stands for time);
* ``pending(e)``: the uncached work of the requests this gateway sent to ``e`` that
  have not started answering yet (released at the first response byte, when
  prefill is over);
* the ``in_flight`` term: running requests slow an engine and hold KV blocks;
* ``waiting(e)``: the engine's reported queue (the routing table), which includes
  other gateways' requests.

This is the cost model of llm-d's predicted-latency scorer and Dynamo's KV router,
in their units: pure longest-prefix routing would pile every request sharing one
hot system prompt onto one engine; here a hot engine's pending work grows until
another engine is cheaper even after recomputing the prefix, and the prefix spreads.

Then, in order:

1. *Bounded load*: an engine with more than ``load_factor`` times the mean
   ``in_flight`` (plus one) is passed over while another is not.
2. *Session affinity*: a request with a session key goes back to the engine its
   session used while that engine is a candidate, within the bound, and its cost is
   at most ``affinity_factor`` times the best (its KV cache holds the conversation).
3. *Ties*: engines whose cost is within ``tie_fraction`` of the prompt of the best
   are tied; among them the rendezvous (HRW) winner for the session key, else for
   the prompt's first chunk, wins. Two gateways with cold indexes (a restart, a new
   prefix) therefore send the same prefix to the same engine, and their caches do
   not split.

Every pick records its reason on the :class:`~.RoutingRequest`: ``prefix`` (the
chosen engine holds the longest prefix available), ``load`` (the prefix is held
elsewhere but the load decided, or nobody holds any), ``affinity`` (session),
``fallback`` (no prompt to match: routed on load alone), ``only`` (the model has one
engine: nothing is weighed, hashed or indexed).

Precise mode swaps the key function (an engine's own block hashes of the prompt) and
feeds the index from engine KV events instead of routing decisions (see
``docs/routing.md``); the cost model is the same.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable, Collection, Sequence

from sage.unified.gateway.routing._policies import RoutingPolicy
from sage.unified.gateway.routing._prefix_index import EngineSlot, PrefixIndex
from sage.unified.gateway.routing._request import DEFAULT_CHUNK_BYTES, RoutingRequest
from sage.unified.gateway.routing._table import HRW_PRIME, BackendState

__all__ = ["CacheAwarePolicy", "KeyFunction"]

KeyFunction = Callable[[RoutingRequest], tuple[Sequence[int], int]]
"""A request's prefix keys and its prompt size in the keys' unit (precise mode)."""

_SWEEP_EVERY = 4096
"""Picks between two sweeps of departed engines out of the index."""
_MAX_SESSIONS = 65_536
_LEARN_RATE = 0.05
_BYTES_PER_TOKEN = 4.0
"""Before the first usage is seen: about right for English text and BPE vocabularies."""
_INDEX_HEADROOM = 2.0
"""The index keeps this many times what an engine holds. Forgetting a prefix an engine
still holds loses a hit; remembering one it evicted costs little (the request is
prefilled in full there, as it would be anywhere else), and the ledger's
``delivery_low`` shows when it happens a lot. Measured on the Mooncake trace: 1x kept
83 % of the fleet-wide ceiling, 2x 88 %, the same as an unbounded index."""


class CacheAwarePolicy(RoutingPolicy, name="cache_aware"):
    """Predicted-TTFT routing over a prefix index (module docstring).

    Args:
        chunk_bytes: bytes per prompt chunk of the approximate index.
        engine_cache_tokens: how many tokens one engine's KV cache holds; the index keeps
            twice that per engine (converted to chunks with the bytes per token learned
            from engines' usage). ``None``: unbounded.
        load_factor: bounded load (>= 1): an engine with more than this many times the
            mean in-flight requests (plus one) is passed over.
        decode_weight: cost of one running request, as a share of the mean prompt.
        affinity_factor: a session stays on its engine while its cost is at most this
            many times the best (>= 1).
        tie_fraction: costs within this share of the prompt of the best are tied.
        keys: precise mode: the request's keys and prompt size in the index's unit.
        unit: precise mode: units per key (the engine's block size in tokens).
        record_routes: add a routed prompt's keys to the chosen engine (approximate
            mode; an event-fed index may leave it to the events).
    """

    __slots__ = (
        "_capacity_ratio",
        "_keys",
        "_mean_prompt",
        "_mean_uncached",
        "_picks",
        "_sessions",
        "_slot_cache",
        "_unit",
        "_units_per_token",
        "affinity_factor",
        "chunk_bytes",
        "decode_weight",
        "engine_cache_tokens",
        "index",
        "load_factor",
        "record_routes",
        "tie_fraction",
    )

    def __init__(
        self,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        engine_cache_tokens: int | None = 262_144,
        load_factor: float = 1.25,
        decode_weight: float = 0.3,
        affinity_factor: float = 2.0,
        tie_fraction: float = 0.05,
        keys: KeyFunction | None = None,
        unit: int | None = None,
        record_routes: bool = True,
    ) -> None:
        if chunk_bytes < 16:
            raise ValueError("chunk_bytes must be >= 16")
        if load_factor < 1.0 or affinity_factor < 1.0:
            raise ValueError("load_factor and affinity_factor must be >= 1")
        if decode_weight < 0 or tie_fraction < 0:
            raise ValueError("decode_weight and tie_fraction must be >= 0")
        self.chunk_bytes = chunk_bytes
        self.engine_cache_tokens = engine_cache_tokens
        self.load_factor = load_factor
        self.decode_weight = decode_weight
        self.affinity_factor = affinity_factor
        self.tie_fraction = tie_fraction
        self.record_routes = record_routes
        self._keys = keys
        self._unit = unit if unit is not None else chunk_bytes
        self._units_per_token = 1.0 if keys is not None else _BYTES_PER_TOKEN
        self._capacity_ratio = self._units_per_token
        self.index = PrefixIndex(capacity=self._capacity())
        self._mean_prompt = 0.0
        self._mean_uncached = 0.0
        self._picks = 0
        self._sessions: dict[str, str] = {}
        # model -> (the candidates tuple, their slots): the routing state hands out the
        # same tuple until the table changes, so an identity check is exact.
        self._slot_cache: dict[str, tuple[Sequence[BackendState], list[EngineSlot]]] = {}

    # -- the pick -------------------------------------------------------------------

    def select(
        self,
        candidates: Sequence[BackendState],
        *,
        session_key: str | None = None,
        exclude: Collection[str] = (),
        rng: random.Random,
        request: RoutingRequest | None = None,
    ) -> BackendState | None:
        if exclude:
            candidates = [b for b in candidates if b.key not in exclude]
        n = len(candidates)
        if n < 2:
            # No choice to weigh: nothing is hashed, held or indexed (the index learns the
            # engine's prefixes once the model has a second one).
            if n and request is not None:
                request.reason = "only"
            return candidates[0] if n else None
        self._picks += 1
        if self._picks % _SWEEP_EVERY == 0:
            # The cache holds candidate tuples (and so departed backends) alive.
            self._slot_cache.clear()
            self.index.sweep()
        keys: Sequence[int] = ()
        prompt = 0
        if request is not None:
            keys, prompt = self._request_keys(request)
        slots = self._slots(candidates)
        unit = self._unit
        matched = self.index.match(keys, slots) if keys else None
        in_flight = [b.in_flight for b in candidates]
        costs = self._costs(candidates, slots, matched, prompt)
        bound = math.ceil(self.load_factor * sum(in_flight) / n + 1)
        eligible: Sequence[int]
        if max(in_flight) <= bound:
            eligible = range(n)
            best = min(costs)
        else:
            eligible = [i for i in range(n) if in_flight[i] <= bound] or range(n)
            best = min([costs[i] for i in eligible])
        limit = best + self.tie_fraction * prompt
        chosen = -1
        reason = ""
        if session_key is not None:
            chosen = self._sticky(candidates, eligible, costs, session_key, limit)
            if chosen >= 0:
                reason = "affinity"
        if chosen < 0:
            tied = [i for i in eligible if costs[i] <= limit]
            chosen = (
                tied[0]
                if len(tied) == 1
                else self._rendezvous(candidates, tied, session_key, keys, rng)
            )
        backend = candidates[chosen]
        if session_key is not None:
            self._remember(session_key, backend.key)
        slot = slots[chosen]
        captured = available = 0
        if matched is not None:
            captured = matched[chosen] * unit
            available = max(matched) * unit
        if not reason:
            if not keys:
                reason = "fallback" if request is None or not prompt else "load"
            else:
                reason = "prefix" if captured and captured == available else "load"
        uncached = prompt - captured
        self._mean_prompt += _LEARN_RATE * (prompt - self._mean_prompt)
        self._mean_uncached += _LEARN_RATE * (uncached - self._mean_uncached)
        if request is not None:
            request.reason = reason
            request.prompt_units = prompt
            request.available_units = available
            request.captured_units = captured
            request.units_per_token = self._units_per_token
            self._hold(request, slot, uncached)
        if keys and self.record_routes:
            self.index.insert(slot, keys)
        return backend

    def finished(self, request: RoutingRequest) -> None:
        """Release the request's pending work; learn bytes per token from its usage."""
        request.release()
        usage = request.usage
        if self._keys is not None or usage is None or usage[0] <= 0 or not request.prompt_units:
            return
        ratio = request.prompt_units / usage[0]
        self._units_per_token += _LEARN_RATE * (ratio - self._units_per_token)
        # The capacity in chunks follows the learned ratio, re-set only on a 10 % change
        # (setting it walks every engine's keys).
        if abs(self._units_per_token - self._capacity_ratio) > 0.1 * self._capacity_ratio:
            self._capacity_ratio = self._units_per_token
            self.index.set_capacity(self._capacity())

    # -- parts of the pick ----------------------------------------------------------------

    def _request_keys(self, request: RoutingRequest) -> tuple[Sequence[int], int]:
        if self._keys is not None:
            return self._keys(request)
        keys = request.chunk_hashes(self.chunk_bytes)
        return keys, request.prompt_units

    def _slots(self, candidates: Sequence[BackendState]) -> list[EngineSlot]:
        if type(candidates) is tuple:
            model = candidates[0].backend.model
            cached = self._slot_cache.get(model)
            if cached is not None and cached[0] is candidates:
                return cached[1]
            slots = [self.index.slot_for(b) for b in candidates]
            self._slot_cache[model] = (candidates, slots)
            return slots
        return [self.index.slot_for(b) for b in candidates]

    def _costs(
        self,
        candidates: Sequence[BackendState],
        slots: Sequence[EngineSlot],
        matched: Sequence[int] | None,
        prompt: int,
    ) -> list[float]:
        unit = self._unit
        per_request = self.decode_weight * self._mean_prompt
        mean_uncached = self._mean_uncached
        costs: list[float] = []
        for i, b in enumerate(candidates):
            slot = slots[i]
            cost: float = slot.pending + prompt
            if matched is not None:
                cost -= matched[i] * unit
            cost += per_request * b.in_flight
            # Queued at the engine and not sent by us: other gateways' requests.
            if b.waiting > slot.pending_requests:
                cost += (b.waiting - slot.pending_requests) * mean_uncached
            costs.append(cost)
        return costs

    def _sticky(
        self,
        candidates: Sequence[BackendState],
        eligible: Sequence[int],
        costs: list[float],
        session_key: str,
        limit: float,
    ) -> int:
        engine = self._sessions.get(session_key)
        if engine is None:
            return -1
        for i in eligible:
            if candidates[i].key == engine:
                return i if costs[i] <= self.affinity_factor * limit else -1
        return -1

    def _remember(self, session_key: str, engine: str) -> None:
        sessions = self._sessions
        if sessions.get(session_key) == engine:
            return
        sessions.pop(session_key, None)
        sessions[session_key] = engine
        if len(sessions) > _MAX_SESSIONS:
            del sessions[next(iter(sessions))]  # the oldest assignment

    @staticmethod
    def _rendezvous(
        candidates: Sequence[BackendState],
        tied: list[int],
        session_key: str | None,
        keys: Sequence[int],
        rng: random.Random,
    ) -> int:
        if session_key is not None:
            key = zlib.crc32(session_key.encode())
        elif keys:
            key = keys[0] & 0xFFFFFFFF
        else:
            return tied[int(rng.random() * len(tied))]
        weights = [(candidates[i].hrw_a * key + candidates[i].hrw_b) % HRW_PRIME for i in tied]
        return tied[weights.index(max(weights))]

    @staticmethod
    def _hold(request: RoutingRequest, slot: EngineSlot, work: int) -> None:
        slot.pending += work
        slot.pending_requests += 1

        def release() -> None:
            slot.pending = max(0, slot.pending - work)
            slot.pending_requests = max(0, slot.pending_requests - 1)

        request.hold(release)

    def _capacity(self) -> int | None:
        if self.engine_cache_tokens is None:
            return None
        tokens = self.engine_cache_tokens * _INDEX_HEADROOM
        return max(1, int(tokens * self._units_per_token / self._unit))
