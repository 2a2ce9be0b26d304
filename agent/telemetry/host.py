"""Host metrics (CPU, memory, disk) through psutil, read in a worker thread."""

from __future__ import annotations

import os
from pathlib import Path

import anyio.to_thread
import psutil

from sage.unified.sdk.models import HostMetrics

__all__ = ["read_host_metrics"]


async def read_host_metrics(disk_path: Path) -> HostMetrics:
    """CPU, load, memory, and the disk holding ``disk_path`` (or its nearest existing
    parent). A reading psutil cannot take is ``None``. Never raises."""
    return await anyio.to_thread.run_sync(_read, disk_path, abandon_on_cancel=True)


def _existing(path: Path) -> Path:
    path = path.expanduser()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _read(disk_path: Path) -> HostMetrics:
    metrics = HostMetrics()
    try:
        metrics.cpu_count = psutil.cpu_count() or os.cpu_count()
    except Exception:  # each reading is optional
        metrics.cpu_count = None
    try:
        # Since the previous call (0.0 on the first): no blocking interval needed.
        metrics.cpu_percent = float(psutil.cpu_percent(interval=None))
    except Exception:
        metrics.cpu_percent = None
    try:
        metrics.load_average_1m = float(os.getloadavg()[0])
    except (OSError, AttributeError):
        metrics.load_average_1m = None
    try:
        memory = psutil.virtual_memory()
        metrics.memory_total_bytes = int(memory.total)
        metrics.memory_available_bytes = int(memory.available)
    except Exception:
        metrics.memory_total_bytes = metrics.memory_available_bytes = None
    try:
        disk = psutil.disk_usage(str(_existing(disk_path)))
        metrics.disk_total_bytes = int(disk.total)
        metrics.disk_free_bytes = int(disk.free)
    except Exception:
        metrics.disk_total_bytes = metrics.disk_free_bytes = None
    return metrics
