"""``/tokenize``, ``/detokenize`` and ``/v1/audio/transcriptions``.

Tokenization is answered at once, outside the scheduler, as vLLM's API server
answers it without the engine. A transcription is one engine request
(:meth:`._server.Simulator.answer_once`) whose prefill is one token per word heard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from sage.unified.agent.simulator._audio import parse_transcription, transcript
from sage.unified.agent.simulator._connection import Connection, Outcome, Request
from sage.unified.agent.simulator._errors import BadRequestError
from sage.unified.agent.simulator._http import CONTENT_TEXT, response
from sage.unified.agent.simulator._pooling_bodies import tokenize_body
from sage.unified.agent.simulator._requests_pooling import parse_detokenize, parse_tokenize
from sage.unified.agent.simulator._tokenizer import UnknownTokenError, split_pieces

if TYPE_CHECKING:
    from sage.unified.agent.simulator._server import Simulator

__all__ = ["detokenize", "tokenize", "transcriptions"]


def tokenize(sim: Simulator, conn: Connection, req: Request) -> Outcome:
    """``POST /tokenize``: the ids the engine's prefix cache hashes."""
    parsed = parse_tokenize(req.payload())
    sim.check_model(parsed.model)
    pieces = split_pieces(parsed.text)
    max_len = sim.config.max_model_len
    if len(pieces) > max_len:
        raise BadRequestError(
            f"This model's maximum context length is {max_len} tokens. However, your "
            f"request has {len(pieces)} input tokens. Please reduce the length of the input.",
            param="max_model_len",
        )
    ids = sim.tokenizer.encode_pieces(pieces)
    body = tokenize_body(ids, max_len, pieces if parsed.return_token_strs else None)
    return response(200, body, keep_alive=req.keep_alive)


def detokenize(sim: Simulator, conn: Connection, req: Request) -> Outcome:
    """``POST /detokenize``."""
    model, tokens = parse_detokenize(req.payload())
    sim.check_model(model)
    try:
        text = sim.tokenizer.decode(tokens)
    except UnknownTokenError as exc:
        raise BadRequestError(str(exc), param="tokens") from None
    return response(200, msgspec.json.encode({"prompt": text}), keep_alive=req.keep_alive)


def transcriptions(sim: Simulator, conn: Connection, req: Request) -> Outcome:
    """``POST /v1/audio/transcriptions`` (multipart form, ``json`` or ``text`` answer)."""
    sim.count_inference(req)
    parsed = parse_transcription(req.content_type, req.payload())
    sim.check_model(parsed.model)
    hang = sim.inject()
    sim.request_id(req)
    text, seconds = transcript(
        parsed.audio, seed=sim.config.seed, max_words=sim.settings.output_tokens
    )
    if parsed.response_format == "text":
        return sim.answer_once(
            conn,
            req,
            text.encode,
            prompt_tokens=len(split_pieces(text)),
            hang=hang,
            content_type=CONTENT_TEXT,
        )
    body = msgspec.json.encode({"text": text, "usage": {"type": "duration", "seconds": seconds}})
    return sim.answer_once(
        conn, req, lambda: body, prompt_tokens=len(split_pieces(text)), hang=hang
    )
