"""The served OpenAPI documents, made true from the endpoint catalog (pure: no I/O).

Litestar documents what it can see: handlers that decode their own bodies (every one of
ours, with msgspec) show no request body, a handler that answers ``Response[bytes]``
shows a string, errors appear in Litestar's own 400 shape, and raw ASGI routes (the
OpenAI proxy) are missing. Each served endpoint is declared in the catalog with its
types, scope and path, so :func:`describe_endpoints` rewrites every declared operation
from that declaration: request body, success answer, parameters, and each error status
it can answer, all in the OpenAI error shape that every component sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from sage.unified.sdk.models import ErrorBody
from sage.unified.sdk.protocol._endpoint import Component, Endpoint, Scope

__all__ = ["ServedEndpoint", "describe_endpoints", "error_statuses"]

Document = dict[str, Any]

_REF = "#/components/schemas/{name}"

_WHY: dict[int, str] = {
    400: "Malformed request: the body is not valid JSON (or form), or a query parameter "
    "cannot be parsed.",
    401: "Missing or wrong token (when this component has tokens configured).",
    403: "Refused for a browser: a foreign Host, a cross-origin write, or a permission "
    "the token lacks.",
    404: "No such resource (or model).",
    409: "Conflicts with the current state (placement, incarnation, an engine that exists).",
    413: "The request body is over the limit.",
    415: "The request body is not JSON (Content-Type).",
    422: "Well-formed but invalid: a field has the wrong type or value.",
    502: "A component behind this one failed or answered badly.",
    503: "Not ready, or nothing available to serve it right now (see Retry-After).",
    508: "A forwarding loop was detected (the request already passed this gateway).",
}

_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class ServedEndpoint:
    """A declared endpoint as one app serves it.

    Attributes:
        endpoint: the declaration.
        browser_guarded: the route refuses foreign hosts, cross-origin writes and
            non-JSON bodies (``sdk.protocol.server.browser_guard``).
    """

    endpoint: Endpoint[Any, Any]
    browser_guarded: bool


def error_statuses(served: ServedEndpoint) -> tuple[int, ...]:
    """Every error status the endpoint can answer, from its declaration."""
    ep = served.endpoint
    statuses = set(ep.errors)
    if ep.request is not None or ep.request_media != "application/json" or ep.query:
        statuses |= {400, 422}
    if ep.request is not None or ep.request_media != "application/json":
        statuses.add(413)
    if ep.scope is not Scope.PUBLIC:
        statuses.add(401)
    if ep.path_params:
        # No such thing; or a parameter of the wrong form (a session id with a '/', a GPU
        # index that is not a number).
        statuses |= {400, 404, 422}
    if served.browser_guarded:
        statuses.add(403)
        if ep.method in _WRITES:
            statuses.add(415)
    if ep.method in _WRITES and ep.server in (Component.CONTROL_PLANE, Component.AGENT):
        # A command names engines, agents or deployments that may not exist (404) or
        # whose state forbids it (409: no placement, a stale incarnation, a duplicate).
        statuses |= {404, 409}
    if ep.server is Component.CONTROL_PLANE and ep.scope is not Scope.PUBLIC:
        # Not ready yet (a restarted control plane settling, its store unavailable), or
        # behind a gateway, the standalone coordinator unreachable.
        statuses |= {502, 503}
    return tuple(sorted(statuses))


def describe_endpoints(document: Document, served: Iterable[ServedEndpoint]) -> Document:
    """``document`` with every served endpoint's operation written from its declaration.

    Operations Litestar left out (raw ASGI routes) are added; Litestar's parameters and
    non-JSON success answers (Prometheus text, HTML) are kept.
    """
    served = list(served)
    types: set[Any] = {ErrorBody}
    types |= {s.endpoint.request for s in served if _is_struct(s.endpoint.request)}
    types |= {s.endpoint.reply for s in served if _is_struct(s.endpoint.reply)}
    _, components = msgspec.json.schema_components(
        sorted(types, key=lambda t: t.__name__), ref_template=_REF
    )
    document.setdefault("components", {}).setdefault("schemas", {}).update(components)
    paths = document.setdefault("paths", {})
    for item in served:
        ep = item.endpoint
        path = ep.path.replace(":path}", "}")
        operation = paths.setdefault(path, {}).setdefault(ep.method.lower(), {})
        _describe(operation, item)
    return document


def _describe(operation: dict[str, Any], served: ServedEndpoint) -> None:
    ep = served.endpoint
    operation["operationId"] = ep.name
    if ep.summary:
        operation["summary"] = ep.summary
    operation["parameters"] = _parameters(ep, operation.get("parameters", []))
    if not operation["parameters"]:
        del operation["parameters"]
    body = _request_body(ep)
    if body is not None:
        operation["requestBody"] = body
    if ep.reply is not None:
        content = _json(ep.reply)
        if ep.streams:
            content["text/event-stream"] = {"schema": {"type": "string"}}
    else:
        content = {ep.reply_media: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(ep.status): {"description": "OK", "content": content}}
    # A page for browsers answers its errors as a page too.
    page = ep.reply is None and ep.reply_media in ("text/html", "*/*")
    error = {"text/html": {"schema": {"type": "string"}}} if page else _json(ErrorBody)
    for status in error_statuses(served):
        responses[str(status)] = {"description": _WHY.get(status, "Error."), "content": error}
    operation["responses"] = responses


def _parameters(ep: Endpoint[Any, Any], documented: list[dict[str, Any]]) -> list[dict[str, Any]]:
    known = {(p.get("in"), p.get("name")): p for p in documented}
    params = [
        known.get(("path", name))
        or {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in ep.path_params
    ]
    params += [
        known.get(("query", name)) or {"name": name, "in": "query", "schema": {"type": "string"}}
        for name in ep.query
    ]
    return params


def _request_body(ep: Endpoint[Any, Any]) -> dict[str, Any] | None:
    if ep.request_media == "multipart/form-data":
        form = {
            "type": "object",
            "required": ["model", "file"],
            "properties": {
                "model": {"type": "string"},
                "file": {"type": "string", "contentMediaType": "application/octet-stream"},
            },
        }
        return {"required": True, "content": {ep.request_media: {"schema": form}}}
    if ep.request is None:
        return None
    return {"required": True, "content": _json(ep.request)}


def _json(kind: Any) -> dict[str, Any]:
    if _is_struct(kind):
        return {"application/json": {"schema": {"$ref": _REF.format(name=kind.__name__)}}}
    return {"application/json": {"schema": msgspec.json.schema(kind)}}


def _is_struct(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)
