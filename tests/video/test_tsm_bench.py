"""The TSM benchmarks are registered and their plots draw from a result dict."""
from __future__ import annotations

import slimkit
from slimkit_video.benchmarks import tsm as bench


def test_benchmarks_registered():
    names = set(slimkit.benchmarks())
    assert {"tsm-overhead", "tsm-temporal"} <= names


def test_plots_draw(tmp_path):
    model = {"model": "M", "frames": 8, "size": 224, "tsm_vs_tsn": 1.01, "tsm_copy_vs_tsn": 1.03,
             "median_ms[TSN]": 10.0, "median_ms[TSM]": 10.1, "median_ms[TSM (copying shift)]": 10.3}
    shift = {"model": "M", "tensors": 10, "floats": 1e6, "median_ms[reference (zeros + slices)]": 2.0,
             "median_ms[temporal_shift (copy)]": 1.2, "median_ms[in-place shift + restore]": 0.5}
    bench.plot_overhead({"models": [model], "shift": [shift]}, tmp_path / "o.png")
    run = {"losses": [0.7, 0.5], "eval_accuracy": [0.9, 1.0], "accuracy": 1.0}
    bench.plot_temporal({"runs": {"TSN": {**run, "accuracy": 0.5}, "TSM": run}}, tmp_path / "t.png")
    assert (tmp_path / "o.png").stat().st_size > 1000 and (tmp_path / "t.png").stat().st_size > 1000
