"""Studio's static files: served from the package with strict headers, nothing inline."""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar

from sage.unified.gateway.studio import STATIC_FILES, create_studio_router


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = Litestar([create_studio_router()])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw.localhost"
    ) as c:
        yield c


def _files() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for entry in STATIC_FILES.iterdir():
        if entry.is_file():
            out[entry.name] = entry.read_bytes()
    for entry in (STATIC_FILES / "js").iterdir():
        out[f"js/{entry.name}"] = entry.read_bytes()
    return out


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/studio/", "text/html; charset=utf-8"),
        ("/studio", "text/html; charset=utf-8"),
        ("/studio/studio.css", "text/css; charset=utf-8"),
        ("/studio/js/app.js", "text/javascript; charset=utf-8"),
        ("/studio/favicon.svg", "image/svg+xml"),
    ],
)
async def test_files_are_served_with_their_type_and_security_headers(
    client: httpx.AsyncClient, path: str, media_type: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    csp = response.headers["content-security-policy"]
    assert "script-src 'self';" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"


@pytest.mark.anyio
async def test_gzip_and_revalidation(client: httpx.AsyncClient) -> None:
    plain = await client.get("/studio/js/fleet.js", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers
    zipped = await client.get("/studio/js/fleet.js", headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == plain.content  # httpx decodes
    assert int(zipped.headers["content-length"]) < len(plain.content)
    again = await client.get(
        "/studio/js/fleet.js", headers={"if-none-match": plain.headers["etag"]}
    )
    assert again.status_code == 304
    assert again.content == b""


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path", ["/studio/nope.js", "/studio/../gateway/app.py", "/studio/js/%2e%2e/x"]
)
async def test_unknown_paths_are_404_pages(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert "import" not in response.text  # no file from outside static/


@pytest.mark.anyio
async def test_a_refused_console_says_why() -> None:
    app = Litestar([create_studio_router(refusal="Studio is not served on 10.0.0.5 <b>")])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw.localhost"
    ) as c:
        for path in ("/studio/", "/studio/js/app.js"):
            response = await c.get(path)
            assert response.status_code == 403
            assert "Studio is not served on 10.0.0.5 &lt;b&gt;" in response.text
            assert "<script" not in response.text


def test_the_console_is_small_and_has_no_inline_script_or_style() -> None:
    files = _files()
    assert {"index.html", "studio.css", "favicon.svg", "js/app.js"} <= set(files)
    total = sum(len(body) for body in files.values())
    assert total < 200 * 1024, f"Studio is {total} bytes; keep it well under 200 KB"
    page = files["index.html"].decode()
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts
    assert all('src="/studio/' in tag for tag in scripts)
    assert not re.search(r"\son[a-z]+\s*=", page), "inline event handlers break the CSP"
    assert " style=" not in page
    for name, body in files.items():
        text = body.decode()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), name
        assert "https://" not in text, f"{name} refers to another origin"


def test_every_imported_module_is_shipped() -> None:
    files = _files()
    for name, body in files.items():
        if name.endswith(".js"):
            for module in re.findall(r'from "\./([\w-]+\.js)"', body.decode()):
                assert f"js/{module}" in files, f"{name} imports missing {module}"
    assert gzip.compress(files["js/app.js"])  # sanity: readable bytes
