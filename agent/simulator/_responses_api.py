"""The OpenAI Responses API answer of ``/v1/responses`` (pure: bytes out).

Stateless, like vLLM without a store: one ``message`` output item holding one
``output_text`` part. A stream carries the Responses API's named SSE events
(``event: <type>`` then ``data: <json>``, every event with its ``sequence_number``):
``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, one ``response.output_text.delta`` per token,
``response.output_text.done``, ``response.content_part.done``,
``response.output_item.done`` and ``response.completed``. An answer cut by
``max_output_tokens`` has ``status "incomplete"`` and
``incomplete_details.reason "max_output_tokens"``.
"""

from __future__ import annotations

import msgspec

from sage.unified.agent.simulator._planning import GenerationPlan, Usage

__all__ = ["ResponsesFormat"]

_enc = msgspec.json.encode


def _event(kind: str, payload: dict[str, object]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _enc({"type": kind, **payload}) + b"\n\n"


class ResponsesFormat:
    """One ``/v1/responses`` answer (see the module docstring).

    Args:
        rid: the response id (``resp_...``).
        created: ``created_at``.
        model: the served model name.
        plan: the planned tokens (one choice).
        max_output_tokens: the request's cap, echoed back.
        instructions: the request's instructions, echoed back.
    """

    __slots__ = ("_created", "_instructions", "_max", "_model", "_msg_id", "_plan", "_rid", "_seq")

    def __init__(
        self,
        *,
        rid: str,
        created: int,
        model: str,
        plan: GenerationPlan,
        max_output_tokens: int | None,
        instructions: str | None = None,
    ) -> None:
        self._rid = rid
        self._created = created
        self._model = model
        self._plan = plan
        self._max = max_output_tokens
        self._instructions = instructions
        self._msg_id = "msg_" + rid.removeprefix("resp_")
        self._seq = 0

    # -- objects ----------------------------------------------------------------------

    def _text(self) -> str:
        return "".join(self._plan.choices[0])

    def _part(self, text: str) -> dict[str, object]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _item(self, *, done: bool) -> dict[str, object]:
        return {
            "id": self._msg_id,
            "type": "message",
            "role": "assistant",
            "status": "completed" if done else "in_progress",
            "content": [self._part(self._text())] if done else [],
        }

    def _response(self, usage: Usage | None) -> dict[str, object]:
        incomplete = usage is not None and self._plan.finish_reason == "length"
        status = "in_progress" if usage is None else "incomplete" if incomplete else "completed"
        return {
            "id": self._rid,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": self._instructions,
            "metadata": None,
            "model": self._model,
            "output": [] if usage is None else [self._item(done=True)],
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "background": False,
            "max_output_tokens": self._max,
            "max_tool_calls": None,
            "previous_response_id": None,
            "prompt": None,
            "reasoning": None,
            "service_tier": "auto",
            "text": None,
            "top_logprobs": None,
            "truncation": "disabled",
            "usage": None if usage is None else self._usage(usage),
            "user": None,
        }

    @staticmethod
    def _usage(usage: Usage) -> dict[str, object]:
        return {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }

    # -- OutputFormat -----------------------------------------------------------------

    def body(self, usage: Usage) -> bytes:
        """The finished ``response`` object."""
        return _enc(self._response(usage))

    def _next(self, kind: str, payload: dict[str, object]) -> bytes:
        out = _event(kind, {"sequence_number": self._seq, **payload})
        self._seq += 1
        return out

    def head(self) -> bytes:
        """``created``, ``in_progress``, and the message item and text part opening."""
        pending = self._response(None)
        where = {"item_id": self._msg_id, "output_index": 0, "content_index": 0}
        return b"".join(
            (
                self._next("response.created", {"response": pending}),
                self._next("response.in_progress", {"response": pending}),
                self._next(
                    "response.output_item.added",
                    {"output_index": 0, "item": self._item(done=False)},
                ),
                self._next("response.content_part.added", {**where, "part": self._part("")}),
            )
        )

    def step(self, step: int) -> bytes:
        """One ``response.output_text.delta``."""
        return self._next(
            "response.output_text.delta",
            {
                "item_id": self._msg_id,
                "output_index": 0,
                "content_index": 0,
                "delta": self._plan.choices[0][step],
                "logprobs": [],
            },
        )

    def tail(self, usage: Usage) -> bytes:
        """The text, part and item ``done`` events and ``response.completed``."""
        text = self._text()
        where = {"item_id": self._msg_id, "output_index": 0, "content_index": 0}
        return b"".join(
            (
                self._next("response.output_text.done", {**where, "text": text, "logprobs": []}),
                self._next("response.content_part.done", {**where, "part": self._part(text)}),
                self._next(
                    "response.output_item.done", {"output_index": 0, "item": self._item(done=True)}
                ),
                self._next("response.completed", {"response": self._response(usage)}),
            )
        )
