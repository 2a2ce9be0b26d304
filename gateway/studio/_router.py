"""Serves the console's static files with strict security headers.

Files are read from the package once, when the router is built (a few tens of KB),
with a gzip copy and an ETag each; browsers revalidate on every load (``no-cache``),
so an upgraded gateway never serves a stale script and an unchanged one costs a 304.
The Content-Security-Policy allows only this origin's scripts, styles and API calls:
no inline script, no eval, no framing.
"""

from __future__ import annotations

import gzip
import hashlib
import html
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from litestar import Request, Response, Router
from litestar.params import FromPath

from sage.unified.sdk.protocol import StudioApi
from sage.unified.sdk.protocol.server import route

__all__ = ["STATIC_FILES", "create_studio_router"]

STATIC_FILES = resources.files("sage.unified.gateway.studio") / "static"
"""Where the console's files are installed (package data)."""

_TYPES = {
    # Litestar adds "; charset=utf-8" to text types.
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
}
_COMPRESSIBLE = (".html", ".js", ".css", ".svg", ".json")

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    gzipped: bytes | None
    etag: str
    media_type: str


def _load(root: Traversable) -> dict[str, _File]:
    files: dict[str, _File] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            name = f"{prefix}{entry.name}"
            if entry.is_dir():
                walk(entry, f"{name}/")
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
            media_type = _TYPES.get(suffix)
            if media_type is None:
                continue  # only known types are served (and sniffing is off)
            body = entry.read_bytes()
            gzipped = gzip.compress(body, 9, mtime=0) if suffix in _COMPRESSIBLE else None
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            files[name] = _File(body, gzipped, etag, media_type)

    walk(root, "")
    return files


def _refusal_page(message: str) -> Response[bytes]:
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>SAGE Studio</title>"
        f"<h1>SAGE Studio is not available</h1><p>{html.escape(message)}.</p></html>"
    ).encode()
    return Response(
        body,
        status_code=403,
        media_type="text/html",
        headers={**SECURITY_HEADERS, "cache-control": "no-store"},
    )


def _not_found(path: str) -> Response[bytes]:
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Not found</title>"
        f"<h1>Not found</h1><p>Studio has no file {html.escape(path[:200])}. "
        '<a href="/studio/">Open the console</a>.</p></html>'
    ).encode()
    return Response(
        body,
        status_code=404,
        media_type="text/html",
        headers={**SECURITY_HEADERS, "cache-control": "no-store"},
    )


def create_studio_router(*, refusal: str | None = None, root: Traversable | None = None) -> Router:
    """``/studio/``: the console. With ``refusal``, every path answers 403 with it.

    Args:
        refusal: why the console may not be served here (see
            ``GatewaySettings.studio_refusal``), or ``None``.
        root: the folder of files to serve (the installed ``static/`` by default).
    """
    files = _load(root or STATIC_FILES) if refusal is None else {}

    def serve(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
        if refusal is not None:
            return _refusal_page(refusal)
        found = files.get(name)
        if found is None:
            return _not_found(name)
        headers = {
            **SECURITY_HEADERS,
            "etag": found.etag,
            "cache-control": "no-cache",
            "vary": "accept-encoding",
        }
        if found.etag in request.headers.get("if-none-match", ""):
            return Response(b"", status_code=304, headers=headers)
        body = found.body
        if found.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
            body = found.gzipped
            headers["content-encoding"] = "gzip"
        return Response(body, media_type=found.media_type, headers=headers)

    # Litestar matches "/studio" and "/studio/" alike (the page uses absolute URLs).
    @route(StudioApi.PAGE, include_in_schema=False, sync_to_thread=False)
    def index(request: Request[Any, Any, Any]) -> Response[bytes]:
        return serve(request, "index.html")

    @route(StudioApi.ASSET, include_in_schema=False, sync_to_thread=False)
    def asset(request: Request[Any, Any, Any], file_path: FromPath[str]) -> Response[bytes]:
        return serve(request, file_path.lstrip("/"))

    return Router(path="/", route_handlers=[index, asset])
