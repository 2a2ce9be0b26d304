"""The SQLite session store: shapes, isolation, limits (oldest first), persistence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sage.unified.gateway.sessions import Message, SessionLimits, SqliteSessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteSessionStore]:
    s = SqliteSessionStore(tmp_path / "sub" / "sessions.db", clock=clock)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def _turn(question: str, answer: str, at: float = 0.0) -> list[Message]:
    return [Message("user", question, at), Message("assistant", answer, at, {"model": "m"})]


@pytest.mark.anyio
async def test_create_list_get_and_the_first_message_titles_the_session(
    store: SqliteSessionStore, clock: Clock
) -> None:
    first = await store.create("alice")
    clock.now += 1
    second = await store.create("alice", title="  Named\n  one  ")
    assert second.title == "Named one"
    clock.now += 1
    assert await store.append("alice", first.id, _turn("What is a KV cache? " * 5, "Memory."))
    summaries, stats = await store.list_sessions("alice")
    assert [s.id for s in summaries] == [first.id, second.id]  # most recently active first
    assert summaries[0].to_json() == {
        "id": first.id,
        "title": ("What is a KV cache? " * 5).strip()[:60],
        "created_at": 1000.0,
        "last_active": 1002.0,
        "message_count": 2,
    }
    assert stats == {"total_sessions": 2, "total_messages": 2}
    session = await store.get("alice", first.id)
    assert session is not None
    body = session.to_json()
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"]
    assert body["messages"][1] == {
        "role": "assistant",
        "content": "Memory.",
        "timestamp": 0.0,
        "metadata": {"model": "m"},
    }
    assert (await store.get("alice", second.id)).to_json()["metadata"] == {"title": "Named one"}  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_owners_never_see_each_other(store: SqliteSessionStore) -> None:
    mine = await store.create("alice")
    assert await store.get("bob", mine.id) is None
    assert await store.list_sessions("bob") == ([], {"total_sessions": 0, "total_messages": 0})
    assert not await store.delete("bob", mine.id)
    assert not await store.set_title("bob", mine.id, "x")
    assert not await store.clear("bob", mine.id)
    # The same id used by another owner is another session.
    assert await store.history("bob", mine.id) == []
    await store.append("bob", mine.id, _turn("bob's", "answer"))
    assert (await store.get("alice", mine.id)).messages == []  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_clear_title_delete_cleanup(store: SqliteSessionStore, clock: Clock) -> None:
    old = await store.create("alice", title="old")
    clock.now += 3600
    fresh = await store.create("alice")
    await store.append("alice", fresh.id, _turn("q", "a"))
    assert await store.set_title("alice", fresh.id, "t" * 100)
    assert (await store.get("alice", fresh.id)).title == "t" * 60  # type: ignore[union-attr]
    assert await store.clear("alice", fresh.id)
    cleared = await store.get("alice", fresh.id)
    assert cleared is not None
    assert cleared.messages == []
    assert cleared.title == "t" * 60
    assert await store.cleanup("alice", max_idle_s=1800) == 1
    assert await store.get("alice", old.id) is None
    assert await store.delete("alice", fresh.id)
    assert not await store.delete("alice", fresh.id)
    assert not await store.append("alice", fresh.id, _turn("late", "answer"))


@pytest.mark.anyio
async def test_messages_over_the_limits_go_oldest_first(tmp_path: Path) -> None:
    limits = SessionLimits(max_messages=4, max_session_bytes=200)
    store = SqliteSessionStore(tmp_path / "s.db", limits)
    await store.open()
    try:
        session = await store.create("a")
        for i in range(3):
            await store.append("a", session.id, _turn(f"q{i}", f"a{i}"))
        kept = await store.history("a", session.id)
        assert [m.content for m in kept] == ["q1", "a1", "q2", "a2"]
        await store.append("a", session.id, _turn("x" * 150, "y" * 40))
        kept = await store.history("a", session.id)
        assert [m.content for m in kept] == ["x" * 150, "y" * 40]
        summary = (await store.list_sessions("a"))[0][0]
        assert summary.message_count == 2
    finally:
        await store.close()


@pytest.mark.anyio
async def test_sessions_over_the_limits_go_least_recently_active_first(
    tmp_path: Path, clock: Clock
) -> None:
    limits = SessionLimits(max_sessions=2, max_total_bytes=245, max_session_bytes=250)
    store = SqliteSessionStore(tmp_path / "s.db", limits, clock=clock)
    await store.open()
    try:
        first = await store.create("a")
        clock.now += 1
        second = await store.create("b")
        clock.now += 1
        await store.append("a", first.id, _turn("q", "a"))  # first is now the most recent
        clock.now += 1
        third = await store.create("a")
        assert await store.get("b", second.id) is None
        assert await store.get("a", first.id) is not None
        clock.now += 1
        await store.append("a", third.id, _turn("z" * 200, "w" * 40))
        assert await store.get("a", first.id) is None  # over max_total_bytes
        assert await store.get("a", third.id) is not None
    finally:
        await store.close()


@pytest.mark.anyio
async def test_sessions_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteSessionStore(path)
    await store.open()
    session = await store.create("a", title="kept")
    await store.append("a", session.id, _turn("q", "a"))
    await store.close()
    again = SqliteSessionStore(path)
    await again.open()
    try:
        restored = await again.get("a", session.id)
        assert restored is not None
        assert restored.title == "kept"
        assert [m.content for m in restored.messages] == ["q", "a"]
    finally:
        await again.close()
