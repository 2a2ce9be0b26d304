"""Load-balancing policies: small pure objects registered by name (as SkyPilot serve).

A policy only *chooses*. In-flight counting is the data plane's job, done the same
way for every policy: ``probe = state.acquire(b)`` before sending,
``state.release(b, probe)`` in a ``finally`` (see :class:`~sage.unified.gateway.routing.RoutingState`). So policies
have no start/finish hooks, and a policy that keeps state (round robin's cursors)
keeps only its own.

Registered names: ``least_load``, ``round_robin``, ``session`` here, ``cache_aware``
(the default) in :mod:`._cache_aware`.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

from sage.unified.gateway.routing._request import RoutingRequest
from sage.unified.gateway.routing._table import HRW_PRIME, BackendState

__all__ = [
    "DEFAULT_POLICY",
    "LeastLoadPolicy",
    "RoundRobinPolicy",
    "RoutingPolicy",
    "SessionAffinityPolicy",
    "UnknownPolicyError",
    "get_policy",
    "policy_names",
]

DEFAULT_POLICY = "cache_aware"
"""Chosen by ``bench/routing_quality.py`` (docs/performance.md, docs/routing.md)."""


class UnknownPolicyError(ValueError):
    """:func:`get_policy` was given a name no policy registered."""


class RoutingPolicy:
    """Base of every policy; subclasses register with ``class X(RoutingPolicy, name="x")``.

    Subclasses implement :meth:`select`. One instance serves the whole gateway
    (one event loop); construct it with keyword options only.
    """

    _registry: ClassVar[dict[str, type[RoutingPolicy]]] = {}
    name: ClassVar[str] = ""
    reason: ClassVar[str] = "load"
    """What the ledger records as the reason of a pick this policy did not explain."""

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            if name in RoutingPolicy._registry:
                raise ValueError(f"routing policy {name!r} is already registered")
            cls.name = name
            RoutingPolicy._registry[name] = cls

    def select(
        self,
        candidates: Sequence[BackendState],
        *,
        session_key: str | None = None,
        exclude: Collection[str] = (),
        rng: random.Random,
        request: RoutingRequest | None = None,
    ) -> BackendState | None:
        """Choose one of ``candidates`` for a request.

        Args:
            candidates: From :meth:`RoutingState.candidates`: one model's backends.
            session_key: The request's affinity key (``X-Session-ID`` header or the
                body's ``user``), if any; only the session policy uses it.
            exclude: Backend keys not to choose (those a retry already tried).
            rng: Randomness source (seed it in tests).
            request: The request itself (its prompt, read lazily), for policies that
                route by content; a policy may annotate its decision there. The
                data plane passes the same object to every attempt of one request.

        Returns:
            A backend not in ``exclude``, or ``None`` when there is none (no
            candidates, or all excluded: a retry has no second backend).
        """
        raise NotImplementedError

    def default_reason(self, request: RoutingRequest) -> str:
        """The reason recorded for a pick that did not annotate ``request``."""
        return self.reason

    def finished(self, request: RoutingRequest) -> None:
        """``request`` ended (any outcome); its usage, if the engine reported one, is set.
        Called once per request by the ledger; policies that learn from outcomes
        override it."""


def get_policy(name: str) -> type[RoutingPolicy]:
    """The policy class registered as ``name``.

    Raises:
        UnknownPolicyError: No policy has that name (the message lists the known ones).
    """
    try:
        return RoutingPolicy._registry[name]
    except KeyError:
        known = ", ".join(policy_names())
        raise UnknownPolicyError(f"unknown routing policy {name!r}; known: {known}") from None


def policy_names() -> list[str]:
    """Sorted names of the registered policies."""
    return sorted(RoutingPolicy._registry)


class LeastLoadPolicy(RoutingPolicy, name="least_load"):
    """Power of two choices on ``score = in_flight + waiting``.

    ``in_flight`` is the gateway's own count (exact, instant); ``waiting`` is the
    engine's reported queue from the routing table (seconds old), which adds load
    sent by other gateways. ``running`` is deliberately left out: for this gateway's
    requests it duplicates ``in_flight``, and a fresher signal wins (performance.md
    §8). Two distinct candidates are sampled; the lower score wins; a tie goes to
    either at random (the sampled pair is already in random order).
    """

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
            return candidates[0] if n else None
        # rng.random() is several times cheaper than randrange() on this path.
        i = int(rng.random() * n)
        j = int(rng.random() * (n - 1))
        if j >= i:
            j += 1
        a = candidates[i]
        b = candidates[j]
        return b if b.in_flight + b.waiting < a.in_flight + a.waiting else a


class RoundRobinPolicy(RoutingPolicy, name="round_robin"):
    """Each model's candidates in turn (one cursor per model)."""

    __slots__ = ("_cursors",)
    reason = "round_robin"

    def __init__(self) -> None:
        self._cursors: dict[str, int] = {}

    def select(
        self,
        candidates: Sequence[BackendState],
        *,
        session_key: str | None = None,
        exclude: Collection[str] = (),
        rng: random.Random,
        request: RoutingRequest | None = None,
    ) -> BackendState | None:
        n = len(candidates)
        if n == 0:
            return None
        model = candidates[0].backend.model
        start = self._cursors.get(model, 0)
        for step in range(n):
            b = candidates[(start + step) % n]
            if not exclude or b.key not in exclude:
                self._cursors[model] = (start + step + 1) % n
                return b
        return None


class SessionAffinityPolicy(RoutingPolicy, name="session"):
    """Rendezvous (HRW) hashing of the session key over backend ids, with bounded load.

    Each backend's weight for a key is a stable hash of (key, backend id); the highest
    weight wins, so a key stays on its backend while that backend is a candidate, and
    adding or removing one of N backends moves only ~1/N of the keys. To keep one hot
    session from overloading a backend, a backend whose ``in_flight`` exceeds
    ``ceil(load_factor * average in_flight + 1)`` (average over the candidates not
    excluded; the ``+ 1`` keeps affinity at low load) is passed over for the next one in HRW order.
    Without a session key the request goes to :class:`LeastLoadPolicy`.

    The weight of backend ``i`` for a key is ``(a_i * crc32(key) + b_i) mod (2**61 - 1)``
    with ``(a_i, b_i)`` drawn from a blake2b digest of the backend id: a 2-universal
    family, so winners are balanced across backends, and stable, so every gateway
    process agrees on every key.

    Args:
        load_factor: ``c`` in the bound above (>= 1; 1.25 by default).
        max_cached_keys: Session keys whose HRW winner is remembered (per current
            candidate list); the cache is cleared when it reaches this size.
    """

    __slots__ = ("_fallback", "_top", "load_factor", "max_cached_keys")

    def __init__(self, *, load_factor: float = 1.25, max_cached_keys: int = 65_536) -> None:
        if load_factor < 1.0:
            raise ValueError("load_factor must be >= 1")
        self.load_factor = load_factor
        self.max_cached_keys = max_cached_keys
        self._fallback = LeastLoadPolicy()
        # session key -> (the candidates tuple it was computed for, HRW winner). The
        # routing state hands out the same immutable tuple until the table or an
        # ejection changes it, so an identity check is an exact invalidation; it turns
        # the O(backends) hashing into one dict lookup for a returning session. Lists
        # (mutable) are never cached.
        self._top: dict[str, tuple[Sequence[BackendState], BackendState]] = {}

    def select(
        self,
        candidates: Sequence[BackendState],
        *,
        session_key: str | None = None,
        exclude: Collection[str] = (),
        rng: random.Random,
        request: RoutingRequest | None = None,
    ) -> BackendState | None:
        if session_key is None:
            return self._fallback.select(candidates, exclude=exclude, rng=rng)
        cacheable = not exclude and type(candidates) is tuple
        if cacheable:
            cached = self._top.get(session_key)
            if cached is not None and cached[0] is candidates:
                top = cached[1]
                # in_flight <= 1 is within any bound (the bound is at least 1).
                if top.in_flight <= 1:
                    return top
                total = sum([b.in_flight for b in candidates])
                if top.in_flight <= math.ceil(self.load_factor * total / len(candidates) + 1):
                    return top
        if exclude:
            candidates = [b for b in candidates if b.key not in exclude]
        n = len(candidates)
        if n == 0:
            return None
        key_hash = zlib.crc32(session_key.encode())
        # A list comprehension plus C-level max()/index() is ~2x faster than an
        # explicit argmax loop over 64 backends.
        weights = [(b.hrw_a * key_hash + b.hrw_b) % HRW_PRIME for b in candidates]
        best = candidates[weights.index(max(weights))]
        if cacheable:
            if len(self._top) >= self.max_cached_keys:
                self._top.clear()  # cheap bound; hot keys come back on their next pick
            self._top[session_key] = (candidates, best)
        if best.in_flight <= 1:
            return best
        bound = math.ceil(self.load_factor * sum([b.in_flight for b in candidates]) / n + 1)
        if best.in_flight <= bound:
            return best
        # Overloaded: the next backend in HRW order that is within the bound. The least
        # loaded candidate is always within it (min <= average), so this finds one.
        for i in sorted(range(n), key=weights.__getitem__, reverse=True):
            if candidates[i].in_flight <= bound:
                return candidates[i]
        return best

    def default_reason(self, request: RoutingRequest) -> str:
        return "affinity" if request.session_key is not None else "load"
