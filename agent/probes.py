"""HTTP probes of one engine: readiness, health and load (httpx).

* readiness: ``/health`` answers 200 *and* ``/v1/models`` lists the served model
  name. vLLM answers ``/health`` only once the model is loaded, but a proxy or an
  older server may answer early, so the model list is the second half of the proof.
* health: ``/health`` answers 200 within the probe timeout (or the round's deadline the
  supervisor gives; no answer in time is ``timed_out``, which tells a hung engine from
  one answering errors).
* load: ``/metrics`` parsed by :func:`parse_engine_load`; any failure is ``None``
  (unknown), never an error, so a drain never mistakes a failed scrape for "idle".

Probes never raise for a failed check; they return :class:`ProbeResult` with the
cause (status code or error class) that ends up in the engine's ``reason``.
"""

from __future__ import annotations

from typing import Literal

import httpx
import msgspec

from sage.unified.agent.liveness import ProbeResult
from sage.unified.agent.telemetry import parse_engine_load
from sage.unified.sdk.clock import Clock, SystemClock
from sage.unified.sdk.models import EngineLoad

__all__ = ["HttpEngineProbe"]


class _Model(msgspec.Struct):
    id: str


class _ModelList(msgspec.Struct):
    data: list[_Model]


def _error_detail(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused"
    return type(exc).__name__


class HttpEngineProbe:
    """Probes of the engine at ``base_url`` through a shared ``client``.

    The client is owned by the caller (one per agent, ``trust_env=False``); every
    request carries ``timeout_s``.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        served_model: str,
        *,
        timeout_s: float = 3.0,
        health_path: str = "/health",
        models_path: str = "/v1/models",
        metrics_path: str = "/metrics",
        metrics_flavor: Literal["vllm", "sglang"] = "vllm",
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._model = served_model
        self._timeout = httpx.Timeout(timeout_s)
        self._health = health_path
        self._models = models_path
        self._metrics = metrics_path
        self._flavor: Literal["vllm", "sglang"] = metrics_flavor
        self._clock = clock or SystemClock()

    async def _get(self, path: str, timeout_s: float | None = None) -> httpx.Response:
        timeout = self._timeout if timeout_s is None else httpx.Timeout(timeout_s)
        return await self._client.get(self._base + path, timeout=timeout)

    async def health(self, timeout_s: float | None = None) -> ProbeResult:
        try:
            response = await self._get(self._health, timeout_s)
        except httpx.HTTPError as exc:
            timed_out = isinstance(exc, httpx.TimeoutException)
            return ProbeResult(False, _error_detail(exc), timed_out=timed_out)
        if response.status_code != 200:
            return ProbeResult(False, str(response.status_code))
        return ProbeResult(True)

    async def readiness(self) -> ProbeResult:
        health = await self.health()
        if not health.ok:
            return ProbeResult(False, f"/health: {health.detail}")
        try:
            response = await self._get(self._models)
        except httpx.HTTPError as exc:
            return ProbeResult(False, f"{self._models}: {_error_detail(exc)}")
        if response.status_code != 200:
            return ProbeResult(False, f"{self._models}: {response.status_code}")
        try:
            models = msgspec.json.decode(response.content, type=_ModelList)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return ProbeResult(False, f"{self._models}: not an OpenAI model list")
        if not any(m.id == self._model for m in models.data):
            return ProbeResult(False, f"model {self._model!r} not listed by {self._models}")
        return ProbeResult(True)

    async def load(self, timeout_s: float | None = None) -> EngineLoad | None:
        try:
            response = await self._get(self._metrics, timeout_s)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            return parse_engine_load(response.text, flavor=self._flavor, now=self._clock.time())
        except ValueError:
            return None
