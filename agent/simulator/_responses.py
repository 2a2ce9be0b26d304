"""Response bodies shaped like vLLM's OpenAI server (pure: bytes in, bytes out).

Streaming chunks are built from per-request byte templates: the JSON around the
token is encoded once per request, each chunk only encodes its token.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from sage.unified.agent.simulator._errors import RequestError
from sage.unified.agent.simulator._requests import GenerationRequest, ParsedEmbedding
from sage.unified.agent.simulator._text import embed, embedding_base64, generate_tokens, prompt_key

__all__ = [
    "DONE_EVENT",
    "GenerationPlan",
    "StreamTemplates",
    "chat_body",
    "completion_body",
    "embedding_body",
    "error_body",
    "error_event",
    "error_of",
    "models_body",
    "plan_generation",
]

_enc = msgspec.json.encode
DONE_EVENT = b"data: [DONE]\n\n"


def error_body(message: str, err_type: str, code: int, param: str | None = None) -> bytes:
    """vLLM's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return _enc({"error": {"message": message, "type": err_type, "param": param, "code": code}})


def error_of(exc: RequestError) -> bytes:
    """The body for a :class:`RequestError`."""
    return error_body(exc.message, exc.err_type, exc.status, exc.param)


def error_event(message: str, err_type: str, code: int) -> bytes:
    """An in-band SSE error event, as vLLM ends a failed stream (no ``[DONE]`` follows)."""
    return b"data: " + error_body(message, err_type, code) + b"\n\n"


def models_body(served_name: str, root: str, created: int, max_model_len: int) -> bytes:
    """``GET /v1/models`` in vLLM's shape."""
    return _enc(
        {
            "object": "list",
            "data": [
                {
                    "id": served_name,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": root,
                    "parent": None,
                    "max_model_len": max_model_len,
                    "permission": [
                        {
                            "id": f"modelperm-{served_name}",
                            "object": "model_permission",
                            "created": created,
                            "allow_create_engine": False,
                            "allow_sampling": True,
                            "allow_logprobs": True,
                            "allow_search_indices": False,
                            "allow_view": True,
                            "allow_fine_tuning": False,
                            "organization": "*",
                            "group": None,
                            "is_blocking": False,
                        }
                    ],
                }
            ],
        }
    )


@dataclass(frozen=True, slots=True)
class GenerationPlan:
    """What a generation request will produce.

    Attributes:
        choices: tokens per choice, in choice-index order (prompt-major, then ``n``).
        finish_reason: ``"length"`` when ``max_tokens`` cut the output, else ``"stop"``.
        completion_tokens: tokens over all choices (vLLM's usage sums them).
    """

    choices: tuple[tuple[str, ...], ...]
    finish_reason: str
    completion_tokens: int

    @property
    def steps(self) -> int:
        """Tokens per choice (all choices have the same length)."""
        return len(self.choices[0]) if self.choices else 0


def plan_generation(req: GenerationRequest, output_tokens: int, seed: int) -> GenerationPlan:
    """Decide the tokens of every choice: ``output_tokens`` lowered by ``max_tokens``.

    The output is a pure function of (prompt, choice index within the prompt, seed).
    """
    count = output_tokens
    reason = "stop"
    if req.max_tokens is not None and req.max_tokens < output_tokens:
        count = req.max_tokens
        reason = "length"
    choices = tuple(
        generate_tokens(prompt_key(prompt, seed + i), count)
        for prompt in req.prompts
        for i in range(req.n)
    )
    return GenerationPlan(choices, reason, count * len(choices))


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, object]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def chat_body(
    rid: str, created: int, model: str, plan: GenerationPlan, prompt_tokens: int
) -> bytes:
    """A non-streaming ``chat.completion`` object."""
    return _enc(
        {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": "".join(tokens),
                        "refusal": None,
                        "tool_calls": [],
                        "reasoning_content": None,
                    },
                    "logprobs": None,
                    "finish_reason": plan.finish_reason,
                    "stop_reason": None,
                }
                for i, tokens in enumerate(plan.choices)
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": _usage(prompt_tokens, plan.completion_tokens),
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }
    )


def completion_body(
    rid: str, created: int, model: str, plan: GenerationPlan, prompt_tokens: int
) -> bytes:
    """A non-streaming ``text_completion`` object."""
    return _enc(
        {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": i,
                    "text": "".join(tokens),
                    "logprobs": None,
                    "finish_reason": plan.finish_reason,
                    "stop_reason": None,
                    "prompt_logprobs": None,
                }
                for i, tokens in enumerate(plan.choices)
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": _usage(prompt_tokens, plan.completion_tokens),
            "kv_transfer_params": None,
        }
    )


class StreamTemplates:
    """Per-request byte templates for SSE chunks of a chat or completion stream."""

    __slots__ = ("_chat", "_created", "_head", "_model", "_rid")

    def __init__(self, *, chat: bool, rid: str, created: int, model: str) -> None:
        self._chat = chat
        self._rid = rid
        self._created = created
        self._model = model
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._head = (
            b'data: {"id":'
            + _enc(rid)
            + b',"object":"'
            + obj.encode()
            + b'","created":%d,"model":' % created
            + _enc(model)
            + b',"choices":[{"index":'
        )

    def role(self, index: int) -> bytes:
        """The chat stream's first chunk of a choice: ``delta`` with the role only."""
        return (
            self._head
            + b'%d,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
            % index
        )

    def token(self, index: int, token: str, finish_reason: str | None) -> bytes:
        """One generated token of choice ``index``; the last one carries the finish reason."""
        fr = b"null" if finish_reason is None else b'"' + finish_reason.encode() + b'"'
        if self._chat:
            return (
                self._head
                + b'%d,"delta":{"content":%b},"logprobs":null,"finish_reason":%b,"stop_reason":null}]}\n\n'
                % (index, _enc(token), fr)
            )
        return (
            self._head
            + b'%d,"text":%b,"logprobs":null,"finish_reason":%b,"stop_reason":null}]}\n\n'
            % (index, _enc(token), fr)
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The final usage chunk (``stream_options.include_usage``): no choices."""
        return (
            b"data: "
            + _enc(
                {
                    "id": self._rid,
                    "object": "chat.completion.chunk" if self._chat else "text_completion",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": _usage(prompt_tokens, completion_tokens),
                }
            )
            + b"\n\n"
        )


def embedding_body(rid: str, created: int, model: str, req: ParsedEmbedding, dim: int) -> bytes:
    """An embeddings ``list`` response with one unit vector per input."""
    data: list[dict[str, object]] = []
    for i, text in enumerate(req.inputs):
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
            "usage": {
                "prompt_tokens": req.prompt_tokens,
                "total_tokens": req.prompt_tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }
    )
