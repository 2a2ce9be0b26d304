from __future__ import annotations

from contextlib import aclosing

import anyio
import pytest

from sage.unified.coordinator._publisher import TablePublisher
from sage.unified.coordinator._registry import Registry
from sage.unified.sdk.clock import FakeClock
from sage.unified.sdk.models import EngineInfo
from sage.unified.sdk.states import EngineState


def registered(engine_id: str) -> EngineInfo:
    return EngineInfo(id=engine_id, model="m", url="http://127.0.0.1:8901", state=EngineState.READY)


@pytest.mark.anyio
@pytest.mark.parametrize("coalesce_s", [0.0, 0.02])
async def test_watchers_see_every_change_eventually(coalesce_s: float) -> None:
    registry = Registry(FakeClock())
    publisher = TablePublisher(registry, coalesce_s)
    publisher.open()
    seen: list[list[str]] = []
    done = anyio.Event()

    async def consume() -> None:
        async with aclosing(publisher.watch()) as tables:
            async for table in tables:
                seen.append([b.id for b in table.backends])
                if table.revision >= 2:
                    done.set()
                    return

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.run)
            tg.start_soon(consume)
            await anyio.sleep(0.01)
            registry.put_registered(registered("r1"))
            publisher.notify()
            registry.put_registered(registered("r2"))
            publisher.notify()
            await done.wait()
            tg.cancel_scope.cancel()
    assert seen[0] == []
    assert seen[-1] == ["r1", "r2"]


@pytest.mark.anyio
async def test_wait_times_out_with_current_table_and_ahead_returns_at_once() -> None:
    registry = Registry(FakeClock())
    publisher = TablePublisher(registry, 0.0)
    publisher.open()
    with anyio.fail_after(5):
        table = await publisher.wait_for_change(after=0, timeout=0.05)
        assert table.revision == 0
        table = await publisher.wait_for_change(after=10, timeout=5)  # another history
        assert table.revision == 0
