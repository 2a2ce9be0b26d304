"""Run the standalone coordinator's process (``sage coordinator run``) with uvicorn.

``python -m sage.unified.coordinator`` does the same with settings from the
environment and TOML files.
"""

from __future__ import annotations

import gc

import uvicorn

from sage.unified.coordinator._app import create_coordinator_app
from sage.unified.coordinator._settings import CoordinatorSettings

__all__ = ["run"]


def run(settings: CoordinatorSettings | None = None) -> None:
    """Serve the coordinator on ``settings.host:settings.port`` until interrupted.

    Raises:
        ConfigError: unsafe bind (checked before anything listens).
    """
    settings = settings or CoordinatorSettings()
    app = create_coordinator_app(settings)
    # Move everything imported so far out of the collector's sight: a full collection
    # then scans only the registry's objects (pauses of tens of ms otherwise, measured
    # with bench/coordinator_scale.py).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
