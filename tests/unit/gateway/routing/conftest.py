"""Helpers for the routing tests: build tables without boilerplate."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sage.unified.sdk.models import Backend, EngineKind, EngineLoad, RoutingTable

BackendFactory = Callable[..., Backend]
TableFactory = Callable[..., RoutingTable]


def make_backend(
    id_: str,
    model: str = "m",
    *,
    kind: EngineKind = EngineKind.LLM,
    url: str | None = None,
    waiting: int | None = None,
) -> Backend:
    return Backend(
        id=id_,
        model=model,
        kind=kind,
        url=url or f"http://{id_}.engines.test:8900",
        load=EngineLoad(waiting=waiting),
    )


@pytest.fixture
def backend() -> BackendFactory:
    return make_backend


@pytest.fixture
def table() -> TableFactory:
    def build(*backends: Backend, revision: int = 1) -> RoutingTable:
        return RoutingTable(revision=revision, backends=list(backends))

    return build
