from __future__ import annotations

from pathlib import Path

import pytest

from sage.unified.agent.telemetry.host import read_host_metrics

pytestmark = pytest.mark.anyio


async def test_reads_this_host(tmp_path: Path) -> None:
    metrics = await read_host_metrics(tmp_path / "not" / "created" / "yet")
    assert metrics.cpu_count is not None
    assert metrics.cpu_count >= 1
    assert metrics.memory_total_bytes is not None
    assert metrics.memory_available_bytes is not None
    assert 0 < metrics.memory_available_bytes <= metrics.memory_total_bytes
    assert metrics.disk_total_bytes is not None
    assert metrics.disk_free_bytes is not None
    assert 0 <= metrics.disk_free_bytes <= metrics.disk_total_bytes
    assert metrics.load_average_1m is not None
    assert metrics.cpu_percent is not None
