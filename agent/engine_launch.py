"""Starting an engine's process: the model checks, the launch plan, the process itself.

:class:`EngineLauncher` is what the :class:`~sage.unified.agent.service.Agent` calls for a
first start and what each supervisor calls to restart its engine; the process is started
by an injectable function (:func:`sage.unified.agent.launcher.launch` by default) so tests
can run without spawning anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio.to_thread

from sage.unified.agent.allowlist import model_allowed, outside_model_roots
from sage.unified.agent.errors import ModelNotAllowedError
from sage.unified.agent.launcher import ProcessRecord, launch
from sage.unified.agent.logfiles import engine_log_path
from sage.unified.agent.runtimes import LaunchPlan, build_launch_plan
from sage.unified.agent.settings import AgentSettings
from sage.unified.agent.supervisor import ProcessHandle
from sage.unified.sdk.models import EngineSpec

__all__ = ["AdoptProcess", "EngineLauncher", "LaunchProcess"]

LaunchProcess = Callable[[LaunchPlan, Path, Path], Awaitable[ProcessHandle]]
"""``launch(plan, log_path, cwd)``."""
AdoptProcess = Callable[[ProcessRecord], ProcessHandle | None]


async def _default_launch(plan: LaunchPlan, log_path: Path, cwd: Path) -> ProcessHandle:
    return await launch(plan, log_path=log_path, cwd=cwd)


class EngineLauncher:
    """Checks a spec's model and starts its engine process.

    Args:
        settings: the agent configuration (allowlist, model roots, runtimes, folders).
        launch_process: starts a process for a plan (default: ``launcher.launch``).
    """

    def __init__(self, settings: AgentSettings, launch_process: LaunchProcess | None) -> None:
        self._settings = settings
        self._launch_fn: LaunchProcess = launch_process or _default_launch

    async def check_model(self, spec: EngineSpec) -> None:
        """Raises: ModelNotAllowedError (allowlist, or a path outside the model roots)."""
        if not model_allowed(spec.model, self._settings.model_allowlist):
            raise ModelNotAllowedError(
                f"model {spec.model!r} is not allowed on this agent (allowlist: "
                f"{', '.join(self._settings.model_allowlist) or 'empty'})"
            )
        roots = self._settings.model_root_dirs()
        # realpath may touch a slow (network) filesystem: off the event loop.
        why = await anyio.to_thread.run_sync(outside_model_roots, spec.model, roots)
        if why is not None:
            raise ModelNotAllowedError(why)

    async def launch(
        self, engine_id: str, spec: EngineSpec, port: int, gpu_ids: tuple[int, ...] | list[int]
    ) -> ProcessHandle:
        """Start ``engine_id``'s process for ``spec`` on ``port`` and ``gpu_ids``.

        Raises:
            RuntimeUnavailableError, LaunchError: the process could not be started.
        """
        settings = self._settings
        plan = build_launch_plan(
            spec,
            host=settings.engine_bind_host,
            port=port,
            gpu_ids=gpu_ids,
            config=settings.runtime_config(),
            drain_timeout_s=spec.drain_timeout_s,
        )
        log_path = engine_log_path(settings.log_dir, engine_id)
        return await self._launch_fn(plan, log_path, settings.state_dir)
