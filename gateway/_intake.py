"""Reading one proxied request: limits, the API key, the body peek, the upstream headers.

The first step of the data plane (:class:`~._proxy.DataPlane`) for every request: what it
returns is all the later steps need (:class:`~._relay.ProxyRequest`).
"""

from __future__ import annotations

from sage.unified.gateway._asgi import Receive, Scope, read_body
from sage.unified.gateway._continuation import continuable
from sage.unified.gateway._errors import (
    BadRequestError,
    HeadersTooLargeError,
    LoopDetectedError,
    PayloadTooLargeError,
    UnauthorizedError,
)
from sage.unified.gateway._headers import (
    loop_detected,
    new_request_id,
    scan_request_headers,
    upstream_headers,
)
from sage.unified.gateway._proxy_config import ProxyConfig
from sage.unified.gateway._relay import ProxyRequest
from sage.unified.gateway.routing import PeekError, peek_form, peek_request
from sage.unified.sdk.auth import bearer_token
from sage.unified.sdk.models import EngineKind

__all__ = ["parse_request"]

_FORM_PATH = b"/v1/audio/transcriptions"
"""The one proxied route whose body is a form (multipart), not JSON."""


async def parse_request(
    scope: Scope,
    receive: Receive,
    config: ProxyConfig,
    kind: EngineKind | None,
    path: bytes,
    started: float,
) -> ProxyRequest | None:
    """Check and read one proxied request; ``None`` when the client left while sending it.

    In order: header limits (431), the API key (401), a loop through this gateway (508),
    the declared body size (413), the body (413 past the limit), its routed fields (400).

    Raises:
        GatewayError: the request is refused (the subclass says why).
    """
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    info = scan_request_headers(headers)
    if info.count > config.max_headers or info.size > config.max_header_bytes:
        raise HeadersTooLargeError(
            f"request headers exceed the limit ({config.max_headers} headers, {config.max_header_bytes} bytes)"
        )
    if config.api_keys:
        presented = (
            bearer_token(info.authorization.decode("latin-1")) if info.authorization else None
        )
        if not config.api_keys.verify(presented):
            raise UnauthorizedError(
                "missing or invalid API key; send it as 'Authorization: Bearer <key>'"
            )
    if loop_detected(info):
        raise LoopDetectedError(
            "this request already passed this gateway (Via): an engine URL points back "
            "at a gateway; fix the registration"
        )
    if info.content_length is not None and info.content_length > config.max_body_bytes:
        raise PayloadTooLargeError(f"request body exceeds {config.max_body_bytes} bytes")
    body = await read_body(receive, config.max_body_bytes)
    if body is None:
        return None
    try:
        peek = peek_form(body, info.content_type) if path == _FORM_PATH else peek_request(body)
    except PeekError as exc:
        raise BadRequestError(str(exc)) from None
    model = peek.model
    if not model:
        raise BadRequestError("you must provide a model parameter", param="model")
    request_id = info.request_id or new_request_id()
    client = scope.get("client")
    forwarded = upstream_headers(
        headers,
        info,
        request_id=request_id,
        client_host=client[0] if client else None,
        scheme=scope.get("scheme", "http"),
        engine_authorization=config.engine_authorization,
    )
    session_key = info.session_id.decode("latin-1") if info.session_id else peek.user
    request = ProxyRequest(
        model,
        kind,
        path,
        body,
        forwarded,
        session_key,
        request_id,
        started,
        info.authorization,
        info.want_route,
    )
    if peek.stream and (info.continue_stream or _continues(config, model)):
        request.continuation = continuable(body, path)
    return request


def _continues(config: ProxyConfig, model: str) -> bool:
    models = config.continuation_models
    return bool(models) and (model in models or "*" in models)
