from __future__ import annotations

import json

import pytest

from sage.unified.gateway.routing import PeekError, RequestPeek, peek_request


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
