"""Typed clients of the management API (gateway/coordinator) and of the agent API.

Each method is described once as a :class:`_Call` (method, path, body, decoder);
the sync and async clients only execute calls, so both speak the same protocol.
Connection failures raise :class:`GatewayUnreachableError` (one line, fit for a
CLI); non-2xx answers raise :class:`APIStatusError` subclasses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx
import msgspec

from sage.unified.sdk.client._config import normalize_base_url
from sage.unified.sdk.client._core import describe_exception
from sage.unified.sdk.client._errors import (
    GatewayUnreachableError,
    InvalidResponseError,
    status_error,
)
from sage.unified.sdk.models import (
    AgentSummary,
    EngineInfo,
    EngineKind,
    EngineSpec,
    EngineStartRequest,
    EngineStopRequest,
    GpuInfo,
    RegisterEngineRequest,
    RoutingTable,
    encode,
)

__all__ = [
    "AgentClient",
    "AsyncAgentClient",
    "AsyncGatewayManagementClient",
    "GatewayManagementClient",
    "HostGpus",
]

T = TypeVar("T")
_MGMT = "/v1/management"


class HostGpus(msgspec.Struct, kw_only=True):
    """The GPUs of one agent's host (``GET /v1/management/gpu``)."""

    agent_id: str
    host: str = ""
    gpus: list[GpuInfo] = msgspec.field(default_factory=list)
    gpu_error: str | None = None


def _decode(content: bytes, type_: Any, *, key: str | None = None, url: str = "") -> Any:
    """Decode JSON into ``type_``; a list may also come wrapped as ``{key: [...]}``."""
    try:
        data = msgspec.json.decode(content)
        if key is not None and isinstance(data, Mapping):
            data = data.get(key, data.get("data"))
        return msgspec.convert(data, type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidResponseError(f"{url} answered with an unexpected body: {exc}") from exc


def _json_object(content: bytes, url: str) -> dict[str, Any]:
    value = _decode(content, dict[str, Any], url=url) if content else {}
    result: dict[str, Any] = value
    return result


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    method: str
    path: str
    decode: Callable[[bytes, str], T]
    params: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    extra_timeout_s: float = 0.0
    """Added to the read timeout (long-polls, waiting drains)."""
    by_status: Callable[[int], T] | None = None
    """Decode from the status alone, 503 included (``/readyz`` answers 503 when not ready)."""


def _ready(status: int) -> bool:
    return 200 <= status < 300


def _unused(content: bytes, url: str) -> bool:
    raise AssertionError("decoded by status")


# --------------------------------------------------------------- management calls
def _engines() -> _Call[list[EngineInfo]]:
    return _Call(
        "GET", f"{_MGMT}/engines", lambda c, u: _decode(c, list[EngineInfo], key="engines", url=u)
    )


def _start_engine(spec: EngineSpec, host: str | None) -> _Call[EngineInfo]:
    body = encode(EngineStartRequest(spec=spec, host=host))
    return _Call(
        "POST", f"{_MGMT}/engines/start", lambda c, u: _decode(c, EngineInfo, url=u), body=body
    )


def _stop_engine(engine_id: str, drain: bool, timeout_s: float | None) -> _Call[EngineInfo]:
    body = encode(EngineStopRequest(engine_id=engine_id, drain=drain, timeout_s=timeout_s))
    return _Call(
        "POST", f"{_MGMT}/engines/stop", lambda c, u: _decode(c, EngineInfo, url=u), body=body
    )


def _register_engine(
    model: str, url: str, kind: EngineKind, engine_id: str | None
) -> _Call[EngineInfo]:
    body = encode(RegisterEngineRequest(model=model, url=url, kind=kind, id=engine_id))
    return _Call(
        "POST", f"{_MGMT}/engines/register", lambda c, u: _decode(c, EngineInfo, url=u), body=body
    )


def _backends(after: int | None, wait: float | None) -> _Call[RoutingTable]:
    params = {"after": str(after), "wait": f"{wait:g}"} if after is not None and wait else {}
    return _Call(
        "GET",
        f"{_MGMT}/backends",
        lambda c, u: _decode(c, RoutingTable, url=u),
        params=params,
        extra_timeout_s=wait or 0.0,
    )


def _gpus_by_host() -> _Call[list[HostGpus]]:
    return _Call("GET", f"{_MGMT}/gpu", lambda c, u: _decode(c, list[HostGpus], key="hosts", url=u))


def _agents() -> _Call[list[AgentSummary]]:
    return _Call(
        "GET", f"{_MGMT}/agents", lambda c, u: _decode(c, list[AgentSummary], key="agents", url=u)
    )


def _health(path: str) -> _Call[dict[str, Any]]:
    return _Call("GET", path, _json_object)


def _readyz() -> _Call[bool]:
    return _Call("GET", "/readyz", _unused, by_status=_ready)


# -------------------------------------------------------------------- agent calls
def _agent_engines() -> _Call[list[EngineInfo]]:
    return _Call(
        "GET", "/v1/engines", lambda c, u: _decode(c, list[EngineInfo], key="engines", url=u)
    )


def _agent_start(spec: EngineSpec) -> _Call[EngineInfo]:
    return _Call(
        "POST", "/v1/engines", lambda c, u: _decode(c, EngineInfo, url=u), body=encode(spec)
    )


def _agent_drain(engine_id: str, wait: bool, timeout_s: float | None) -> _Call[EngineInfo]:
    params = {"wait": "true" if wait else "false"}
    if timeout_s is not None:
        params["timeout_s"] = f"{timeout_s:g}"
    return _Call(
        "POST",
        f"/v1/engines/{engine_id}/drain",
        lambda c, u: _decode(c, EngineInfo, url=u),
        params=params,
        # A waiting drain answers only when the engine stopped (default deadline 300 s + kill).
        extra_timeout_s=((timeout_s or 300.0) + 60.0) if wait else 0.0,
    )


def _agent_stop(engine_id: str) -> _Call[EngineInfo]:
    return _Call(
        "DELETE",
        f"/v1/engines/{engine_id}",
        lambda c, u: _decode(c, EngineInfo, url=u),
        extra_timeout_s=60.0,
    )


def _decode_lines(content: bytes, url: str) -> list[str]:
    try:
        data = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return content.decode("utf-8", "replace").splitlines()
    if isinstance(data, Mapping):
        data = data.get("lines", [])
    return [str(line) for line in data] if isinstance(data, list) else []


def _agent_logs(engine_id: str, tail: int) -> _Call[list[str]]:
    return _Call("GET", f"/v1/engines/{engine_id}/logs", _decode_lines, params={"tail": str(tail)})


def _agent_gpus() -> _Call[list[GpuInfo]]:
    return _Call("GET", "/v1/gpus", lambda c, u: _decode(c, list[GpuInfo], key="gpus", url=u))


# ---------------------------------------------------------------------- executors
def _finish(call: _Call[T], url: str, response: httpx.Response) -> T:
    if call.by_status is not None and (
        response.status_code == 503 or 200 <= response.status_code < 300
    ):
        return call.by_status(response.status_code)
    if not 200 <= response.status_code < 300:
        raise status_error(response.status_code, response.content, url=url)
    return call.decode(response.content, url)


class _SyncBase:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 3.0,
        trust_env: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = normalize_base_url(url)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, trust_env=trust_env, transport=transport)

    def _run(self, call: _Call[T]) -> T:
        read = self._timeout + call.extra_timeout_s
        timeout = httpx.Timeout(connect=self._connect_timeout, read=read, write=read, pool=read)
        url = self.url + call.path
        try:
            response = self._http.request(
                call.method,
                url,
                params=call.params,
                content=call.body,
                timeout=timeout,
                headers={"Content-Type": "application/json"} if call.body is not None else None,
            )
        except httpx.TransportError as exc:
            raise GatewayUnreachableError(self.url, describe_exception(exc)) from exc
        return _finish(call, url, response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _AsyncBase:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 3.0,
        trust_env: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = normalize_base_url(url)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(headers=headers, trust_env=trust_env, transport=transport)

    async def _run(self, call: _Call[T]) -> T:
        read = self._timeout + call.extra_timeout_s
        timeout = httpx.Timeout(connect=self._connect_timeout, read=read, write=read, pool=read)
        url = self.url + call.path
        try:
            response = await self._http.request(
                call.method,
                url,
                params=call.params,
                content=call.body,
                timeout=timeout,
                headers={"Content-Type": "application/json"} if call.body is not None else None,
            )
        except httpx.TransportError as exc:
            raise GatewayUnreachableError(self.url, describe_exception(exc)) from exc
        return _finish(call, url, response)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


_MGMT_DOC = """

    Args:
        url: the gateway's (or standalone coordinator's) base URL.
        token: the admin token (sent as ``Authorization: Bearer``).
        timeout: read timeout per call, seconds (long-polls and drains add their wait).
        connect_timeout: seconds.
        trust_env: let httpx read proxies/certificates from the environment.
        transport: an httpx transport (tests).

    Raises (every method):
        GatewayUnreachableError: no connection.
        APIStatusError: a non-2xx answer (401/403 token, 404 unknown engine, 409 no room...).
        InvalidResponseError: an answer that is not the expected JSON.
"""


class GatewayManagementClient(_SyncBase):
    __doc__ = "Sync client of ``/v1/management/*`` (engines, backends, agents, GPUs)." + _MGMT_DOC

    def engines(self) -> list[EngineInfo]:
        """Every engine the control plane knows."""
        return self._run(_engines())

    def start_engine(self, spec: EngineSpec, host: str | None = None) -> EngineInfo:
        """Start an engine (placed automatically unless ``host`` names an agent id or address)."""
        return self._run(_start_engine(spec, host))

    def stop_engine(
        self, engine_id: str, drain: bool = True, timeout_s: float | None = None
    ) -> EngineInfo:
        """Drain (default) or stop an engine; unregisters an engine no agent manages."""
        return self._run(_stop_engine(engine_id, drain, timeout_s))

    def register_engine(
        self, model: str, url: str, kind: EngineKind = EngineKind.LLM, engine_id: str | None = None
    ) -> EngineInfo:
        """Register an engine that no agent manages."""
        return self._run(_register_engine(model, url, kind, engine_id))

    def backends(self, after: int | None = None, wait: float | None = None) -> RoutingTable:
        """The routing table; with ``after``/``wait``, long-poll until the revision passes ``after``."""
        return self._run(_backends(after, wait))

    def gpus(self) -> list[HostGpus]:
        """The GPUs of every agent's host."""
        return self._run(_gpus_by_host())

    def agents(self) -> list[AgentSummary]:
        return self._run(_agents())

    def health(self) -> dict[str, Any]:
        """``GET /health`` (liveness)."""
        return self._run(_health("/health"))

    def readyz(self) -> bool:
        """``GET /readyz``: ``True`` when ready, ``False`` on 503."""
        return self._run(_readyz())


class AsyncGatewayManagementClient(_AsyncBase):
    __doc__ = "Async client of ``/v1/management/*`` (same methods as the sync one)." + _MGMT_DOC

    async def engines(self) -> list[EngineInfo]:
        return await self._run(_engines())

    async def start_engine(self, spec: EngineSpec, host: str | None = None) -> EngineInfo:
        return await self._run(_start_engine(spec, host))

    async def stop_engine(
        self, engine_id: str, drain: bool = True, timeout_s: float | None = None
    ) -> EngineInfo:
        return await self._run(_stop_engine(engine_id, drain, timeout_s))

    async def register_engine(
        self, model: str, url: str, kind: EngineKind = EngineKind.LLM, engine_id: str | None = None
    ) -> EngineInfo:
        return await self._run(_register_engine(model, url, kind, engine_id))

    async def backends(self, after: int | None = None, wait: float | None = None) -> RoutingTable:
        return await self._run(_backends(after, wait))

    async def gpus(self) -> list[HostGpus]:
        return await self._run(_gpus_by_host())

    async def agents(self) -> list[AgentSummary]:
        return await self._run(_agents())

    async def health(self) -> dict[str, Any]:
        return await self._run(_health("/health"))

    async def readyz(self) -> bool:
        return await self._run(_readyz())


_AGENT_DOC = """

    Paths: ``GET/POST /v1/engines``, ``POST /v1/engines/{id}/drain?wait=&timeout_s=``,
    ``DELETE /v1/engines/{id}``, ``GET /v1/engines/{id}/logs?tail=``, ``GET /v1/gpus``,
    ``/healthz``, ``/readyz``. Arguments and errors as for the management client
    (``token`` is the agent's admin token).
"""


class AgentClient(_SyncBase):
    __doc__ = "Sync client of one agent's API." + _AGENT_DOC

    def engines(self) -> list[EngineInfo]:
        return self._run(_agent_engines())

    def start_engine(self, spec: EngineSpec) -> EngineInfo:
        return self._run(_agent_start(spec))

    def drain(
        self, engine_id: str, wait: bool = False, timeout_s: float | None = None
    ) -> EngineInfo:
        """Drain an engine; with ``wait`` the call returns when it has stopped."""
        return self._run(_agent_drain(engine_id, wait, timeout_s))

    def stop(self, engine_id: str) -> EngineInfo:
        """Stop an engine now (SIGTERM, then SIGKILL after the agent's grace)."""
        return self._run(_agent_stop(engine_id))

    def logs(self, engine_id: str, tail: int = 100) -> list[str]:
        """The last ``tail`` lines of the engine's log."""
        return self._run(_agent_logs(engine_id, tail))

    def gpus(self) -> list[GpuInfo]:
        return self._run(_agent_gpus())

    def healthz(self) -> dict[str, Any]:
        return self._run(_health("/healthz"))

    def readyz(self) -> bool:
        return self._run(_readyz())


class AsyncAgentClient(_AsyncBase):
    __doc__ = "Async client of one agent's API." + _AGENT_DOC

    async def engines(self) -> list[EngineInfo]:
        return await self._run(_agent_engines())

    async def start_engine(self, spec: EngineSpec) -> EngineInfo:
        return await self._run(_agent_start(spec))

    async def drain(
        self, engine_id: str, wait: bool = False, timeout_s: float | None = None
    ) -> EngineInfo:
        return await self._run(_agent_drain(engine_id, wait, timeout_s))

    async def stop(self, engine_id: str) -> EngineInfo:
        return await self._run(_agent_stop(engine_id))

    async def logs(self, engine_id: str, tail: int = 100) -> list[str]:
        return await self._run(_agent_logs(engine_id, tail))

    async def gpus(self) -> list[GpuInfo]:
        return await self._run(_agent_gpus())

    async def healthz(self) -> dict[str, Any]:
        return await self._run(_health("/healthz"))

    async def readyz(self) -> bool:
        return await self._run(_readyz())
