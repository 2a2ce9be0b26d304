"""Random requests against ``/sessions`` (in process): never a 5xx, always a clear,
OpenAI-shaped error, and one key's sessions never answer another key.

``SAGE_FUZZ_EXAMPLES`` (default 25) bounds the examples; ``make fuzz`` runs 1000.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar

from sage.unified.gateway._errors import exception_handlers
from sage.unified.gateway.sessions import SqliteSessionStore, create_sessions_router
from sage.unified.sdk.auth import TokenSet

EXAMPLES = int(os.environ.get("SAGE_FUZZ_EXAMPLES", "25"))

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
_ids = st.one_of(
    st.just("{known}"),
    st.text(max_size=140),
    st.from_regex(r"[A-Za-z0-9._-]{1,130}", fullmatch=True),
)
_suffix = st.sampled_from(["", "/clear", "/title", "/cleanup", "/x/y"])
_body = st.one_of(
    st.none(),
    st.binary(max_size=200),
    _json.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"title": _json}).map(lambda v: json.dumps(v).encode()),
)
_query = st.dictionaries(
    st.sampled_from(["limit", "max_age_minutes", "other"]), st.text(max_size=12), max_size=2
)


async def _exercise(
    requests: list[tuple[str, str, str, bytes | None, dict[str, str], str]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteSessionStore(Path(folder) / "s.db")
        await store.open()
        try:
            app = Litestar(
                [create_sessions_router(store, api_keys=TokenSet(["k1", "k2"]))],
                exception_handlers=exception_handlers,
            )
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw.localhost"
            ) as client:
                mine = await client.post(
                    "/sessions", json={"title": "mine"}, headers={"authorization": "Bearer k1"}
                )
                known = mine.json()["id"]
                for method, session_id, suffix, body, query, key in requests:
                    path = "/sessions"
                    if session_id:
                        path += "/" + quote(session_id.replace("{known}", known), safe="")
                    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
                    response = await client.request(
                        method, path + suffix, content=body, params=query, headers=headers
                    )
                    _check(response, key, known)
                still = await client.get(
                    f"/sessions/{known}", headers={"authorization": "Bearer k1"}
                )
                assert still.status_code in {200, 404}  # k1 itself may have deleted it
        finally:
            await store.close()


def _check(response: httpx.Response, key: str, known: str) -> None:
    assert response.status_code < 500, response.text
    data: Any = response.json()
    if response.status_code >= 400:
        error = data["error"]
        assert isinstance(error["message"], str)
        assert error["message"]
        assert "Traceback" not in error["message"]
    if key == "k2":
        assert known not in response.text or (
            response.status_code >= 400 and "not found" in response.text
        )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=EXAMPLES <= 100,
    suppress_health_check=list(HealthCheck),
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT"]),
            st.one_of(st.just(""), _ids),
            _suffix,
            _body,
            _query,
            st.sampled_from(["k1", "k2", "wrong"]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_random_session_requests_get_clear_answers(requests: list[Any]) -> None:
    asyncio.run(_exercise(requests))
