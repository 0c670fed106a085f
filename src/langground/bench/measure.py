"""Latency (median over warm runs) and the memory of a callable: its peak of allocated tensor memory
(what the allocator hands out: activations, temporaries, outputs) and its resident-memory growth.

Why not RSS alone: freed tensor memory stays in the process (glibc keeps freed heap pages, and raises
its mmap threshold after the first large frees), so a second forward reuses pages that the first one
touched and the RSS barely moves (the old bench read ~5 MiB at every model size). The allocator's own
accounting sees every allocation and free: on CUDA its peak statistics, on CPU the allocation events
that ``torch.profiler`` records with ``profile_memory=True`` (summed in time order). The RSS growth is
measured after returning freed heap pages to the OS (``malloc_trim``), so it sees the pages the call
touches again, plus what lives outside the allocator (oneDNN's packed weights, the compiler's memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


def release_free_heap() -> bool:
    """Give freed heap pages back to the OS (glibc ``malloc_trim(0)``); False where unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


@dataclass
class MemoryReport:
    """Memory of one call of a callable (bytes)."""

    peak_bytes: int  # peak of allocated tensor memory above the level at the call's start
    retained_bytes: int  # allocated during the call and still allocated after it (its output, caches)
    rss_delta_bytes: int  # peak resident-set growth during the call (after malloc_trim)
    method: str  # how peak_bytes was measured: "cuda allocator" | "torch.profiler" | "unavailable"


def _live_bytes(prof: Any) -> tuple[int, int] | None:
    """``(peak, final)`` of the CPU allocator's live bytes over a profiled call, from its allocation
    events (+bytes) and frees (-bytes) in time order; None when this torch does not expose them."""
    from torch.autograd import DeviceType

    cpu_kinds = {DeviceType.CPU, DeviceType.MKLDNN, DeviceType.IDEEP}  # oneDNN tensors included
    try:
        events = sorted(
            (e.start_ns(), int(e.nbytes()))
            for e in prof.profiler.kineto_results.events()
            if e.name() == "[memory]" and e.device_type() in cpu_kinds
        )
    except (AttributeError, RuntimeError, TypeError):
        return None
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak, live


def measure_memory(fn: Callable[[], Any], device: str = "cpu") -> MemoryReport:
    """Peak allocated memory and RSS growth of ``fn()`` (run it warm: after a first call, so one-time
    work is not counted). What was allocated before the call (the weights) is not counted; the result
    of ``fn`` is (it is alive at the end of the call). Two calls: one for the RSS (nothing else running
    in the process), one under the profiler for the allocator (CPU)."""
    release_free_heap()
    with PeakRSS() as rss:
        out = fn()
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
    del out
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak, retained = torch.cuda.max_memory_allocated() - before, torch.cuda.memory_allocated() - before
        del out
        return MemoryReport(max(0, peak), retained, rss.delta, "cuda allocator")
    # Kineto (the profiler's backend) otherwise prints "profiler_start/stop" lines on stderr at every
    # use; read when it first starts. A user's own setting wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    live = _live_bytes(prof)
    if live is None:
        return MemoryReport(0, 0, rss.delta, "unavailable")
    return MemoryReport(max(0, live[0]), live[1], rss.delta, "torch.profiler")
