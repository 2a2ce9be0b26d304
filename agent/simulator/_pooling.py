"""Pooling endpoints: embeddings, ``/pooling``, ``/classify``, ``/score``, ``/rerank``.

Each is one forward pass over its inputs: a running slot, the prefill of all its
tokens (pooling models keep no prefix cache here) and ``--ttft-ms``, then the answer
(:meth:`._server.Simulator.answer_once`). What the numbers mean is in
:mod:`._pooling_bodies`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sage.unified.agent.simulator._connection import Connection, Outcome, Request
from sage.unified.agent.simulator._pooling_bodies import (
    classify_body,
    embedding_body,
    pooling_body,
    relevance,
    rerank_body,
    score_body,
)
from sage.unified.agent.simulator._requests_pooling import (
    PoolingInput,
    parse_pooling,
    parse_rerank,
    parse_score,
)

if TYPE_CHECKING:
    from sage.unified.agent.simulator._server import Simulator

__all__ = ["classify", "embeddings", "pooling", "rerank", "score"]


def _tokens(sim: Simulator, parsed: PoolingInput) -> int:
    encode = sim.tokenizer.encode
    return sum(
        len(ids) if ids is not None else len(encode(text))
        for text, ids in zip(parsed.texts, parsed.ids, strict=True)
    )


def _rid(sim: Simulator, req: Request, prefix: str) -> str:
    return prefix + sim.request_id(req).decode("latin-1")


def embeddings(sim: Simulator, conn: Connection, req: Request) -> Outcome:
    """``POST /v1/embeddings``."""
    sim.count_inference(req)
    parsed = parse_pooling(req.payload())
    sim.check_model(parsed.model)
    hang = sim.inject()
    rid = _rid(sim, req, "embd-")
    tokens = _tokens(sim, parsed)
    dim = sim.config.embedding_dim

    def build() -> bytes:
        return embedding_body(rid, int(time.time()), sim.served, parsed, dim, tokens)

    return sim.answer_once(conn, req, build, prompt_tokens=tokens, hang=hang)


def pooling(sim: Simulator, conn: Connection, req: Request) -> Outcome:
    """``POST /pooling``: embeddings, or class probabilities on a classifier."""
    sim.count_inference(req)
    parsed = parse_pooling(req.payload())
    sim.check_model(parsed.model)
    hang = sim.inject()
    rid = _rid(sim, req, "pool-")
    tokens = _tokens(sim, parsed)
    classifier = sim.config.kind in ("classify", "rerank")
    dim = sim.config.embedding_dim

    def build() -> bytes:
        return pooling_body(
            rid, int(time.time()), sim.served, parsed, tokens, classifier=classifier, dim=dim
        )

    return sim.answer_once(conn, req, build, prompt_tokens=tokens, hang=hang)


def classify(sim: Simulator, conn: Connection, req: Request) -> Outcome:
    """``POST /classify``."""
    sim.count_inference(req)
    parsed = parse_pooling(req.payload())
    sim.check_model(parsed.model)
    hang = sim.inject()
    rid = _rid(sim, req, "classify-")
    tokens = _tokens(sim, parsed)

    def build() -> bytes:
        return classify_body(rid, int(time.time()), sim.served, parsed, tokens)

    return sim.answer_once(conn, req, build, prompt_tokens=tokens, hang=hang)


def score(sim: Simulator, conn: Connection, req: Request) -> Outcome:
    """``POST /score`` and ``/v1/score``: one score per pair."""
    sim.count_inference(req)
    parsed = parse_score(req.payload())
    sim.check_model(parsed.model)
    hang = sim.inject()
    rid = _rid(sim, req, "score-")
    encode = sim.tokenizer.encode
    tokens = sum(len(encode(a)) + len(encode(b)) for a, b in parsed.pairs)
    cross = sim.config.kind == "rerank"
    dim = sim.config.embedding_dim

    def build() -> bytes:
        scores = [relevance(a, b, cross_encoder=cross, dim=dim) for a, b in parsed.pairs]
        return score_body(rid, int(time.time()), sim.served, scores, tokens)

    return sim.answer_once(conn, req, build, prompt_tokens=tokens, hang=hang)


def rerank(sim: Simulator, conn: Connection, req: Request) -> Outcome:
    """``POST /rerank``, ``/v1/rerank`` and ``/v2/rerank``."""
    sim.count_inference(req)
    parsed = parse_rerank(req.payload())
    sim.check_model(parsed.model)
    hang = sim.inject()
    rid = _rid(sim, req, "rerank-")
    encode = sim.tokenizer.encode
    query_tokens = len(encode(parsed.query))
    tokens = sum(query_tokens + len(encode(d)) for d in parsed.documents)
    cross = sim.config.kind == "rerank"
    dim = sim.config.embedding_dim

    def build() -> bytes:
        scores = [
            relevance(parsed.query, d, cross_encoder=cross, dim=dim) for d in parsed.documents
        ]
        return rerank_body(rid, sim.served, parsed.documents, scores, parsed.top_n, tokens)

    return sim.answer_once(conn, req, build, prompt_tokens=tokens, hang=hang)
