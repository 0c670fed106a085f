"""Parameters, MACs/FLOPs, latency and memory of any registered model (``langground bench``)."""

from langground.bench.core import BenchResult, bench_text, benchmark_model
from langground.bench.macs import EXPLICIT_MACS, MacReport, count_macs
from langground.bench.measure import LatencyReport, PeakRSS, measure_latency
from langground.bench.optimize import bf16_supported, prepare_for_inference, prepare_inputs

__all__ = [
    "EXPLICIT_MACS",
    "BenchResult",
    "LatencyReport",
    "MacReport",
    "PeakRSS",
    "bench_text",
    "benchmark_model",
    "bf16_supported",
    "count_macs",
    "measure_latency",
    "prepare_for_inference",
    "prepare_inputs",
]
