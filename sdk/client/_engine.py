"""The client of an engine's own API (vLLM's): health, served models, metrics text.

What the control plane probes for directly registered engines, and what a static gateway
reads to learn its backends' models. Never follows redirects (an engine must not send a
probe to another address).
"""

from __future__ import annotations

import anyio
import httpx

from sage.unified.sdk.client._errors import APIStatusError, SageClientError
from sage.unified.sdk.client._executor import AsyncCaller
from sage.unified.sdk.protocol import EngineApi

__all__ = ["AsyncEngineClient"]


class AsyncEngineClient:
    """Reads one engine.

    Args:
        url: the engine's base URL (without ``/v1``).
        http: a connection pool shared with other clients (not closed by :meth:`aclose`).
        timeout: seconds per call.
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
        self._caller = AsyncCaller(
            url, timeout=timeout, connect_timeout=timeout, http=http, transport=transport
        )

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
