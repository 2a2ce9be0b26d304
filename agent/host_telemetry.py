"""What the agent last read about its host: the GPUs (with their health) and host metrics.

The :class:`~sage.unified.agent.service.Agent` refreshes it every heartbeat and reports
what it holds; placement (``assign_gpus``) reads the same GPU list.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sage.unified.agent.gpu_health import GpuHealth
from sage.unified.agent.telemetry import read_host_metrics
from sage.unified.sdk.models import GpuInfo, HostMetrics

__all__ = ["HostTelemetry"]

log = logging.getLogger(__name__)


class HostTelemetry:
    """The last reading of the host's GPUs and metrics.

    Attributes:
        gpus: the GPUs as NVML last listed them, annotated by ``gpu_health``.
        gpu_error: why the GPUs could not be read (``None`` when they were).
        gpus_read: whether the GPUs were read at least once.
        host_metrics: the last host metrics (``None`` until read).

    Args:
        gpu_reader: the NVML reader (``read()`` and ``aclose()``); tests pass a fake.
        gpu_health: quarantine state that annotates every GPU list.
        disk_path: the folder whose file system the disk metrics describe.
    """

    def __init__(self, gpu_reader: Any, gpu_health: GpuHealth, disk_path: Path) -> None:
        self._gpu_reader = gpu_reader
        self._gpu_health = gpu_health
        self._disk_path = disk_path
        self.gpus: list[GpuInfo] = []
        self.gpu_error: str | None = "not read yet"
        self.gpus_read = False
        self.host_metrics: HostMetrics | None = None

    async def refresh_gpus(self) -> None:
        """Read the GPUs again and annotate them with their health."""
        gpus, error = await self._gpu_reader.read()
        self.gpus, self.gpu_error = self._gpu_health.annotate(gpus), error
        self.gpus_read = True

    async def refresh(self) -> None:
        """Read the GPUs, check their fault counters and read the host metrics."""
        await self.refresh_gpus()
        await self._gpu_health.check_counters()
        try:
            self.host_metrics = await read_host_metrics(self._disk_path)
        except OSError as exc:
            log.warning("host metrics unavailable: %s", exc)

    def reannotate(self) -> None:
        """Annotate the last GPU list again, after a GPU's health changed."""
        self.gpus = self._gpu_health.annotate(self.gpus)

    async def aclose(self) -> None:
        """Close the GPU reader."""
        await self._gpu_reader.aclose()
