"""Run the standalone coordinator's process (``sage coordinator run``) with uvicorn.

``python -m sage.unified.coordinator`` does the same with settings from the
environment and TOML files.
"""

from __future__ import annotations

import gc
import socket

import uvicorn

from sage.unified.coordinator._app import create_coordinator_app
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.sdk.logsetup import configure_logging
from sage.unified.sdk.ports import port_error

__all__ = ["PORT_HINT", "run"]

PORT_HINT = "choose another port with --port (SAGE_COORDINATOR_PORT)"


def _listen_socket(host: str, port: int) -> socket.socket:
    """The bound socket uvicorn serves on, so that a taken port is one clear error here
    rather than uvicorn's log line and exit after the app has started."""
    address = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise port_error(host, port, exc, hint=PORT_HINT) from None
    return sock


def run(settings: CoordinatorSettings | None = None) -> None:
    """Serve the coordinator on ``settings.host:settings.port`` until interrupted.

    Raises:
        ConfigError: unsafe bind (checked before anything listens).
        PortInUseError: the port is taken (the message names the holder).
    """
    settings = settings or CoordinatorSettings()
    app = create_coordinator_app(settings)
    sock = _listen_socket(settings.host, settings.port)
    configure_logging(settings.log_level)
    # Move everything imported so far out of the collector's sight: a full collection
    # then scans only the registry's objects (pauses of tens of ms otherwise, measured
    # with bench/coordinator_scale.py).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    with sock:
        uvicorn.Server(config).run(sockets=[sock])
