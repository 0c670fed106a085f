"""Latency (median over warm runs) and peak resident-memory growth of a callable."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LatencyReport:
    median_ms: float
    mean_ms: float
    min_ms: float
    p90_ms: float
    runs: int
    warmup: int
    first_call_ms: float  # includes compilation / one-time weight packing


def _sync(device: torch.device | str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measure_latency(
    fn: Callable[[], Any], warmup: int = 5, runs: int = 20, device: str = "cpu"
) -> LatencyReport:
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = (time.perf_counter() - t0) * 1e3
    for _ in range(max(0, warmup - 1)):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return LatencyReport(
        median_ms=statistics.median(times),
        mean_ms=statistics.fmean(times),
        min_ms=times[0],
        p90_ms=times[min(len(times) - 1, int(0.9 * len(times)))],
        runs=runs,
        warmup=warmup,
        first_call_ms=first,
    )


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class PeakRSS:
    """Context manager sampling RSS every ``interval`` seconds; ``.delta``: peak minus the RSS at entry."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = current_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, current_rss())

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.start)
