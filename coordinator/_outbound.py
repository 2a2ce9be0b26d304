"""Calls the coordinator makes: commands to agents' APIs and health probes of engines.

A thin I/O shell over one ``httpx.AsyncClient`` (``trust_env=False``, no redirects:
a probe never follows an engine to another address). Failures become
:class:`AgentUnreachableError` (connect errors, timeouts, 5xx: 502 naming the agent)
or :class:`AgentRejectedError` (the agent's own 4xx status and message).
"""

from __future__ import annotations

import anyio
import httpx
import msgspec

from sage.unified.coordinator._errors import AgentRejectedError, AgentUnreachableError
from sage.unified.sdk.models import EngineInfo, EngineSpec, ErrorBody, decode, encode

__all__ = ["AgentApi", "new_http_client"]


def new_http_client(timeout_s: float) -> httpx.AsyncClient:
    """The client the coordinator owns when none is given (pooled, env ignored)."""
    return httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout_s, connect=3.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )


class AgentApi:
    """The agent API contract: ``POST /v1/engines``, ``POST /v1/engines/{id}/drain``,
    ``DELETE /v1/engines/{id}``, authenticated with the agent token.

    Args:
        client: the HTTP client (owned by the caller).
        token: bearer token sent to agents (``None``: no ``Authorization`` header).
    """

    def __init__(self, client: httpx.AsyncClient, token: str | None) -> None:
        self._client = client
        self._headers = {"content-type": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"

    async def start(self, agent_url: str, spec: EngineSpec) -> EngineInfo:
        """Ask the agent to start ``spec``; returns its answer (state ``STARTING``)."""
        response = await self._call("POST", agent_url, "/v1/engines", encode(spec))
        try:
            return decode(response.content, EngineInfo)
        except msgspec.DecodeError as exc:
            raise AgentUnreachableError(
                f"agent at {agent_url} answered an invalid engine: {exc}"
            ) from None

    async def drain(
        self, agent_url: str, engine_id: str, timeout_s: float | None
    ) -> EngineInfo | None:
        """Start a drain without waiting for it; the agent's view of the engine, if it sent one."""
        query = "?wait=false" + (f"&timeout_s={timeout_s:g}" if timeout_s else "")
        response = await self._call("POST", agent_url, f"/v1/engines/{engine_id}/drain{query}")
        return _maybe_engine(response)

    async def delete(self, agent_url: str, engine_id: str) -> EngineInfo | None:
        """Stop an engine at once; the agent's view of the engine, if it sent one."""
        response = await self._call("DELETE", agent_url, f"/v1/engines/{engine_id}")
        return _maybe_engine(response)

    async def probe_health(self, engine_url: str, timeout_s: float) -> tuple[bool, str]:
        """``GET {engine_url}/health``: ``(True, "ok")`` on 200, else ``(False, why)``."""
        try:
            with anyio.fail_after(timeout_s):
                response = await self._client.get(f"{engine_url}/health", timeout=timeout_s)
        except TimeoutError:
            return False, f"timed out after {timeout_s:g} s"
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if response.status_code != 200:
            return False, f"/health answered {response.status_code}"
        return True, "ok"

    async def _call(
        self, method: str, agent_url: str, path: str, content: bytes | None = None
    ) -> httpx.Response:
        url = agent_url.rstrip("/") + path
        try:
            response = await self._client.request(
                method, url, content=content, headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise AgentUnreachableError(
                f"agent at {agent_url} is unreachable: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code >= 500:
            raise AgentUnreachableError(
                f"agent at {agent_url} answered {response.status_code}: {_message(response)}"
            )
        if response.status_code >= 400:
            raise AgentRejectedError(
                f"agent at {agent_url} refused: {_message(response)}",
                status_code=response.status_code,
            )
        return response


def _maybe_engine(response: httpx.Response) -> EngineInfo | None:
    try:
        return decode(response.content, EngineInfo)
    except msgspec.DecodeError:
        return None


def _message(response: httpx.Response) -> str:
    try:
        return decode(response.content, ErrorBody).error.message
    except msgspec.DecodeError:
        return response.text[:300] or response.reason_phrase
