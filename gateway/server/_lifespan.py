"""The ASGI lifespan protocol, driven from the server side."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ._types import ASGIApp, Message

__all__ = ["Lifespan", "LifespanFailed"]

log = logging.getLogger("sage.unified.gateway")


class LifespanFailed(RuntimeError):
    """The app reported ``lifespan.startup.failed`` (or raised) during startup."""


class Lifespan:
    """Runs ``app({"type": "lifespan"})`` in a task: ``startup()`` before the server
    listens, ``shutdown()`` after the last connection closed.

    The gateway's app is Litestar, which speaks lifespan; anything else that ends
    or raises before ``lifespan.startup.complete`` counts as a failed startup.
    """

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self._app = app
        self._state = state
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._started = asyncio.Event()
        self._failure: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Start the app.

        Raises:
            LifespanFailed: the app failed to start (its message says why).
        """
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        waiter = asyncio.ensure_future(self._started.wait())
        try:
            await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._failure is not None:
            raise LifespanFailed(self._failure)

    async def shutdown(self) -> None:
        """Stop the app; a failure is logged, not raised (the process is exiting)."""
        task = self._task
        if task is None or task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait({task})
        if self._failure is not None:
            log.error("application shutdown failed: %s", self._failure)

    async def _run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self._state,
        }
        try:
            await self._app(scope, self._inbox.get, self._send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The exception says more than the app's message (Litestar sends a whole
            # traceback as the message): report its innermost cause in one line.
            self._failure = _describe(exc)
            log.debug("application lifespan failed", exc_info=exc)
        finally:
            if not self._started.is_set() and self._failure is None:
                self._failure = "the application returned before it started"
            self._started.set()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._started.set()
        elif kind == "lifespan.startup.failed":
            self._failure = str(message.get("message") or "startup failed")
            self._started.set()
        elif kind == "lifespan.shutdown.failed":
            self._failure = str(message.get("message") or "shutdown failed")


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
