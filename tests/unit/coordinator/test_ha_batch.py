"""The etcd writer (TxnBatcher) survives a send that fails in a way the etcd client did not
map: its callers get an unavailable store, and the next transaction goes through. A
gateway's batcher once died of such a failure during an etcd outage, and every report and
write of that gateway answered 500 until it was restarted."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.lowlevel
import pytest

from sage.unified.coordinator._etcd import Compare, EtcdUnavailableError, PutOp, TxnResult
from sage.unified.coordinator._etcd._types import PutResult, ResponseHeader, TxnOp
from sage.unified.coordinator._ha._batch import TxnBatcher

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FlakyEtcd:
    """Fails its first ``broken`` transactions with an error of no etcd kind."""

    def __init__(self, broken: int) -> None:
        self.broken = broken
        self.calls = 0

    async def txn(
        self, compares: Sequence[Compare], ops: Sequence[TxnOp], *, timeout_s: float | None = None
    ) -> TxnResult:
        self.calls += 1
        await anyio.lowlevel.checkpoint()
        if self.calls <= self.broken:
            raise RuntimeError("a failure the etcd client did not map")
        header = ResponseHeader(revision=self.calls)
        return TxnResult(header, True, tuple(PutResult(header) for _ in ops))


@pytest.mark.parametrize("writers", [1, 3], ids=["alone", "joined"])
async def test_an_unexpected_send_failure_reaches_its_callers_and_the_writer_goes_on(
    writers: int,
) -> None:
    etcd = FlakyEtcd(broken=1)
    batcher = TxnBatcher(etcd, 1.0)  # type: ignore[arg-type]
    failures: list[BaseException] = []

    async def write(key: str) -> None:
        try:
            await batcher.txn([], [PutOp(key, "v")])
        except EtcdUnavailableError as exc:
            failures.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as outer:
            outer.start_soon(batcher.run)
            async with anyio.create_task_group() as first:
                for i in range(writers):
                    first.start_soon(write, f"k{i}")
            assert len(failures) == writers
            assert all(isinstance(f, EtcdUnavailableError) and f.maybe_applied for f in failures)
            # The writer still runs: the next transaction is sent and answered.
            result = await batcher.txn([], [PutOp("later", "v")])
            assert result.succeeded
            outer.cancel_scope.cancel()


async def test_a_control_plane_loop_that_fails_is_started_again() -> None:
    # Every background loop of the etcd control plane runs under keep_running: before, one
    # unexpected error in one loop ended the task group and with it every other loop.
    from sage.unified.coordinator._backend import keep_running

    runs: list[int] = []
    third = anyio.Event()

    async def flaky_loop() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("one bad record")
        third.set()
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(keep_running, "flaky loop", flaky_loop)
            await third.wait()
            group.cancel_scope.cancel()
    assert runs == [0, 1, 2]
