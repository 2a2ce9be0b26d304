"""``/sessions`` over ASGI: SAGE's shapes, errors, keys and cross-origin refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from litestar import Litestar

from sage.unified.gateway._errors import exception_handlers
from sage.unified.gateway.sessions import SqliteSessionStore, create_sessions_router
from sage.unified.sdk.auth import TokenSet

ClientFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def client_for(tmp_path: Path) -> AsyncIterator[ClientFactory]:
    store = SqliteSessionStore(tmp_path / "s.db")
    await store.open()
    apps: list[Litestar] = []

    def make(keys: tuple[str, ...] = (), token: str | None = None) -> httpx.AsyncClient:
        app = Litestar(
            [create_sessions_router(store, api_keys=TokenSet(keys))],
            exception_handlers=exception_handlers,
        )
        apps.append(app)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw.localhost", headers=headers
        )

    try:
        yield make
    finally:
        await store.close()


@pytest.mark.anyio
async def test_the_sage_session_api(client_for: ClientFactory) -> None:
    async with client_for() as client:
        created = (await client.post("/sessions", json={"title": "x" * 80})).json()
        assert set(created) == {"id", "messages", "created_at", "last_active", "metadata"}
        assert created["metadata"] == {"title": "x" * 60}
        sid = created["id"]
        listed = (await client.get("/sessions")).json()
        assert listed["stats"] == {"total_sessions": 1, "total_messages": 0}
        assert listed["sessions"][0]["id"] == sid
        assert (await client.get(f"/sessions/{sid}")).json()["id"] == sid
        renamed = await client.patch(f"/sessions/{sid}/title", json={"title": "Renamed"})
        assert renamed.json() == {"status": "updated", "session_id": sid, "title": "Renamed"}
        cleared = await client.post(f"/sessions/{sid}/clear")
        assert cleared.json() == {"status": "cleared", "session_id": sid}
        cleaned = await client.post("/sessions/cleanup", params={"max_age_minutes": 60})
        assert cleaned.json() == {"status": "cleaned", "removed_sessions": 0}
        deleted = await client.delete(f"/sessions/{sid}")
        assert deleted.json() == {"status": "deleted", "session_id": sid}
        untitled = (await client.post("/sessions")).json()
        assert untitled["metadata"]["title"] == "New chat"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/sessions/nope", {}, 404, "session_not_found"),
        ("DELETE", "/sessions/nope", {}, 404, "session_not_found"),
        ("POST", "/sessions/nope/clear", {}, 404, "session_not_found"),
        ("PATCH", "/sessions/nope/title", {"json": {"title": "t"}}, 404, "session_not_found"),
        ("GET", "/sessions/bad%20id", {}, 400, "invalid_session"),
        ("PATCH", "/sessions/nope/title", {"json": {"title": "  "}}, 400, "invalid_session"),
        ("PATCH", "/sessions/nope/title", {"json": ["t"]}, 400, "invalid_session"),
        (
            "POST",
            "/sessions",
            {"content": b"{bad", "headers": {"content-type": "application/json"}},
            400,
            "invalid_session",
        ),
        ("POST", "/sessions", {"json": {"title": 5}}, 400, "invalid_session"),
        (
            "POST",
            "/sessions",
            {
                "content": b"title=x",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/sessions/cleanup",
            {"params": {"max_age_minutes": "soon"}},
            400,
            "invalid_session",
        ),
        (
            "POST",
            "/sessions/cleanup",
            {"params": {"max_age_minutes": "-1"}},
            400,
            "invalid_session",
        ),
        ("GET", "/sessions", {"params": {"limit": "0"}}, 400, "invalid_session"),
        ("POST", "/sessions", {"headers": {"origin": "http://evil.example"}}, 403, "cross_origin"),
        (
            "DELETE",
            "/sessions/x",
            {"headers": {"sec-fetch-site": "cross-site"}},
            403,
            "cross_origin",
        ),
    ],
)
async def test_bad_requests_get_a_clear_openai_shaped_error(
    client_for: ClientFactory,
    method: str,
    path: str,
    kwargs: dict[str, object],
    status: int,
    code: str,
) -> None:
    async with client_for() as client:
        response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


@pytest.mark.anyio
async def test_the_same_origin_may_write(client_for: ClientFactory) -> None:
    async with client_for() as client:
        response = await client.post(
            "/sessions",
            json={},
            headers={"origin": "http://gw.localhost", "sec-fetch-site": "same-origin"},
        )
    assert response.status_code == 200


@pytest.mark.anyio
async def test_keys_are_required_and_isolate_sessions(client_for: ClientFactory) -> None:
    async with client_for(("k1", "k2")) as anonymous:
        assert (await anonymous.get("/sessions")).status_code == 401
    async with (
        client_for(("k1", "k2"), token="k1") as one,
        client_for(("k1", "k2"), token="k2") as two,
    ):
        sid = (await one.post("/sessions", json={"title": "mine"})).json()["id"]
        assert (await two.get(f"/sessions/{sid}")).status_code == 404
        assert (await two.delete(f"/sessions/{sid}")).status_code == 404
        assert (await two.get("/sessions")).json()["sessions"] == []
        assert (await one.get(f"/sessions/{sid}")).status_code == 200
