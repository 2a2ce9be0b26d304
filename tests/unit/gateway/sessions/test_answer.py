"""The answer collector: what a session stores of an engine's answer."""

from __future__ import annotations

import json

from sage.unified.gateway.sessions import AnswerCollector


def _chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {
        "object": "chat.completion.chunk",
        "model": "tiny",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def test_a_stream_split_anywhere_is_reassembled() -> None:
    stream = b"".join(
        [_chunk("Hello"), _chunk(" wor"), _chunk("ld"), _chunk(finish="stop"), b"data: [DONE]\n\n"]
    )
    for cut in range(1, len(stream), 7):
        collector = AnswerCollector(streamed=True, max_bytes=1000)
        collector.feed(stream[:cut])
        collector.feed(stream[cut:])
        answer = collector.result()
        assert answer.text == "Hello world"
        assert answer.complete
        assert answer.metadata == {"model": "tiny", "finish_reason": "stop"}


def test_crlf_events_and_usage_chunks() -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    stream = (
        _chunk("a").replace(b"\n\n", b"\r\n\r\n")
        + b"data: "
        + json.dumps(usage).encode()
        + b"\r\n\r\ndata: [DONE]\r\n\r\n"
    )
    collector = AnswerCollector(streamed=True, max_bytes=1000)
    collector.feed(stream)
    answer = collector.result()
    assert answer.text == "a"
    assert answer.complete
    assert answer.metadata["usage"]["completion_tokens"] == 2


def test_a_stream_without_done_is_incomplete_and_an_error_event_is_kept() -> None:
    collector = AnswerCollector(streamed=True, max_bytes=1000)
    collector.feed(_chunk("partial"))
    collector.feed(b'data: {"error": {"message": "the engine stopped answering"}}\n\n')
    answer = collector.result()
    assert answer.text == "partial"
    assert not answer.complete
    assert answer.error == "the engine stopped answering"


def test_text_over_the_limit_is_cut_on_a_character_boundary() -> None:
    collector = AnswerCollector(streamed=True, max_bytes=10)
    collector.feed(_chunk("ééééé") + _chunk("ééé") + b"data: [DONE]\n\n")
    answer = collector.result()
    assert answer.text == "ééééé"
    assert answer.truncated
    assert answer.complete


def test_a_json_answer_and_unusable_ones() -> None:
    body = {
        "model": "tiny",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi"},
                "finish_reason": "length",
            }
        ],
        "usage": {"completion_tokens": 1},
    }
    collector = AnswerCollector(streamed=False, max_bytes=100)
    raw = json.dumps(body).encode()
    collector.feed(raw[:5])
    collector.feed(raw[5:])
    answer = collector.result()
    assert (answer.text, answer.complete, answer.metadata["finish_reason"]) == (
        "Hi",
        True,
        "length",
    )

    broken = AnswerCollector(streamed=False, max_bytes=100)
    broken.feed(b"{not json")
    assert broken.result().error == "the engine's answer was not JSON"
    assert not broken.result().complete

    huge = AnswerCollector(streamed=False, max_bytes=10)
    huge.feed(b"x" * 70_000)
    assert huge.result().error == "the answer was too large to store"
