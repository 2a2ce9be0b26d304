"""Per-request cost of the gateway's routing core (pure Python, no I/O).

Prints microseconds per operation (best of several repeats, so a busy machine shows
its quiet moments rather than its noise):

- one pick per policy with 2, 8 and 64 backends per model: ``select()`` alone,
  ``candidates()`` plus ``select()``, and the full per-request sequence with
  ``acquire``/``record_success``/``release`` (the session policy cycles through 1,024
  returning session keys);
- ``peek_request`` on 1 KB, 2 KB and 100 KB chat bodies and on 12 KB and 32 KB
  tool-calling bodies (many brackets: the nesting check formats them), next to
  ``json.loads``;
- ``RoutingState.update`` with a 1,000-backend table (steady state: same backends);
- ``cache_aware``: one pick (the prompt's chunks hashed, matched and inserted) for chat
  bodies of 1 KB, 10 KB and 100 KB sharing a system prompt with earlier requests, with 8
  and 64 backends;
- the ledger's work per request, for every policy: the ``RoutingRequest``, finding the
  usage in a non-streamed answer and ``RoutingLedger.record``.

Run: ``.venv/bin/python bench/routing_overhead.py``
"""

from __future__ import annotations

import functools
import itertools
import json
import random
import time
from collections.abc import Callable, Iterator

from sage.unified.gateway.routing import (
    CacheAwarePolicy,
    LeastLoadPolicy,
    OutlierDetector,
    RoutingLedger,
    RoutingRequest,
    RoutingState,
    find_usage,
    get_policy,
    peek_request,
)
from sage.unified.sdk.models import Backend, EngineKind, EngineLoad, RoutingTable

REPEATS = 5


def best_us(fn: Callable[[], object], number: int) -> float:
    """Best of REPEATS runs of ``number`` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / number * 1e6


def make_table(models: int, per_model: int, revision: int = 1) -> RoutingTable:
    backends = [
        Backend(
            id=f"m{m}-e{i}",
            model=f"model-{m}",
            kind=EngineKind.LLM,
            url=f"http://10.0.{m % 250}.{i % 250}:{8900 + i % 99}",
            load=EngineLoad(running=i % 5, waiting=i % 3),
        )
        for m in range(models)
        for i in range(per_model)
    ]
    return RoutingTable(revision=revision, backends=backends)


def chat_body(size: int) -> bytes:
    base = {
        "model": "model-0",
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "alice",
        "temperature": 0.7,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": ""},
        ],
    }
    filler = size - len(json.dumps(base))
    base["messages"][1]["content"] = "lorem ipsum " * (max(filler, 0) // 12)  # type: ignore[index]
    return json.dumps(base).encode()


def tool_body(turns: int) -> bytes:
    """A tool-calling conversation: 20 tool schemas, ``turns`` calls and results."""
    prose = "The quick brown fox jumps over the lazy dog.\n" * 3
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "array", "items": {"type": "object"}},
                },
                "required": ["city"],
            },
        },
    }
    messages: list[dict[str, object]] = [{"role": "system", "content": prose * 10}]
    for turn in range(turns):
        arguments = json.dumps({"city": "Paris", "days": [{"d": 1}]})
        call = {"id": f"c{turn}", "type": "function", "function": {"arguments": arguments}}
        messages += [
            {"role": "user", "content": prose * 3},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{turn}", "content": '{"t": [1, 2], "s": "sun"}'},
        ]
    body = {"model": "model-0", "messages": messages, "tools": [tool] * 20}
    return json.dumps(body).encode()


def measure_policy(
    state: RoutingState, name: str, number: int, *, cold: bool = False
) -> tuple[float, float, float]:
    """(select, candidates + select, full request) in us for one policy.

    The session policy sees 1,024 returning sessions, or with ``cold`` a new key on
    every pick (its uncached path, as during an ejection); the others get no key.
    """
    detector = OutlierDetector(state)
    policy = get_policy(name)()
    rng = random.Random(0)
    keys: Iterator[str | None]
    if name != "session":
        keys = itertools.repeat(None)
    elif cold:
        keys = map(str, itertools.count())
    else:
        keys = itertools.cycle([f"session-{i}" for i in range(1024)])
    cands = state.candidates("model-1", EngineKind.LLM)

    def select_only() -> object:
        return policy.select(cands, session_key=next(keys), rng=rng)

    def cand_select() -> object:
        c = state.candidates("model-1", EngineKind.LLM, now=1.0)
        return policy.select(c, session_key=next(keys), rng=rng)

    def full() -> None:
        c = state.candidates("model-1", EngineKind.LLM, now=1.0)
        b = policy.select(c, session_key=next(keys), rng=rng)
        assert b is not None
        state.acquire(b)
        detector.record_success(b, 1.0)
        state.release(b)

    return best_us(select_only, number), best_us(cand_select, number), best_us(full, number)


def bench_picks() -> None:
    print("pick (us)                      select  cand+select  full request")
    for n in (2, 8, 64):
        state = RoutingState(make_table(models=4, per_model=n))
        for label, cold in (
            ("least_load", False),
            ("round_robin", False),
            ("session", False),
            ("session/new", True),
            ("cache_aware", False),
        ):
            name = label.split("/")[0]
            number = 20_000 if n < 64 else 5_000
            sel, cand_sel, full = measure_policy(state, name, number, cold=cold)
            print(f"  {label:<12} {n:>3} backends  {sel:6.2f}  {cand_sel:11.2f}  {full:12.2f}")


def bench_peek() -> None:
    print("peek (us)              peek_request   json.loads   speed-up")
    bodies = [(label, chat_body(size)) for label, size in (("1 KB", 1024), ("2 KB", 2048))]
    bodies += [("100 KB", chat_body(100 * 1024)), ("tools 4", tool_body(4))]
    bodies += [("tools 30", tool_body(30))]
    for label, body in bodies:
        number = 20_000 if len(body) < 10_000 else 1_000
        ours = best_us(functools.partial(peek_request, body), number)
        std = best_us(functools.partial(json.loads, body), number)
        print(f"  {label:<8} ({len(body):>6} B)  {ours:10.2f}  {std:11.2f}  {std / ours:8.1f}x")


def bench_update() -> None:
    table = make_table(models=100, per_model=10)
    table2 = make_table(models=100, per_model=10, revision=2)
    state = RoutingState(table)
    tables = iter([table, table2] * 1000)
    steady = best_us(lambda: state.update(next(tables)), 50)
    fresh = best_us(lambda: RoutingState(table), 20)
    print("RoutingState with 1,000 backends (100 models x 10)")
    print(f"  update (same backends, counters kept)  {steady:10.1f} us")
    print(f"  build from scratch                     {fresh:10.1f} us")


def shared_prompt_bodies(size: int, count: int) -> list[bytes]:
    """Chat bodies of about ``size`` bytes: a common system prompt, then a distinct question."""
    system = "You are a careful assistant. Answer briefly. " * max(1, size // 2 // 45)
    question = "tell me more about item # please " * max(1, size // 2 // 35)
    return [
        json.dumps(
            {
                "model": "model-1",
                "stream": True,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": question.replace("#", str(i))},
                ],
            }
        ).encode()
        for i in range(count)
    ]


def _pick(
    policy: CacheAwarePolicy,
    cands: tuple[object, ...],
    bodies: Iterator[bytes],
    rng: random.Random,
) -> None:
    request = RoutingRequest("model-1", b"/v1/chat/completions", next(bodies))
    policy.select(cands, rng=rng, request=request)  # type: ignore[arg-type]
    request.release()


def bench_cache_aware() -> None:
    print("cache_aware pick (us), warm index     8 backends  64 backends")
    for label, size in (("1 KB", 1024), ("10 KB", 10 * 1024), ("100 KB", 100 * 1024)):
        bodies = shared_prompt_bodies(size, 64)
        row = []
        for n in (8, 64):
            state = RoutingState(make_table(models=4, per_model=n))
            pick = functools.partial(
                _pick,
                CacheAwarePolicy(),
                state.candidates("model-1", EngineKind.LLM),
                itertools.cycle(bodies),
                random.Random(0),
            )
            for _ in range(200):
                pick()
            row.append(best_us(pick, 2_000 if size < 50_000 else 200))
        print(f"  {label:<8}                           {row[0]:10.2f}  {row[1]:11.2f}")


def bench_ledger() -> None:
    answer = json.dumps(
        {
            "id": "cmpl-1",
            "choices": [{"index": 0, "message": {"content": "y" * 180}}],
            "usage": {
                "prompt_tokens": 812,
                "total_tokens": 828,
                "completion_tokens": 16,
                "prompt_tokens_details": {"cached_tokens": 768},
            },
        }
    ).encode()
    body = chat_body(1024)
    ledger = RoutingLedger(LeastLoadPolicy())

    def per_request() -> None:
        request = RoutingRequest("model-0", b"/v1/chat/completions", body, None)
        request.first_byte(0.01)
        request.usage = find_usage(answer)
        ledger.record(request, "m0-e1", 200)

    print("ledger per request (us): RoutingRequest + find_usage + record")
    print(f"  any policy                       {best_us(per_request, 20_000):8.2f}")
    print(f"  find_usage alone                 {best_us(lambda: find_usage(answer), 20_000):8.2f}")


def main() -> None:
    bench_picks()
    bench_cache_aware()
    bench_ledger()
    bench_peek()
    bench_update()


if __name__ == "__main__":
    main()
