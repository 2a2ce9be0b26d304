"""Keeping the agent's state file current: load once, then save after every change, coalesced.

The :class:`~sage.unified.agent.service.Agent` marks its state dirty on every engine or GPU
health change; :meth:`StateSaver.run` writes one snapshot per burst of changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import anyio

from sage.unified.agent.statefile import AgentState, StateFile, StateFileError

__all__ = ["StateSaver"]

log = logging.getLogger(__name__)


class StateSaver:
    """Loads and saves the state file in ``state_dir``.

    Args:
        state_dir: the agent's state folder.
        snapshot: builds the state to save, called at each save.
    """

    def __init__(self, state_dir: Path, snapshot: Callable[[], AgentState]) -> None:
        self._statefile = StateFile.in_dir(state_dir)
        self._snapshot = snapshot
        self._dirty = anyio.Event()

    def load(self) -> AgentState:
        """The saved state; an empty one (logged) when the file cannot be read."""
        try:
            return self._statefile.load()
        except StateFileError as exc:
            log.error("%s; starting with no engines", exc)
            return AgentState()

    def mark_dirty(self) -> None:
        """Ask :meth:`run` for a save."""
        self._dirty.set()

    async def save(self) -> None:
        """Write a snapshot now; a write that fails is logged, not raised."""
        try:
            await self._statefile.save(self._snapshot())
        except OSError as exc:
            log.error("could not write the state file %s: %s", self._statefile.path, exc)

    async def run(self) -> None:
        """Save after each :meth:`mark_dirty`, one save for changes made meanwhile.

        Runs until cancelled.
        """
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            await self.save()
