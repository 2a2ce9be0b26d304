"""The chat hook: history prepended, the relayed answer stored as one turn."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sage.unified.gateway.sessions import (
    ANONYMOUS,
    InvalidSessionError,
    Message,
    SessionChat,
    SessionLimits,
    SessionMessageTooLargeError,
    SqliteSessionStore,
    owner_of,
    request_owner,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteSessionStore]:
    s = SqliteSessionStore(tmp_path / "s.db", SessionLimits(max_message_bytes=2048))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


OWNER = owner_of("k")


def _body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", **fields}).encode()


async def _relay(
    prepared: Any, status: int, chunks: list[bytes], *, streamed: bool, end: bool = True
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    tee = prepared.wrap(send)
    content_type = b"text/event-stream" if streamed else b"application/json"
    await tee(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type)],
        }
    )
    for chunk in chunks:
        await tee({"type": "http.response.body", "body": chunk, "more_body": True})
    if end:
        await tee({"type": "http.response.body", "body": b"", "more_body": False})
    await prepared.finish()
    return sent


def test_owner_is_a_digest_of_the_key_only_when_keys_are_on() -> None:
    assert request_owner("Bearer k1", keys_enabled=False) == ANONYMOUS
    assert request_owner("Bearer k1", keys_enabled=True) == owner_of("k1")
    assert owner_of("k1") != owner_of("k2")
    assert "k1" not in owner_of("k1")


@pytest.mark.anyio
async def test_requests_without_a_session_are_left_alone(store: SqliteSessionStore) -> None:
    chat = SessionChat(store)
    assert await chat.prepare(_body(messages=[]), None) is None
    assert await chat.prepare(_body(session_id=None, messages=[]), None) is None
    assert await chat.prepare(b'{"session_id": broken', None) is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"session_id": "../etc", "messages": []}, InvalidSessionError),
        ({"session_id": 5, "messages": []}, InvalidSessionError),
        ({"session_id": "s1", "messages": "hi"}, InvalidSessionError),
        ({"session_id": "s1", "messages": [{"content": "no role"}]}, InvalidSessionError),
        (
            {"session_id": "s1", "messages": [{"role": "user", "content": "x" * 3000}]},
            SessionMessageTooLargeError,
        ),
    ],
)
async def test_bad_session_requests_are_refused(
    store: SqliteSessionStore, fields: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await SessionChat(store).prepare(_body(**fields), None)
    assert await store.get(ANONYMOUS, "s1") is None


@pytest.mark.anyio
async def test_history_goes_after_system_messages_and_before_the_new_ones(
    store: SqliteSessionStore,
) -> None:
    await store.history(OWNER, "s1")
    await store.append(
        OWNER, "s1", [Message("user", "q1", 1.0), Message("assistant", "a1", 1.0, {"x": 1})]
    )
    prepared = await SessionChat(store, keys_enabled=True).prepare(
        _body(
            session_id="s1",
            stream=True,
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "q2"}],
        ),
        "Bearer k",
    )
    assert prepared is not None
    assert prepared.session_id == "s1"
    forwarded = json.loads(prepared.body)
    assert "session_id" not in forwarded
    assert forwarded["stream"] is True
    assert forwarded["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]


@pytest.mark.anyio
async def test_a_complete_answer_is_stored_with_the_user_message(store: SqliteSessionStore) -> None:
    chat = SessionChat(store, keys_enabled=True)
    prepared = await chat.prepare(
        _body(session_id="s1", messages=[{"role": "user", "content": "hi"}]), b"Bearer k"
    )
    answer = {
        "model": "m",
        "choices": [{"index": 0, "message": {"content": "hello"}, "finish_reason": "stop"}],
    }
    sent = await _relay(prepared, 200, [json.dumps(answer).encode()], streamed=False)
    assert len(sent) == 3  # the client got everything, unchanged
    session = await store.get(OWNER, "s1")
    assert session is not None
    assert [(m.role, m.content) for m in session.messages] == [
        ("user", "hi"),
        ("assistant", "hello"),
    ]
    assert session.messages[1].metadata == {"model": "m", "finish_reason": "stop"}
    assert session.title == "hi"


@pytest.mark.anyio
async def test_a_stream_cut_by_the_client_is_stored_marked_incomplete(
    store: SqliteSessionStore,
) -> None:
    chat = SessionChat(store, keys_enabled=True)
    prepared = await chat.prepare(
        _body(session_id="s1", stream=True, messages=[{"role": "user", "content": "tell"}]),
        b"Bearer k",
    )
    chunk = b'data: {"choices": [{"index": 0, "delta": {"content": "once upon"}}]}\n\n'
    await _relay(prepared, 200, [chunk], streamed=True, end=False)
    reply = (await store.get(OWNER, "s1")).messages[-1]  # type: ignore[union-attr]
    assert reply.content == "once upon"
    assert reply.metadata["incomplete"] is True
    assert "client disconnected" in reply.metadata["reason"]


@pytest.mark.anyio
async def test_an_answer_that_failed_stores_nothing(store: SqliteSessionStore) -> None:
    chat = SessionChat(store, keys_enabled=True)
    prepared = await chat.prepare(
        _body(session_id="s1", messages=[{"role": "user", "content": "hi"}]), b"Bearer k"
    )
    await _relay(prepared, 503, [b'{"error": {"message": "busy"}}'], streamed=False)
    session = await store.get(OWNER, "s1")
    assert session is not None
    assert session.messages == []


def test_wants_is_a_cheap_byte_search() -> None:
    assert SessionChat.wants(_body(session_id="s", messages=[]))
    assert not SessionChat.wants(_body(messages=[{"role": "user", "content": "hi"}]))
