"""The training progress line: its ETA is the sooner of the steps left and the time budget left."""

from __future__ import annotations

import io
import math

from rich.console import Console

from langground.engine.logging import TrainProgress, format_duration


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def progress(budget: float | None, start: int = 0) -> tuple[TrainProgress, Clock, io.StringIO]:
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, force_terminal=False, width=300)
    return TrainProgress(100, start, console, True, 1, time_budget_s=budget, clock=clock), clock, out


def test_eta_is_the_sooner_of_steps_and_time_budget_and_says_which():
    p, clock, out = progress(budget=60.0)
    clock.t += 10  # 10 steps in 10 s: 90 steps left -> 90 s; 60 - 10 trained s -> 50 s of budget
    assert p.eta(10, train_seconds=10.0) == (50.0, "time limit")
    p.update(10, 1, {"loss": 1.0}, 4.0, 1e-3, train_seconds=10.0)
    assert out.getvalue().strip().endswith("ETA 0:00:50 (time limit)")
    clock.t += 10  # 50 steps in 20 s: 50 left -> 20 s; budget 40 s
    assert p.eta(50, train_seconds=20.0) == (20.0, "steps")
    p.update(50, 1, {"loss": 1.0}, 4.0, 1e-3, train_seconds=20.0)
    assert out.getvalue().strip().splitlines()[-1].endswith("ETA 0:00:20 (steps)")
    assert p.eta(60, train_seconds=75.0) == (0.0, "time limit")  # overspent: nothing left


def test_without_a_budget_the_eta_counts_steps_from_where_the_run_resumed():
    p, clock, _ = progress(budget=None, start=40)
    assert math.isnan(p.eta(40)[0])
    clock.t += 30  # 10 steps since the resume in 30 s: 50 left -> 150 s
    assert p.eta(50, train_seconds=999.0) == (150.0, "steps")
    q, clock, _ = progress(budget=3600.0, start=40)
    assert q.eta(40, train_seconds=0.0) == (3600.0, "time limit")  # no pace yet: the budget bounds it


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(90000) == "25:00:00"  # past a day, no wrap-around
    assert format_duration(math.nan) == "?"
