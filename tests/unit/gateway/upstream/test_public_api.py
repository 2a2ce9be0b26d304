"""The package's public names and its error tree (what the gateway relies on)."""

from __future__ import annotations

import asyncio

import pytest

import sage.unified.gateway.upstream as upstream
from sage.unified.gateway.upstream import (
    FirstByteTimeout,
    PoolClosed,
    PoolTimeout,
    ReadTimeout,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamTimeout,
)


def test_exported_members() -> None:
    assert sorted(upstream.__all__) == [
        "DEFAULT",
        "FirstByteTimeout",
        "Origin",
        "OriginStats",
        "PoolClosed",
        "PoolTimeout",
        "ReadTimeout",
        "UpstreamConnectError",
        "UpstreamConnectTimeout",
        "UpstreamDisconnected",
        "UpstreamError",
        "UpstreamPool",
        "UpstreamProtocolError",
        "UpstreamResponse",
        "UpstreamTimeout",
    ]
    for name in upstream.__all__:
        assert getattr(upstream, name) is not None


@pytest.mark.parametrize(
    ("error", "parents"),
    [
        (UpstreamConnectTimeout, (UpstreamConnectError, UpstreamError)),
        (PoolTimeout, (UpstreamError,)),
        (PoolClosed, (UpstreamError,)),
        (FirstByteTimeout, (UpstreamTimeout, UpstreamError)),
        (ReadTimeout, (UpstreamTimeout, UpstreamError)),
        (UpstreamProtocolError, (UpstreamError,)),
        (UpstreamDisconnected, (UpstreamError,)),
    ],
)
def test_error_tree(error: type[UpstreamError], parents: tuple[type[Exception], ...]) -> None:
    assert issubclass(error, parents)
    assert not issubclass(error, TimeoutError)  # never confused with the caller's asyncio.timeout
    assert error("x").response_started is False
    assert error("x", response_started=True).response_started is True


def test_pool_rejects_bad_settings() -> None:
    async def build(**kwargs: float) -> None:
        UpstreamPool(**kwargs)  # type: ignore[arg-type]

    for kwargs in (
        {"max_connections_per_origin": 0},
        {"keepalive_expiry_s": 0},
        {"connect_timeout_s": -1},
    ):
        with pytest.raises(ValueError, match="must be"):
            asyncio.run(build(**kwargs))


def test_pool_rejects_an_unknown_scheme_clearly() -> None:
    async def request() -> None:
        pool = UpstreamPool()
        try:
            await pool.request(b"GET", ("ftp", "h", 21), b"/", [])
        finally:
            await pool.aclose()

    with pytest.raises(ValueError, match="use http or https"):
        asyncio.run(request())
