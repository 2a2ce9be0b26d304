"""Which error a request with no candidate backend gets (pure)."""

from __future__ import annotations

from sage.unified.gateway._refusals import unroutable_error
from sage.unified.gateway.routing import RoutingState
from sage.unified.sdk.models import Backend, EngineKind, RoutingTable


def _state() -> RoutingState:
    return RoutingState(
        RoutingTable(
            revision=1,
            backends=[
                Backend(id="c1", model="chat", kind=EngineKind.LLM, url="http://127.0.0.1:1"),
                Backend(id="e1", model="emb", kind=EngineKind.EMBEDDING, url="http://127.0.0.1:2"),
            ],
        )
    )


def test_a_route_any_kind_serves_never_says_wrong_kind() -> None:
    # /tokenize with every backend of "emb" unusable for now: a retry may help.
    error = unroutable_error(
        _state(), "emb", None, b"/tokenize", may_come_back=True, retry_after_s=5
    )
    assert error.status == 503
    assert error.headers == {"retry-after": "5"}


def test_a_route_of_the_other_kind_is_a_400_naming_what_serves_it() -> None:
    error = unroutable_error(
        _state(), "emb", EngineKind.LLM, b"/v1/responses", may_come_back=True, retry_after_s=5
    )
    assert (error.status, error.code) == (400, "model_wrong_kind")
    assert "models serving it: chat" in error.message


def test_an_unknown_model_on_an_any_kind_route_lists_every_model() -> None:
    error = unroutable_error(
        _state(), "nope", None, b"/tokenize", may_come_back=False, retry_after_s=5
    )
    assert error.status == 404
    assert "Served models: chat, emb." in error.message
