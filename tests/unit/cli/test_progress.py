"""The plain form of the CLI's progress display (stderr is not a terminal)."""

from __future__ import annotations

import io

from sage.unified.cli._progress import WaitProgress, plain_line_due


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_on_every_new_status_and_every_interval_otherwise() -> None:
    clock, out = FakeClock(), io.StringIO()
    with WaitProgress("waiting for X", stream=out, interval_s=10, clock=clock) as progress:
        progress.update("STARTING")
        clock.now += 4
        progress.update("STARTING")  # same status, 4 s later: no line
        clock.now += 7
        progress.update("STARTING")  # 11 s after the last line
        clock.now += 1
        progress.update("READY")
    assert out.getvalue().splitlines() == [
        "waiting for X: STARTING (0 s)",
        "waiting for X: STARTING (11 s)",
        "waiting for X: READY (12 s)",
    ]


def test_quiet_shows_nothing() -> None:
    out = io.StringIO()
    with WaitProgress("waiting for X", stream=out, quiet=True) as progress:
        progress.update("STARTING")
    assert out.getvalue() == ""


def test_plain_line_due() -> None:
    assert plain_line_due("a", None, 0.0, 0.0, 10.0)
    assert not plain_line_due("a", "a", 9.9, 0.0, 10.0)
    assert plain_line_due("a", "a", 10.0, 0.0, 10.0)
    assert plain_line_due("b", "a", 0.1, 0.0, 10.0)
