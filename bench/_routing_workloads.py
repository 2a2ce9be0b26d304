"""Workloads of ``bench/routing_quality.py``: what is sent, when, and the reuse ceiling.

Three workloads, each with the engine fleet it runs on (KV cache size, prefill rate):

* ``trace``: a Mooncake-format trace (``shared/traces/README.md``) as ``/v1/completions``
  prompts. Each 512-token block id becomes ``block_tokens`` fixed words (the same id,
  the same text), a prompt is its blocks cut to its scaled length, arrival times are
  divided by ``speedup``, answers are ``output_length * out_scale`` tokens. By default
  the last 1,000 requests replay: the trace's reuse is local in time, so a cold fleet
  sees the same ceiling there as the whole trace (~68 %).
* ``shared``: groups of conversations sharing a long system prompt (one per group, the
  groups' popularity Zipf-distributed, so one prefix is hot), each conversation a few
  turns that grow (the next turn carries the previous answer), over chat, with the
  conversation id as ``user`` (the session key).
* ``unique``: one-turn chats whose prompts share nothing (every prompt starts with its
  own word), at a load where least_load is busy: cache-aware routing must not lose here.

The ceiling is what one infinite cache shared by all engines would have hit: every
request actually sent, in sending order, through the simulator's own prefix cache
(same tokenizer, block size and hit rule) with no eviction.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from sage.unified.agent.simulator._kvcache import PrefixCache
from sage.unified.agent.simulator._tokenizer import piece_id, render_chat, split_pieces
from sage.unified.gateway.routing import find_usage
from sage.unified.gateway.upstream import UpstreamError, UpstreamPool

__all__ = [
    "Client",
    "Fleet",
    "Outcome",
    "SharedPrefixWorkload",
    "TraceWorkload",
    "UniqueWorkload",
    "ceiling",
]


@dataclass(frozen=True)
class Fleet:
    """The simulated engines' flags for one workload."""

    kv_blocks: int
    block_size: int
    prefill_tokens_per_s: float
    itl_ms: float
    max_model_len: int
    ttft_ms: float = 5.0

    def flags(self) -> list[str]:
        return [
            "--kv-blocks", str(self.kv_blocks),
            "--block-size", str(self.block_size),
            "--prefill-tokens-per-s", str(self.prefill_tokens_per_s),
            "--itl-ms", str(self.itl_ms),
            "--ttft-ms", str(self.ttft_ms),
            "--max-model-len", str(self.max_model_len),
        ]  # fmt: skip


@dataclass
class Outcome:
    """One request as the client saw it."""

    sent: float
    ttft: float | None
    done: float
    status: int
    engine: str
    prompt: str
    answer: str = ""
    prompt_tokens: int | None = None
    cached_tokens: int | None = None


class _Chunk(msgspec.Struct):
    choices: list[dict[str, object]] = field(default_factory=list)


_chunk = msgspec.json.Decoder(_Chunk)


def _content(body: bytes) -> str:
    parts: list[str] = []
    for event in body.split(b"\n\n"):
        if not event.startswith(b"data: {"):
            continue
        for choice in _chunk.decode(event[6:]).choices:
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str):
                parts.append(text)
    return "".join(parts)


class Client:
    """Streams requests to the gateway and times them (the gateway's own lean client)."""

    def __init__(self, port: int) -> None:
        self._origin = ("http", "127.0.0.1", port)
        self._pool = UpstreamPool(
            max_connections_per_origin=2048, first_byte_timeout_s=120, read_idle_timeout_s=120
        )
        self.headers = [(b"content-type", b"application/json")]

    async def post(
        self, path: bytes, body: dict[str, object], prompt: str, *, text: bool
    ) -> Outcome:
        payload = json.dumps(body).encode()
        sent = time.monotonic()
        first: float | None = None
        parts: list[bytes] = []
        engine = "?"
        status = 0
        try:
            response = await self._pool.request(b"POST", self._origin, path, self.headers, payload)
            status = response.status
            engine = dict(response.headers).get(b"x-sage-backend", b"?").decode()
            try:
                async for chunk in response:
                    if first is None:
                        first = time.monotonic()
                    parts.append(chunk)
            finally:
                response.close()
        except UpstreamError:
            status = status or 599
        data = b"".join(parts)
        usage = find_usage(data)
        outcome = Outcome(
            sent, None if first is None else first - sent, time.monotonic(), status, engine, prompt
        )
        if usage is not None:
            outcome.prompt_tokens, outcome.cached_tokens = usage
        if text and status == 200:
            outcome.answer = _content(data)
        return outcome

    async def aclose(self) -> None:
        await self._pool.aclose()


def _words(tag: str, count: int) -> str:
    """``count`` tokens of text (each word is one token of the simulator's tokenizer)."""
    return "".join(f" {tag}{i}" for i in range(count))


# -- the Mooncake trace -------------------------------------------------------------


class TraceWorkload:
    """A Mooncake-format trace over ``/v1/completions`` (module docstring)."""

    name = "trace"

    def __init__(
        self,
        path: Path,
        *,
        block_tokens: int = 16,
        speedup: float = 20.0,
        last: int | None = 1000,
        out_scale: float = 0.1,
        out_cap: int = 32,
    ) -> None:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        self.rows = rows[-last:] if last else rows
        self.path = path
        self.block_tokens = block_tokens
        self.speedup = speedup
        self.out_scale = out_scale
        self.out_cap = out_cap
        longest = max(len(r["hash_ids"]) for r in self.rows) * block_tokens + out_cap
        self.fleet = Fleet(
            kv_blocks=1500,
            block_size=block_tokens,
            prefill_tokens_per_s=8000,
            itl_ms=5,
            max_model_len=max(4096, 1 << (longest - 1).bit_length()),
        )

    def describe(self) -> str:
        span = (self.rows[-1]["timestamp"] - self.rows[0]["timestamp"]) / 1000
        return (
            f"{self.path.name}: last {len(self.rows)} requests, 512-token blocks -> "
            f"{self.block_tokens} tokens, time / {self.speedup:g} ({span:.0f} s -> "
            f"{span / self.speedup:.1f} s), output x {self.out_scale:g} (<= {self.out_cap})"
        )

    async def run(self, client: Client, model: str) -> list[Outcome]:
        start = time.monotonic()
        t0 = self.rows[0]["timestamp"]
        tasks: list[asyncio.Task[Outcome]] = []
        for row in self.rows:
            delay = start + (row["timestamp"] - t0) / 1000 / self.speedup - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tokens = max(1, round(row["input_length"] * self.block_tokens / 512))
            text = "".join(_words(f"b{h}w", self.block_tokens) for h in row["hash_ids"])
            prompt = text[: _cut(text, tokens)]
            out = max(1, min(self.out_cap, round(row["output_length"] * self.out_scale)))
            body = _body(model, prompt=prompt, max_tokens=out)
            tasks.append(
                asyncio.create_task(client.post(b"/v1/completions", body, prompt, text=False))
            )
        return list(await asyncio.gather(*tasks))


def _cut(text: str, tokens: int) -> int:
    """The length of ``text``'s first ``tokens`` words (each starts with a space)."""
    at = -1
    for _ in range(tokens):
        at = text.find(" ", at + 1)
        if at < 0:
            return len(text)
    nxt = text.find(" ", at + 1)
    return len(text) if nxt < 0 else nxt


def _body(model: str, **fields: object) -> dict[str, object]:
    return {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        **fields,
    }


# -- shared system prompts, growing conversations -----------------------------------------


@dataclass
class SharedPrefixWorkload:
    """Conversations in groups sharing a system prompt (module docstring)."""

    groups: int = 32
    system_tokens: tuple[int, int] = (256, 8192)
    """Each group's system prompt length, log-uniform in this range."""
    zipf: float = 1.0
    turns: tuple[int, int] = (2, 6)
    user_tokens: int = 64
    answer_tokens: int = 32
    think_s: float = 0.3
    conversations_per_s: float = 9.0
    burst: tuple[float, float, float] = (5.0, 0.1, 4.0)
    """Arrivals come in bursts: every ``period`` s, the first ``share`` of it at ``factor``
    times the mean rate, the rest slower (the mean is ``conversations_per_s``)."""
    duration_s: float = 12.0
    seed: int = 7
    name: str = "shared"
    fleet: Fleet = field(
        default_factory=lambda: Fleet(
            kv_blocks=2048, block_size=16, prefill_tokens_per_s=4000, itl_ms=10, max_model_len=16384
        )
    )

    def describe(self) -> str:
        low, high = self.system_tokens
        period, share, factor = self.burst
        return (
            f"{self.groups} system prompts of {low}-{high} tokens (Zipf {self.zipf:g}), "
            f"{self.conversations_per_s:g} conversations/s on average for {self.duration_s:g} s "
            f"(bursts: {share:.0%} of every {period:g} s at {factor:g}x), "
            f"{self.turns[0]}-{self.turns[1]} turns of {self.user_tokens} + {self.answer_tokens} "
            f"tokens, think {self.think_s:g} s"
        )

    def _rate(self, at: float) -> float:
        period, share, factor = self.burst
        if (at % period) < share * period:
            return self.conversations_per_s * factor
        return self.conversations_per_s * max(0.0, 1 - share * factor) / (1 - share)

    async def run(self, client: Client, model: str) -> list[Outcome]:
        rng = random.Random(self.seed)
        weights = [1.0 / (g + 1) ** self.zipf for g in range(self.groups)]
        low, high = self.system_tokens
        systems = [
            _words(f"s{g}w", round(low * (high / low) ** rng.random())) for g in range(self.groups)
        ]
        start = time.monotonic()
        at = 0.0
        tasks: list[asyncio.Task[list[Outcome]]] = []
        conversation = 0
        peak = self.conversations_per_s * self.burst[2]
        while at < self.duration_s:
            # A Poisson process of rate _rate(at), by thinning one of rate ``peak``.
            at += rng.expovariate(peak)
            if rng.random() * peak > self._rate(at):
                continue
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            group = rng.choices(range(self.groups), weights)[0]
            turns = rng.randint(*self.turns)
            think = [rng.expovariate(1 / self.think_s) for _ in range(turns)]
            tasks.append(
                asyncio.create_task(
                    self._conversation(client, model, conversation, systems[group], turns, think)
                )
            )
            conversation += 1
        return [o for outcomes in await asyncio.gather(*tasks) for o in outcomes]

    async def _conversation(
        self,
        client: Client,
        model: str,
        conversation: int,
        system: str,
        turns: int,
        think: list[float],
    ) -> list[Outcome]:
        messages: list[dict[str, str]] = [{"role": "system", "content": system}]
        outcomes: list[Outcome] = []
        for turn in range(turns):
            messages.append(
                {"role": "user", "content": _words(f"c{conversation}t{turn}w", self.user_tokens)}
            )
            prompt = _chat_prompt(messages)
            body = _body(
                model, messages=messages, max_tokens=self.answer_tokens, user=f"conv-{conversation}"
            )
            outcome = await client.post(b"/v1/chat/completions", body, prompt, text=True)
            outcomes.append(outcome)
            if outcome.status != 200:
                break
            messages.append({"role": "assistant", "content": outcome.answer})
            await asyncio.sleep(think[turn])
        return outcomes


def _chat_prompt(messages: list[dict[str, str]]) -> str:
    return render_chat(
        [(m["role"], m["content"]) for m in messages],
        add_generation_prompt=True,
        continue_final_message=False,
    )


# -- no sharing at all ----------------------------------------------------------------------


@dataclass
class UniqueWorkload:
    """One-turn chats that share no prefix (module docstring)."""

    prompt_tokens: tuple[int, int] = (600, 1400)
    answer_tokens: int = 32
    requests_per_s: float = 26.0
    duration_s: float = 12.0
    seed: int = 11
    name: str = "unique"
    fleet: Fleet = field(
        default_factory=lambda: Fleet(
            kv_blocks=1024, block_size=16, prefill_tokens_per_s=4000, itl_ms=10, max_model_len=4096
        )
    )

    def describe(self) -> str:
        low, high = self.prompt_tokens
        return (
            f"{self.requests_per_s:g} requests/s for {self.duration_s:g} s, prompts of "
            f"{low}-{high} tokens sharing nothing, {self.answer_tokens}-token answers"
        )

    async def run(self, client: Client, model: str) -> list[Outcome]:
        rng = random.Random(self.seed)
        start = time.monotonic()
        at = 0.0
        tasks: list[asyncio.Task[Outcome]] = []
        index = 0
        while at < self.duration_s:
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            messages = [
                {"role": "user", "content": _words(f"u{index}w", rng.randint(*self.prompt_tokens))}
            ]
            prompt = _chat_prompt(messages)
            body = _body(model, messages=messages, max_tokens=self.answer_tokens)
            tasks.append(
                asyncio.create_task(client.post(b"/v1/chat/completions", body, prompt, text=False))
            )
            index += 1
            at += rng.expovariate(self.requests_per_s)
        return list(await asyncio.gather(*tasks))


# -- the ceiling ---------------------------------------------------------------------------


def _ids(text: str) -> list[int]:
    return [piece_id(piece) for piece in split_pieces(text)]


def ceiling(outcomes: list[Outcome], block_size: int) -> float:
    """The token hit rate of one infinite cache shared by all engines (module docstring)."""
    sequences = [(_ids(o.prompt), _ids(o.answer)) for o in sorted(outcomes, key=lambda o: o.sent)]
    blocks = sum(len(p) + len(a) for p, a in sequences) // block_size + len(sequences) + 1
    cache = PrefixCache(blocks, block_size)
    for prompt, answer in sequences:
        seq = cache.admit(prompt, len(prompt) + len(answer))
        cache.release(seq, prompt + answer)
    return cache.hits / cache.queries if cache.queries else 0.0
