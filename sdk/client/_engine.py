"""The client of an engine's own API (vLLM's): health, served models, metrics text.

What the control plane probes for directly registered engines, what a static gateway
reads to learn its backends' models, and what an agent checks of the engines it runs
(:meth:`AsyncEngineClient.read`). Never follows redirects (an engine must not send a
probe to another address).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from sage.unified.sdk.client._errors import (
    APIStatusError,
    GatewayUnreachableError,
    SageClientError,
)
from sage.unified.sdk.client._executor import AsyncCaller
from sage.unified.sdk.protocol import Endpoint, EngineApi

__all__ = ["AsyncEngineClient", "EngineAnswer"]

_ANY_STATUS = frozenset(range(100, 600))


@dataclass(frozen=True, slots=True)
class EngineAnswer:
    """What one :meth:`AsyncEngineClient.read` got: an answer of any status, or why none.

    Attributes:
        status: the answer's HTTP status; ``None`` when nothing answered.
        content: the answer's body (empty without an answer).
        failure: why nothing answered: ``"timed out"``, ``"connection refused"`` (no
            connection could be opened) or the transport error's class name; ``""`` with
            an answer.
        timed_out: nothing answered within the timeout (a hung engine, as opposed to one
            that refuses or answers errors).
    """

    status: int | None
    content: bytes = b""
    failure: str = ""
    timed_out: bool = False

    @property
    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.content.decode("utf-8", errors="replace")


def _no_answer(exc: Exception) -> EngineAnswer:
    if isinstance(exc, GatewayUnreachableError):
        if exc.timed_out:
            return EngineAnswer(None, failure="timed out", timed_out=True)
        if exc.connect_failed:
            return EngineAnswer(None, failure="connection refused")
        exc = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    return EngineAnswer(None, failure=type(exc).__name__)


class AsyncEngineClient:
    """Reads one engine.

    Args:
        url: the engine's base URL (without ``/v1``).
        http: a connection pool shared with other clients (not closed by :meth:`aclose`).
        timeout: seconds per call; every phase of a request (connect, write, pool, read)
            gets this much, or the ``timeout_s`` a call gives.
    """

    def __init__(
        self,
        url: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: float = 3.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout = timeout
        # The caller bounds connect by min(connect_timeout, the call's timeout): with no
        # cap of its own, connect gets the call's timeout like the other phases.
        self._caller = AsyncCaller(
            url, timeout=timeout, connect_timeout=math.inf, http=http, transport=transport
        )

    async def read(
        self, endpoint: Endpoint[None, Any], *, timeout_s: float | None = None
    ) -> EngineAnswer:
        """``GET`` one of :class:`~sage.unified.sdk.protocol.EngineApi`'s endpoints; never raises.

        Any status is an answer (the caller decides what counts as healthy); a transport
        failure is an answer without a status that says why. ``timeout_s`` (default: the
        client's) bounds each phase of the request, not the whole call: wrap the call in a
        deadline to bound an engine that trickles its answer.

        Cancellation: nothing to clean up; the connection is dropped.
        """
        try:
            reply = await self._caller.send(endpoint, read_timeout_s=timeout_s, expect=_ANY_STATUS)
        except (GatewayUnreachableError, httpx.HTTPError) as exc:
            # An httpx.HTTPError that is not a transport error (a body that cannot be
            # decoded) passes through the caller: it is a failed read all the same.
            return _no_answer(exc)
        return EngineAnswer(reply.status, reply.content)

    async def health(self) -> tuple[bool, str]:
        """``GET /health``: ``(True, "ok")`` on 200, else ``(False, why)``. Never raises."""
        # httpx's timeouts are per phase: one deadline bounds an engine that trickles.
        with anyio.move_on_after(self._timeout):
            try:
                reply = await self._caller.send(EngineApi.HEALTH)
            except APIStatusError as exc:
                return False, f"/health answered {exc.status_code}"
            except SageClientError as exc:
                return False, str(exc)
            if reply.status != 200:
                return False, f"/health answered {reply.status}"
            return True, "ok"
        return False, f"timed out after {self._timeout:g} s"

    async def models(self) -> list[str]:
        """The served model ids, sorted.

        Raises:
            SageClientError: unreachable, a non-2xx answer, or not a model list.
        """
        listing = await self._caller.call(EngineApi.MODELS)
        return sorted(card.id for card in listing.data)

    async def aclose(self) -> None:
        await self._caller.aclose()
