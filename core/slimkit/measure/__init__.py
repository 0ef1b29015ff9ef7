"""Measurement core shared by all plugins: latency, Mult-Adds and parameters, peak memory."""
from .latency import LatencyResult, fixed_threads, measure_latency, measure_latency_interleaved, trimmed_mean
from .macs import MacsReport, count_macs, count_params, register_macs_counter
from .memory import MemoryResult, peak_memory

__all__ = [
    "LatencyResult", "measure_latency", "measure_latency_interleaved", "trimmed_mean", "fixed_threads",
    "MacsReport", "count_macs", "count_params", "register_macs_counter",
    "MemoryResult", "peak_memory",
]
