from __future__ import annotations

import json

import pytest

from sage.unified.gateway.routing import MAX_JSON_DEPTH, PeekError, RequestPeek, peek_request


def test_chat_body() -> None:
    body = json.dumps(
        {
            "model": "qwen",
            "messages": [{"role": "user", "content": "hi " * 500}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "alice",
            "temperature": 0.2,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        }
    ).encode()
    assert peek_request(body) == RequestPeek(
        model="qwen", stream=True, user="alice", include_usage=True
    )


def test_defaults_when_fields_absent_or_null() -> None:
    assert peek_request(b"{}") == RequestPeek(
        model=None, stream=False, user=None, include_usage=False
    )
    body = b'{"model": null, "stream": null, "user": null, "stream_options": null}'
    assert peek_request(body) == RequestPeek(
        model=None, stream=False, user=None, include_usage=False
    )
    assert peek_request(b'{"model":"m","stream_options":{}}').include_usage is False


def test_unknown_fields_of_any_shape_are_ignored() -> None:
    body = b'{"input": [[1,2],[3]], "model": "e", "extra": {"a": [null, 1.5e300]}}'
    assert peek_request(body).model == "e"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b'{"model": "m",}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"model": "m"} trailing', "not valid JSON"),
        (b"[]", "Expected `object`, got `array`"),
        (b'"model"', "Expected `object`, got `str`"),
        (b"null", "Expected `object`, got `null`"),
        (b'{"model": 3}', "at `$.model`"),
        (b'{"model": ["a"]}', "at `$.model`"),
        (b'{"model": "m", "stream": "yes"}', "at `$.stream`"),
        (b'{"model": "m", "stream": 1}', "at `$.stream`"),
        (b'{"model": "m", "user": 5}', "at `$.user`"),
        (b'{"model": "m", "stream_options": true}', "at `$.stream_options`"),
        (b'{"model": "m", "stream_options": {"include_usage": "y"}}', "include_usage"),
    ],
)
def test_bad_bodies_raise_peek_error(body: bytes, message: str) -> None:
    with pytest.raises(PeekError, match=message.replace("$", r"\$").replace("[", r"\[")):
        peek_request(body)


def test_peek_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="invalid request body"):
        peek_request(b'{"model": 1}')


def _nested(levels: int, leaf: bytes = b"1") -> bytes:
    """``levels`` arrays around ``leaf``."""
    return b"[" * levels + leaf + b"]" * levels


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"model": "m", "input": ' + _nested(10_000) + b"}", id="nested-field"),
        pytest.param(
            b'{"model": "m", "tools": [{"a": ' + _nested(10_000, b"{}") + b"}]}", id="in-tools"
        ),
        pytest.param(_nested(10_000), id="top-level"),
        pytest.param(b'{"a": ' * 10_000 + b"1" + b"}" * 10_000, id="objects"),
        pytest.param(b"[" * 10_000, id="unterminated"),
    ],
)
def test_a_body_nested_10000_levels_deep_is_a_peek_error_not_a_crash(body: bytes) -> None:
    # ~1,000 levels used to exhaust the decoder's recursion: RecursionError, a 500.
    with pytest.raises(PeekError, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        peek_request(body)


def test_nesting_is_bounded_at_max_json_depth_levels_exactly() -> None:
    # The body's own object is level 1: a value may sit inside MAX_JSON_DEPTH containers.
    inside = MAX_JSON_DEPTH - 1
    assert peek_request(b'{"model": "m", "x": ' + _nested(inside) + b"}").model == "m"
    with pytest.raises(PeekError, match="deeper than"):
        peek_request(b'{"model": "m", "x": ' + _nested(inside + 1) + b"}")


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = "[" * 5000 + '\\"{' * 500 + "\\\\" + "}" * 300
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
    assert peek_request(body.encode()).model == "m"


def test_a_tool_heavy_body_with_many_shallow_brackets_is_accepted() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {"type": "object", "properties": {"a": {"type": "array"}}},
        },
    }
    calls = [{"role": "assistant", "tool_calls": [{"function": {"arguments": '{"a": [1]}'}}]}]
    body = json.dumps({"model": "m", "tools": [tool] * 50, "messages": calls * 50}).encode()
    assert body.count(b"{") > MAX_JSON_DEPTH
    assert peek_request(body).model == "m"
    with pytest.raises(PeekError, match="not valid JSON"):
        peek_request(body[:-1])
