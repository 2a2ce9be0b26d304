"""Telemetry the agent reports: GPUs (NVML) and their faults, the host (psutil), engine
load (/metrics)."""

from __future__ import annotations

from sage.unified.agent.telemetry.engine_metrics import parse_engine_load
from sage.unified.agent.telemetry.gpu_faults import GpuFaultWatcher
from sage.unified.agent.telemetry.host import read_host_metrics
from sage.unified.agent.telemetry.nvml import GpuReader

__all__ = ["GpuFaultWatcher", "GpuReader", "parse_engine_load", "read_host_metrics"]
