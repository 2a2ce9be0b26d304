"""Generation endpoints: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``.

A request is planned up front (:mod:`._planning`), admitted with the KV blocks of
its sequences (:class:`._engine.Scheduler`), then answered after its time to first
token, ``(queue wait) + (prefill of its uncached prompt tokens) + --ttft-ms``, one
token per ``--itl-ms``. When nothing has to wait it is answered synchronously.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from sage.unified.agent.simulator._connection import Connection, Outcome, Request
from sage.unified.agent.simulator._engine import sleep_until
from sage.unified.agent.simulator._errors import BadRequestError, NotFoundError
from sage.unified.agent.simulator._http import CHUNKED_END, chunk, response, stream_head
from sage.unified.agent.simulator._kvcache import SequenceBlocks
from sage.unified.agent.simulator._planning import GenerationPlan, Usage, plan_generation
from sage.unified.agent.simulator._requests import (
    GenerationRequest,
    parse_chat,
    parse_completion,
    parse_responses,
)
from sage.unified.agent.simulator._responses import CompletionsFormat, OutputFormat
from sage.unified.agent.simulator._responses_api import ResponsesFormat

if TYPE_CHECKING:
    from sage.unified.agent.simulator._server import Simulator

__all__ = ["chat", "completions", "responses"]


def chat(sim: Simulator, conn: Connection, req: Request) -> Outcome:
    """``POST /v1/chat/completions``."""
    sim.count_inference(req)
    return _generate(sim, conn, req, parse_chat(req.payload()), "chat")


def completions(sim: Simulator, conn: Connection, req: Request) -> Outcome:
    """``POST /v1/completions``."""
    sim.count_inference(req)
    return _generate(sim, conn, req, parse_completion(req.payload()), "completions")


def responses(sim: Simulator, conn: Connection, req: Request) -> Outcome:
    """``POST /v1/responses`` (stateless: a ``previous_response_id`` is never found)."""
    sim.count_inference(req)
    parsed = parse_responses(req.payload())
    if parsed.previous_response_id is not None:
        raise NotFoundError(
            f"Response with id '{parsed.previous_response_id}' not found.",
            param="previous_response_id",
        )
    return _generate(sim, conn, req, parsed, "responses")


def _frame(data: bytes) -> bytes:
    # An empty chunk would end the chunked body.
    return chunk(data) if data else b""


def _format(
    sim: Simulator, api: str, rid: str, parsed: GenerationRequest, plan: GenerationPlan
) -> OutputFormat:
    created = int(time.time())
    if api == "responses":
        return ResponsesFormat(
            rid="resp_" + rid,
            created=created,
            model=sim.served,
            plan=plan,
            max_output_tokens=parsed.max_tokens,
        )
    return CompletionsFormat(
        chat=api == "chat",
        rid=("chatcmpl-" if api == "chat" else "cmpl-") + rid,
        created=created,
        model=sim.served,
        plan=plan,
        include_usage=parsed.include_usage,
        prompt_details=sim.config.enable_prompt_tokens_details,
    )


def _generate(
    sim: Simulator, conn: Connection, req: Request, parsed: GenerationRequest, api: str
) -> Outcome:
    sim.check_model(parsed.model)
    hang = sim.inject()
    settings = sim.settings
    plan = plan_generation(
        parsed,
        sim.tokenizer,
        natural_tokens=settings.output_tokens,
        max_model_len=sim.config.max_model_len,
        seed=sim.config.seed,
    )
    needs = plan.kv_needs()
    # One sequence always fits: the cache holds max_model_len tokens (checked at start).
    if len(plan.choices) > 1 and not sim.scheduler.fits_ever(needs):
        raise BadRequestError(
            f"The request needs more KV cache blocks than the engine has "
            f"({sim.cache.num_blocks} of {sim.cache.block_size} tokens)."
        )
    rid = sim.request_id(req)
    fmt = _format(sim, api, rid.decode("latin-1"), parsed, plan)
    if not hang and settings.instant:
        seqs = sim.scheduler.try_admit(needs)
        if seqs is not None:
            sim.publish_events()
            return _answer_now(sim, req, parsed, plan, fmt, seqs)
    return _answer_later(sim, conn, req, parsed, plan, fmt, hang)


def _usage(plan: GenerationPlan, seqs: list[SequenceBlocks]) -> Usage:
    cached = seqs[0].cached_tokens if len(seqs) == 1 else sum(s.cached_tokens for s in seqs)
    return Usage(plan.prompt_tokens, plan.completion_tokens, cached)


def _answer_now(
    sim: Simulator,
    req: Request,
    parsed: GenerationRequest,
    plan: GenerationPlan,
    fmt: OutputFormat,
    seqs: list[SequenceBlocks],
) -> bytes:
    rid = req.request_id or b""
    try:
        usage = _usage(plan, seqs)
        if parsed.stream:
            events = [fmt.head(), *(fmt.step(i) for i in range(plan.steps)), fmt.tail(usage)]
            out = (
                stream_head(request_id=rid, keep_alive=req.keep_alive)
                + _frame(b"".join(events))
                + CHUNKED_END
            )
        else:
            out = response(200, fmt.body(usage), request_id=rid, keep_alive=req.keep_alive)
    finally:
        sim.finish(seqs, plan.sequence_tokens(plan.steps))
    sim.metrics.record_finished(
        prompt_tokens=plan.prompt_tokens,
        generation_tokens=plan.completion_tokens,
        reason=plan.finish_reason,
        ttft_s=0.0,
        e2e_s=0.0,
    )
    return out


async def _answer_later(
    sim: Simulator,
    conn: Connection,
    req: Request,
    parsed: GenerationRequest,
    plan: GenerationPlan,
    fmt: OutputFormat,
    hang: bool,
) -> None:
    start = time.monotonic()
    rid = req.request_id or b""
    head_sent = False
    steps_done = 0
    settings = sim.settings
    try:
        seqs = await sim.scheduler.admit(plan.kv_needs())
        sim.publish_events()
        try:
            if hang:
                await asyncio.get_running_loop().create_future()
            usage = _usage(plan, seqs)
            uncached = plan.prompt_tokens - usage.cached_tokens
            done = sim.prefill.schedule(time.monotonic(), uncached, settings.prefill_tokens_per_s)
            first = done + settings.ttft_ms / 1000.0
            itl = settings.itl_ms / 1000.0
            if not parsed.stream:
                await sleep_until(first + itl * (plan.steps - 1))
                steps_done = plan.steps
                conn.write(
                    response(200, fmt.body(usage), request_id=rid, keep_alive=req.keep_alive)
                )
            else:
                await sleep_until(first)
                head = stream_head(request_id=rid, keep_alive=req.keep_alive)
                head_sent = True
                steps_done = 1
                conn.write(head + _frame(fmt.head() + fmt.step(0)))
                for step in range(1, plan.steps):
                    # Relative pacing: a late loop never bursts tokens to catch up.
                    if itl > 0:
                        await asyncio.sleep(itl)
                    steps_done = step + 1
                    conn.write(_frame(fmt.step(step)))
                conn.write(_frame(fmt.tail(usage)) + CHUNKED_END)
        finally:
            sim.finish(seqs, plan.sequence_tokens(steps_done))
    except asyncio.CancelledError:
        sim.aborted(conn, rid, head_sent=head_sent)
        raise
    sim.metrics.record_finished(
        prompt_tokens=plan.prompt_tokens,
        generation_tokens=plan.completion_tokens,
        reason=plan.finish_reason,
        ttft_s=first - start,
        e2e_s=time.monotonic() - start,
    )
