"""Continuation of interrupted streams: which requests, the transcript, the next request,
and the splice (pure parts)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sage.unified.gateway._continuation import (
    SpliceEditor,
    StreamTranscript,
    continuable,
    continuation_body,
    refusal,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def event(payload: Any) -> bytes:
    return (
        b"data: "
        + (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
        + b"\n\n"
    )


def chunk(content: str | None = None, role: str | None = None, finish: str | None = None) -> bytes:
    delta: dict[str, str] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return event(
        {
            "id": "chatcmpl-2",
            "created": 2,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"stream": False}, "not a stream"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"guided_json": {"type": "object"}}, "guided_json"),
        ({"n": 2}, "n > 1"),
        ({"logprobs": True}, "log probabilities"),
        ({"continue_final_message": True}, "already a continuation"),
    ],
)
def test_what_is_never_continued(extra: dict[str, Any], why: str) -> None:
    reason = refusal({**CHAT, **extra}, chat=True)
    assert reason is not None
    assert why in reason


def test_completions_logprobs_zero_is_never_continued() -> None:
    # ``logprobs: 0`` asks for the chosen token's log probability: falsy, but a request
    # for log probabilities all the same (a continued stream would drop them).
    completion = {"model": "m", "prompt": "once", "stream": True, "logprobs": 0}
    reason = refusal(completion, chat=False)
    assert reason is not None
    assert "log probabilities" in reason
    assert continuable(json.dumps(completion).encode(), b"/v1/completions") is None
    assert refusal({**CHAT, "logprobs": False}, chat=True) is None


def test_what_may_be_continued() -> None:
    assert refusal(CHAT, chat=True) is None
    assert refusal({**CHAT, "response_format": {"type": "text"}}, chat=True) is None
    assert refusal({"model": "m", "prompt": "once", "stream": True}, chat=False) is None
    assert refusal({"model": "m", "prompt": ["a", "b"], "stream": True}, chat=False)
    assert refusal({"model": "m", "prompt": "x", "stream": True, "echo": True}, chat=False)
    assert continuable(json.dumps(CHAT).encode(), b"/v1/chat/completions") == CHAT
    assert continuable(json.dumps(CHAT).encode(), b"/v1/embeddings") is None
    assert continuable(b"not json", b"/v1/chat/completions") is None


def test_the_transcript_hands_on_whole_events_only() -> None:
    transcript = StreamTranscript(chat=True)
    stream = chunk(role="assistant", content="") + chunk("Hello") + chunk(" world")
    cut = len(stream) - 7  # in the middle of the last event
    first = transcript.feed(stream[:cut])
    assert first == chunk(role="assistant", content="") + chunk("Hello")
    assert transcript.text == "Hello"
    assert transcript.feed(stream[cut:]) == chunk(" world")
    assert (transcript.text, transcript.tokens) == ("Hello world", 2)
    assert (transcript.stream_id, transcript.created) == ("chatcmpl-2", 2)
    assert not transcript.finished
    transcript.feed(chunk(finish="stop") + event(b"[DONE]"))
    assert transcript.finished
    assert transcript.done


def test_continuation_bodies() -> None:
    chat = json.loads(continuation_body({**CHAT, "max_tokens": 10}, True, "Hello wor", 3))
    assert chat["messages"][-1] == {"role": "assistant", "content": "Hello wor"}
    assert chat["continue_final_message"] is True
    assert chat["add_generation_prompt"] is False
    assert chat["max_tokens"] == 7
    completion = json.loads(
        continuation_body(
            {"model": "m", "prompt": "Once", "stream": True, "max_tokens": 2}, False, " upon", 5
        )
    )
    assert completion["prompt"] == "Once upon"
    assert completion["max_tokens"] == 1  # never below one token


def test_the_splice_reads_as_one_stream() -> None:
    editor = SpliceEditor(chat=True, stream_id="chatcmpl-1", created=1, continued=1)
    out = editor.edit(
        chunk(role="assistant", content="")
        + chunk(" more")
        + chunk(finish="stop")
        + event(b"[DONE]")
    )
    events = [e for e in out.split(b"\n\n") if e]
    assert len(events) == 3  # the second role chunk is gone
    more = json.loads(events[0].removeprefix(b"data: "))
    assert (more["id"], more["created"]) == ("chatcmpl-1", 1)
    assert more["choices"][0]["delta"]["content"] == " more"
    final = json.loads(events[1].removeprefix(b"data: "))
    assert final["sage"] == {"continued": 1}
    assert events[2] == b"data: [DONE]"
