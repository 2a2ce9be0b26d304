"""Answers of the pooling, scoring and tokenizer endpoints, shaped like vLLM's (pure).

The numbers are deterministic:

* embeddings (and ``/pooling`` on an embedding engine): the unit vector of
  :func:`._text.embed`;
* ``/classify`` (and ``/pooling`` on a classifier): two classes ``LABEL_0`` /
  ``LABEL_1`` whose probabilities come from a hash of the text;
* ``/score`` and ``/rerank`` on an embedding engine: the cosine of the two texts'
  embeddings, as vLLM scores with a bi-encoder; on a ``rerank`` engine (a
  cross-encoder): word overlap, ``(shared words + 0.5) / (query words + 1)``, in
  (0, 1), so documents that share the query's words rank first.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import msgspec

from sage.unified.agent.simulator._requests_pooling import PoolingInput
from sage.unified.agent.simulator._text import embed, embedding_base64

__all__ = [
    "CLASS_LABELS",
    "class_probs",
    "classify_body",
    "embedding_body",
    "pooling_body",
    "relevance",
    "rerank_body",
    "score_body",
    "tokenize_body",
]

_enc = msgspec.json.encode
CLASS_LABELS: tuple[str, ...] = ("LABEL_0", "LABEL_1")


def _usage(prompt_tokens: int) -> dict[str, object]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


def class_probs(text: str) -> list[float]:
    """Deterministic probabilities of :data:`CLASS_LABELS` for ``text`` (sum 1)."""
    logit = (zlib.crc32(text.encode("utf-8", "surrogatepass")) % 2001 - 1000) / 250.0
    first = 1.0 / (1.0 + math.exp(logit))
    return [first, 1.0 - first]


def relevance(query: str, document: str, *, cross_encoder: bool, dim: int) -> float:
    """The score of a (query, document) pair (module docstring)."""
    if not cross_encoder:
        return math.fsum(
            a * b for a, b in zip(embed(query, dim), embed(document, dim), strict=True)
        )
    words = set(query.lower().split())
    shared = len(words & set(document.lower().split()))
    return (shared + 0.5) / (len(words) + 1)


def embedding_body(
    rid: str, created: int, model: str, req: PoolingInput, dim: int, prompt_tokens: int
) -> bytes:
    """An embeddings ``list`` response with one unit vector per input."""
    data: list[dict[str, object]] = []
    for i, text in enumerate(req.texts):
        vector = embed(text, dim)
        data.append(
            {
                "index": i,
                "object": "embedding",
                "embedding": embedding_base64(vector) if req.base64 else vector,
            }
        )
    return _enc(
        {
            "id": rid,
            "object": "list",
            "created": created,
            "model": model,
            "data": data,
            "usage": _usage(prompt_tokens),
        }
    )


def pooling_body(
    rid: str,
    created: int,
    model: str,
    req: PoolingInput,
    prompt_tokens: int,
    *,
    classifier: bool,
    dim: int,
) -> bytes:
    """A ``/pooling`` response: embeddings, or class probabilities on a classifier."""
    data = [
        {
            "index": i,
            "object": "pooling",
            "data": class_probs(text) if classifier else list(embed(text, dim)),
        }
        for i, text in enumerate(req.texts)
    ]
    return _enc(
        {
            "id": rid,
            "object": "list",
            "created": created,
            "model": model,
            "data": data,
            "usage": _usage(prompt_tokens),
        }
    )


def classify_body(
    rid: str, created: int, model: str, req: PoolingInput, prompt_tokens: int
) -> bytes:
    """A ``/classify`` response: label, probabilities and class count per input."""
    data: list[dict[str, object]] = []
    for i, text in enumerate(req.texts):
        probs = class_probs(text)
        data.append(
            {
                "index": i,
                "label": CLASS_LABELS[probs.index(max(probs))],
                "probs": probs,
                "num_classes": len(probs),
            }
        )
    return _enc(
        {
            "id": rid,
            "object": "list",
            "created": created,
            "model": model,
            "data": data,
            "usage": _usage(prompt_tokens),
        }
    )


def score_body(
    rid: str, created: int, model: str, scores: Sequence[float], prompt_tokens: int
) -> bytes:
    """A ``/score`` response: one ``score`` object per pair, in request order."""
    return _enc(
        {
            "id": rid,
            "object": "list",
            "created": created,
            "model": model,
            "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
            "usage": _usage(prompt_tokens),
        }
    )


def rerank_body(
    rid: str,
    model: str,
    documents: Sequence[str],
    scores: Sequence[float],
    top_n: int,
    prompt_tokens: int,
) -> bytes:
    """A ``/rerank`` response: results by falling relevance, the first ``top_n`` (0: all)."""
    order = sorted(range(len(documents)), key=lambda i: scores[i], reverse=True)
    if top_n:
        order = order[:top_n]
    return _enc(
        {
            "id": rid,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            "results": [
                {
                    "index": i,
                    "document": {"text": documents[i], "multi_modal": None},
                    "relevance_score": scores[i],
                }
                for i in order
            ],
        }
    )


def tokenize_body(tokens: Sequence[int], max_model_len: int, token_strs: list[str] | None) -> bytes:
    """A ``/tokenize`` response."""
    return _enc(
        {
            "count": len(tokens),
            "max_model_len": max_model_len,
            "tokens": list(tokens),
            "token_strs": token_strs,
        }
    )
