"""EngineSupervisor state machine with a fake process, fake probes and a fake clock."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import pytest

from sage.unified.agent.restart_policy import RestartPolicy
from sage.unified.agent.supervisor import EngineSupervisor, ProbeResult, SupervisorTiming
from sage.unified.sdk.clock import FakeClock
from sage.unified.sdk.models import EngineLoad, EngineSpec, Runtime
from sage.unified.sdk.states import EngineState

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Record:
    pid: int
    create_time: float = 1.0
    pgid: int = 0


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.record = Record(pid, pgid=pid)
        self._code: int | None = None
        self._done = anyio.Event()
        self.terminated_with: float | None = None
        self.state = "sleeping"
        """What psutil would say of it (``stopped`` after a SIGSTOP)."""

    @property
    def returncode(self) -> int | None:
        return self._code

    def is_alive(self) -> bool:
        return self._code is None

    async def wait(self) -> int:
        await self._done.wait()
        assert self._code is not None
        return self._code

    def exit(self, code: int) -> None:
        if self._code is None:
            self._code = code
            self._done.set()

    def refresh_tree(self) -> None:
        pass

    def status(self) -> str | None:
        return self.state if self.returncode is None else None

    async def terminate(self, grace_s: float) -> None:
        self.terminated_with = grace_s
        self.exit(-15)


@dataclass
class FakeProbe:
    clock: FakeClock
    readiness_ok: Callable[[int], bool] = lambda _n: True
    health_status: Callable[[int], int] = lambda _n: 200
    load_of: Callable[[int], EngineLoad | None] = lambda _n: EngineLoad(running=0, waiting=0)
    readiness_calls: list[float] = field(default_factory=list)
    health_calls: list[float] = field(default_factory=list)
    load_calls: list[float] = field(default_factory=list)

    async def readiness(self) -> ProbeResult:
        self.readiness_calls.append(self.clock.monotonic())
        ok = self.readiness_ok(len(self.readiness_calls))
        return ProbeResult(ok, "" if ok else "model 'm' not listed by /v1/models")

    async def health(self, timeout_s: float | None = None) -> ProbeResult:
        self.health_calls.append(self.clock.monotonic())
        status = self.health_status(len(self.health_calls))
        if status == 0:  # no answer: the round's whole deadline passes
            self.clock.advance(timeout_s if timeout_s is not None else 3.0)
            return ProbeResult(False, "timed out", timed_out=True)
        return ProbeResult(status == 200, str(status))

    async def load(self, timeout_s: float | None = None) -> EngineLoad | None:
        self.load_calls.append(self.clock.monotonic())
        await anyio.lowlevel.checkpoint()
        return self.load_of(len(self.load_calls))


def fake_sleep(clock: FakeClock) -> Callable[[float, anyio.Event], Awaitable[None]]:
    async def sleep(seconds: float, wake: anyio.Event) -> None:
        if math.isinf(seconds):
            await wake.wait()
            return
        clock.advance(max(0.0, seconds))
        await anyio.lowlevel.checkpoint()

    return sleep


class Harness:
    """A supervisor plus the record of what it did."""

    def __init__(
        self,
        probe: FakeProbe | None = None,
        *,
        spec: EngineSpec | None = None,
        policy: RestartPolicy | None = None,
        timing: SupervisorTiming | None = None,
        log_lines: list[str] | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.probe = probe or FakeProbe(self.clock)
        self.probe.clock = self.clock
        self.processes: list[FakeProcess] = [FakeProcess(100)]
        self.history: list[tuple[EngineState, str, float]] = []
        self.launches: list[tuple[int, float]] = []
        self.log_lines = log_lines or []
        self.sup = EngineSupervisor(
            engine_id="m-abcdef",
            spec=spec or EngineSpec(model="m", runtime=Runtime.SIMULATED),
            host="127.0.0.1",
            port=8900,
            gpu_ids=(0,),
            launch=self._launch,
            probe=self.probe,
            policy=policy or RestartPolicy(),
            clock=self.clock,
            timing=timing or SupervisorTiming(),
            on_change=self._changed,
            log_tail=self._tail,
            sleep=fake_sleep(self.clock),
            process=self.processes[0],
        )
        self.start = self.clock.monotonic()

    async def _launch(self, incarnation: int) -> FakeProcess:
        self.launches.append((incarnation, self.clock.monotonic() - self.start))
        proc = FakeProcess(100 + len(self.processes))
        self.processes.append(proc)
        return proc

    async def _tail(self, n: int) -> list[str]:
        return self.log_lines[-n:]

    def _changed(self, sup: EngineSupervisor) -> None:
        entry = (sup.state, sup.reason, self.clock.monotonic() - self.start)
        if not self.history or self.history[-1][:2] != entry[:2]:
            self.history.append(entry)

    def states(self) -> list[EngineState]:
        out: list[EngineState] = []
        for state, _, _ in self.history:
            if not out or out[-1] is not state:
                out.append(state)
        return out

    async def until(self, predicate: Callable[[], bool], rounds: int = 20_000) -> None:
        for _ in range(rounds):
            if predicate():
                return
            await anyio.lowlevel.checkpoint()
        raise AssertionError(
            f"condition not reached; state {self.sup.state}; history {self.history}"
        )


async def test_ready_only_after_readiness_passes() -> None:
    # Readiness = /health 200 and the model listed; the probe reports the combination.
    h = Harness(FakeProbe(FakeClock(), readiness_ok=lambda n: n >= 4))
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: h.sup.state is EngineState.READY)
        tg.cancel_scope.cancel()
    assert h.states() == [EngineState.READY]
    assert len(h.probe.readiness_calls) == 4
    ready_at = h.history[0][2]
    assert ready_at == pytest.approx(3 * 2.0)  # three failed probes, 2 s apart
    assert h.sup.info().routable
    assert h.processes[0].terminated_with is None  # cancellation leaves the engine running


async def test_three_health_failures_make_error_with_reason() -> None:
    h = Harness(
        FakeProbe(FakeClock(), health_status=lambda n: 200 if n <= 2 else 503),
        policy=RestartPolicy(max_restarts=0),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: h.sup.state is EngineState.ERROR)
        tg.cancel_scope.cancel()
    assert h.states() == [EngineState.READY, EngineState.ERROR]
    error = next(e for e in h.history if e[0] is EngineState.ERROR)
    assert error[1] == "health check failed 3 times: 503"
    # 2 good probes then 3 bad ones, 2 s apart: the fifth probe (t = 8 s) trips it.
    assert error[2] == pytest.approx(8.0)
    assert h.processes[0].terminated_with == 30.0  # the unhealthy tree is terminated


@pytest.mark.parametrize(
    ("process_state", "grace"), [("stopped", 0.0), ("tracing-stop", 0.0), ("sleeping", 3.0)]
)
async def test_a_hung_engine_is_error_6_s_after_its_last_answer(
    process_state: str, grace: float
) -> None:
    # /health answers once, then never: each round's checks share one deadline, cut so
    # that the engine is failed 6 s after its last answer (not 3 x (3 s + 3 s + 2 s)).
    h = Harness(
        FakeProbe(FakeClock(), health_status=lambda n: 200 if n <= 1 else 0),
        policy=RestartPolicy(max_restarts=0),
    )
    h.processes[0].state = process_state
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: h.sup.state is EngineState.ERROR)
        tg.cancel_scope.cancel()
    error = next(e for e in h.history if e[0] is EngineState.ERROR)
    assert error[2] == pytest.approx(6.0)
    assert error[1].startswith("health check failed 2 times in 6.0 s: timed out")
    assert ("kernel state T/t" in error[1]) is (grace == 0.0)
    # A stopped process cannot act on SIGTERM: killed at once. One that merely does not
    # answer gets one probe timeout, not the 30 s grace.
    assert h.processes[0].terminated_with == grace
    assert [t - h.start for t in h.probe.health_calls] == [0.0, 2.0, 5.0]


async def test_intermittent_failures_do_not_trip() -> None:
    statuses = [200, 503, 503, 200, 503, 503, 200]
    h = Harness(FakeProbe(FakeClock(), health_status=lambda n: statuses[min(n, len(statuses)) - 1]))
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: len(h.probe.health_calls) >= 7)
        tg.cancel_scope.cancel()
    assert h.states() == [EngineState.READY]


async def test_exit_while_starting_is_error_at_once_with_code_and_log_tail() -> None:
    h = Harness(
        FakeProbe(FakeClock(), readiness_ok=lambda _n: False),
        policy=RestartPolicy(max_restarts=0),
        log_lines=["loading weights", "CUDA out of memory"],
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: len(h.probe.readiness_calls) >= 2)
        h.processes[0].exit(1)
        await h.until(lambda: h.sup.state is EngineState.ERROR)
        tg.cancel_scope.cancel()
    reason = h.sup.reason
    assert "exited with code 1 while starting" in reason
    assert "CUDA out of memory" in reason
    assert "restarts exhausted" in reason
    # Detected without waiting for the startup allowance (15 min).
    assert h.history[-1][2] < 10.0


async def test_kill_9_reports_signal_name() -> None:
    h = Harness(policy=RestartPolicy(max_restarts=0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: h.sup.state is EngineState.READY)
        h.processes[0].exit(-9)
        await h.until(lambda: h.sup.state is EngineState.ERROR)
        tg.cancel_scope.cancel()
    assert "exited with code -9 (SIGKILL)" in h.history[1][1]


async def test_restart_backoff_new_incarnation_and_cap() -> None:
    h = Harness(policy=RestartPolicy(initial_s=2.0, max_s=60.0, max_restarts=3, window_s=600.0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        for n in range(4):
            await h.until(lambda: h.sup.state is EngineState.READY and h.sup.incarnation == n)  # noqa: B023
            h.processes[-1].exit(-9)
            # Counted from the history: the ERROR state may be left before we look.
            await h.until(lambda: h.states().count(EngineState.ERROR) == n + 1)  # noqa: B023
        await h.until(lambda: "restarts exhausted" in h.sup.reason)
        tg.cancel_scope.cancel()
    # Each restart waited 2, 4, 8 s after its failure and launched the next incarnation.
    assert [inc for inc, _ in h.launches] == [1, 2, 3]
    errors = [t for s, _, t in h.history if s is EngineState.ERROR]
    starts = [
        t for s, r, t in h.history if s is EngineState.STARTING and r.startswith("restarting")
    ]
    assert [round(b - a, 6) for a, b in zip(errors, starts, strict=False)] == [2.0, 4.0, 8.0]
    assert h.sup.restarts == 3
    assert h.sup.state is EngineState.ERROR
    assert h.sup.info().id == "m-abcdef"
    assert all(p.returncode is not None for p in h.processes)


async def test_startup_allowance_is_respected() -> None:
    spec = EngineSpec(model="m", runtime=Runtime.SIMULATED, startup_timeout_s=20.0)
    h = Harness(
        FakeProbe(FakeClock(), readiness_ok=lambda _n: False),
        spec=spec,
        policy=RestartPolicy(max_restarts=0),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: h.sup.state is EngineState.ERROR)
        tg.cancel_scope.cancel()
    failed_at = h.history[0][2]
    assert 20.0 <= failed_at <= 22.0  # not killed before the allowance, soon after it
    assert "startup allowance of 20 s" in h.history[0][1]
    assert "not listed" in h.history[0][1]


async def test_drain_waits_for_zero_in_flight_and_treats_scrape_failure_as_unknown() -> None:
    loads: list[EngineLoad | None] = [
        EngineLoad(running=0, waiting=0),  # while READY (not a drain signal)
        EngineLoad(running=3, waiting=1),
        None,  # scrape failed: unknown, keep waiting
        EngineLoad(running=1, waiting=0),
        None,
        EngineLoad(running=0, waiting=0),
    ]
    h = Harness(FakeProbe(FakeClock(), load_of=lambda n: loads[min(n, len(loads)) - 1]))
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: h.sup.state is EngineState.READY and len(h.probe.load_calls) >= 1)
        drain_called_at = h.clock.monotonic()
        info = await h.sup.drain(timeout_s=100.0)
        tg.cancel_scope.cancel()
    assert info.state is EngineState.STOPPED
    assert h.states() == [EngineState.READY, EngineState.DRAINING, EngineState.STOPPED]
    assert len(h.probe.load_calls) == 6  # stopped only after the 0/0 scrape
    drain_scrapes = h.probe.load_calls[1:]
    # The first in-flight count is read only after the routing-table propagation wait.
    assert drain_scrapes[0] - drain_called_at >= 2.0
    assert h.processes[0].terminated_with == 30.0
    assert "no requests in flight" in info.reason


async def test_drain_deadline_stops_anyway() -> None:
    h = Harness(FakeProbe(FakeClock(), load_of=lambda _n: EngineLoad(running=2, waiting=0)))
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: h.sup.state is EngineState.READY)
        start = h.clock.monotonic()
        info = await h.sup.drain(timeout_s=15.0)
        tg.cancel_scope.cancel()
    assert info.state is EngineState.STOPPED
    assert "deadline" in info.reason
    assert "2 running" in info.reason
    assert 15.0 <= h.clock.monotonic() - start <= 17.5
    assert h.processes[0].returncode is not None


async def test_drain_without_wait_returns_draining() -> None:
    h = Harness(FakeProbe(FakeClock(), load_of=lambda _n: EngineLoad(running=1, waiting=0)))
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: h.sup.state is EngineState.READY)
        info = await h.sup.drain(timeout_s=50.0, wait=False)
        assert info.state is EngineState.DRAINING
        assert not info.routable
        stopped = await h.sup.stop()  # a stop cuts the drain short
        tg.cancel_scope.cancel()
    assert stopped.state is EngineState.STOPPED
    assert stopped.reason == "stopped by request during drain"


async def test_stop_from_ready_and_from_exhausted_error() -> None:
    h = Harness()
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: h.sup.state is EngineState.READY)
        info = await h.sup.stop()
    assert info.state is EngineState.STOPPED
    assert info.pid is None
    assert h.processes[0].terminated_with == 30.0

    h2 = Harness(policy=RestartPolicy(max_restarts=0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(h2.sup.run)
        await h2.until(lambda: h2.sup.state is EngineState.READY)
        h2.processes[0].exit(3)
        await h2.until(lambda: "restarts exhausted" in h2.sup.reason)
        info = await h2.sup.stop()
    assert info.state is EngineState.STOPPED
    assert h2.states() == [EngineState.READY, EngineState.ERROR, EngineState.STOPPED]


async def test_launch_failure_counts_as_failure() -> None:
    h = Harness(policy=RestartPolicy(initial_s=1.0, max_restarts=2))

    async def broken(_incarnation: int) -> FakeProcess:
        raise OSError("vllm: not found")

    h.sup._launch = broken
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: h.sup.state is EngineState.READY)
        h.processes[0].exit(1)
        await h.until(lambda: "restarts exhausted" in h.sup.reason)
        tg.cancel_scope.cancel()
    assert "launch failed: vllm: not found" in h.sup.reason
    assert h.sup.restarts == 2


async def test_adopted_dead_engine_starts_in_error_and_restarts() -> None:
    h = Harness()
    h.sup.process = None
    h.sup.state = EngineState.ERROR
    h.sup.reason = "process gone while the agent was down"
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: h.sup.state is EngineState.READY)
        tg.cancel_scope.cancel()
    assert h.launches == [(1, 2.0)]
    assert h.sup.incarnation == 1


async def test_adopted_process_exit_code_is_unknown_not_sighup() -> None:
    h = Harness(policy=RestartPolicy(max_restarts=0))
    h.processes[0].adopted = True  # type: ignore[attr-defined]
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.sup.run)
        await h.until(lambda: h.sup.state is EngineState.READY)
        h.processes[0].exit(-1)  # what the launcher reports for a process it did not spawn
        await h.until(lambda: h.sup.state is EngineState.ERROR)
        tg.cancel_scope.cancel()
    assert "exit code unknown" in h.history[1][1]
    assert "SIGHUP" not in h.history[1][1]
