"""Response bodies of chat and completions, shaped like vLLM's (pure: bytes out).

An :class:`OutputFormat` turns a :class:`GenerationPlan` into a whole JSON body or
into SSE events step by step; the server frames them. Streaming chunks are built
from per-request byte templates: the JSON around the token is encoded once per
request, each chunk only encodes its token.

``usage.prompt_tokens_details`` is ``{"cached_tokens": N}`` only when the engine runs
with ``--enable-prompt-tokens-details`` and N > 0, as in vLLM; otherwise ``null``.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from sage.unified.agent.simulator._errors import RequestError
from sage.unified.agent.simulator._planning import GenerationPlan, Usage

__all__ = [
    "DONE_EVENT",
    "CompletionsFormat",
    "OutputFormat",
    "error_body",
    "error_event",
    "error_of",
    "models_body",
    "usage_object",
]

_enc = msgspec.json.encode
DONE_EVENT = b"data: [DONE]\n\n"


class OutputFormat(Protocol):
    """How one generation request's answer is written."""

    def body(self, usage: Usage) -> bytes:
        """The non-streaming JSON body."""

    def head(self) -> bytes:
        """SSE events before the first token (may be empty)."""

    def step(self, step: int) -> bytes:
        """SSE events of decoding step ``step`` (one token per choice)."""

    def tail(self, usage: Usage) -> bytes:
        """SSE events after the last token, through the end of the stream."""


def error_body(message: str, type_: str, code: int, param: str | None = None) -> bytes:
    """vLLM's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return _enc({"error": {"message": message, "type": type_, "param": param, "code": code}})


def error_of(exc: RequestError) -> bytes:
    """The body for a :class:`RequestError`."""
    return error_body(exc.message, exc.type, exc.status, exc.param)


def error_event(message: str, type_: str, code: int) -> bytes:
    """An in-band SSE error event, as vLLM ends a failed stream (no ``[DONE]`` follows)."""
    return b"data: " + error_body(message, type_, code) + b"\n\n"


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


def usage_object(usage: Usage, prompt_details: bool) -> dict[str, object]:
    """The ``usage`` object of chat, completions and pooling answers."""
    details = (
        {"cached_tokens": usage.cached_tokens} if prompt_details and usage.cached_tokens else None
    )
    return {
        "prompt_tokens": usage.prompt_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "completion_tokens": usage.completion_tokens,
        "prompt_tokens_details": details,
    }


class CompletionsFormat:
    """Chat (``chat.completion``) or completions (``text_completion``) answers.

    Args:
        chat: chat rather than completions.
        rid: the response id.
        created: the ``created`` timestamp.
        model: the served model name.
        plan: the planned tokens.
        include_usage: ``stream_options.include_usage``.
        prompt_details: ``--enable-prompt-tokens-details``.
    """

    __slots__ = (
        "_chat",
        "_created",
        "_details",
        "_head",
        "_include_usage",
        "_model",
        "_plan",
        "_rid",
    )

    def __init__(
        self,
        *,
        chat: bool,
        rid: str,
        created: int,
        model: str,
        plan: GenerationPlan,
        include_usage: bool,
        prompt_details: bool,
    ) -> None:
        self._chat = chat
        self._rid = rid
        self._created = created
        self._model = model
        self._plan = plan
        self._include_usage = include_usage
        self._details = prompt_details
        self._head = b""  # built on the first streamed chunk

    def _prefix(self) -> bytes:
        head = self._head
        if not head:
            obj = b"chat.completion.chunk" if self._chat else b"text_completion"
            head = self._head = (
                b'data: {"id":'
                + _enc(self._rid)
                + b',"object":"'
                + obj
                + b'","created":%d,"model":' % self._created
                + _enc(self._model)
                + b',"choices":[{"index":'
            )
        return head

    def body(self, usage: Usage) -> bytes:
        """A non-streaming ``chat.completion`` or ``text_completion`` object."""
        plan = self._plan
        choices: list[dict[str, object]]
        if self._chat:
            choices = [
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
            ]
        else:
            choices = [
                {
                    "index": i,
                    "text": "".join(tokens),
                    "logprobs": None,
                    "finish_reason": plan.finish_reason,
                    "stop_reason": None,
                    "prompt_logprobs": None,
                }
                for i, tokens in enumerate(plan.choices)
            ]
        body: dict[str, object] = {
            "id": self._rid,
            "object": "chat.completion" if self._chat else "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": None,
            "usage": usage_object(usage, self._details),
        }
        if self._chat:
            body["prompt_logprobs"] = None
        body["kv_transfer_params"] = None
        return _enc(body)

    def head(self) -> bytes:
        """Nothing: the chat role chunk goes with the first token."""
        return b""

    def step(self, step: int) -> bytes:
        """One token per choice; step 0 of a chat adds the role chunk first."""
        plan = self._plan
        fr = plan.finish_reason if step == plan.steps - 1 else None
        parts: list[bytes] = []
        for i, tokens in enumerate(plan.choices):
            if step == 0 and self._chat:
                parts.append(self.role(i))
            parts.append(self.token(i, tokens[step], fr))
        return b"".join(parts)

    def tail(self, usage: Usage) -> bytes:
        """The optional usage chunk, then ``[DONE]``."""
        if self._include_usage:
            return self.usage(usage) + DONE_EVENT
        return DONE_EVENT

    def role(self, index: int) -> bytes:
        """The chat stream's first chunk of a choice: ``delta`` with the role only."""
        return (
            self._prefix()
            + b'%d,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
            % index
        )

    def token(self, index: int, token: str, finish_reason: str | None) -> bytes:
        """One generated token of choice ``index``; the last one carries the finish reason."""
        fr = b"null" if finish_reason is None else b'"' + finish_reason.encode() + b'"'
        if self._chat:
            return (
                self._prefix()
                + b'%d,"delta":{"content":%b},"logprobs":null,"finish_reason":%b,"stop_reason":null}]}\n\n'
                % (index, _enc(token), fr)
            )
        return (
            self._prefix()
            + b'%d,"text":%b,"logprobs":null,"finish_reason":%b,"stop_reason":null}]}\n\n'
            % (index, _enc(token), fr)
        )

    def usage(self, usage: Usage) -> bytes:
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
                    "usage": usage_object(usage, self._details),
                }
            )
            + b"\n\n"
        )
