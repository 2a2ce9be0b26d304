"""HTTP probes of one engine: readiness, health and load, sent by the SDK's engine client.

* readiness: ``/health`` answers 200 *and* ``/v1/models`` lists the served model
  name. vLLM answers ``/health`` only once the model is loaded, but a proxy or an
  older server may answer early, so the model list is the second half of the proof.
* health: ``/health`` answers 200 within the probe timeout (or the round's deadline the
  supervisor gives; no answer in time is ``timed_out``, which tells a hung engine from
  one answering errors).
* load: ``/metrics`` parsed by :func:`parse_engine_load`; any failure is ``None``
  (unknown), never an error, so a drain never mistakes a failed scrape for "idle".

Probes never raise for a failed check; they return :class:`ProbeResult` with the
cause (status code or why nothing answered) that ends up in the engine's ``reason``.
Each request's phases (connect, write, read) are bounded by the probe timeout, or by
the ``timeout_s`` a call gives; the whole round's deadline is the supervisor's.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from sage.unified.agent.liveness import ProbeResult
from sage.unified.agent.telemetry import parse_engine_load
from sage.unified.sdk.client import AsyncEngineClient, EngineAnswer
from sage.unified.sdk.clock import Clock, SystemClock
from sage.unified.sdk.models import EngineLoad
from sage.unified.sdk.protocol import EngineApi, ModelList

__all__ = ["HttpEngineProbe"]

_MODELS = EngineApi.MODELS.path


def _why(answer: EngineAnswer) -> str:
    return answer.failure or str(answer.status)


class HttpEngineProbe:
    """Probes of one engine through ``engine`` (whose timeout is the probe timeout).

    The engine client shares the agent's connection pool (one per agent,
    ``trust_env=False``, no redirects).
    """

    def __init__(
        self,
        engine: AsyncEngineClient,
        served_model: str,
        *,
        metrics_flavor: Literal["vllm", "sglang"] = "vllm",
        clock: Clock | None = None,
    ) -> None:
        self._engine = engine
        self._model = served_model
        self._flavor: Literal["vllm", "sglang"] = metrics_flavor
        self._clock = clock or SystemClock()

    async def health(self, timeout_s: float | None = None) -> ProbeResult:
        answer = await self._engine.read(EngineApi.HEALTH, timeout_s=timeout_s)
        if answer.status != 200:
            return ProbeResult(False, _why(answer), timed_out=answer.timed_out)
        return ProbeResult(True)

    async def readiness(self) -> ProbeResult:
        health = await self.health()
        if not health.ok:
            return ProbeResult(False, f"/health: {health.detail}")
        answer = await self._engine.read(EngineApi.MODELS)
        if answer.status != 200:
            return ProbeResult(False, f"{_MODELS}: {_why(answer)}")
        try:
            models = msgspec.json.decode(answer.content, type=ModelList)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return ProbeResult(False, f"{_MODELS}: not an OpenAI model list")
        if not any(m.id == self._model for m in models.data):
            return ProbeResult(False, f"model {self._model!r} not listed by {_MODELS}")
        return ProbeResult(True)

    async def load(self, timeout_s: float | None = None) -> EngineLoad | None:
        answer = await self._engine.read(EngineApi.METRICS, timeout_s=timeout_s)
        if answer.status != 200:
            return None
        try:
            return parse_engine_load(answer.text, flavor=self._flavor, now=self._clock.time())
        except ValueError:
            return None
