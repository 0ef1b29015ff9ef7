"""Latency dataset (real measurements, resume), predictor fit/save/load, Kendall tau."""
import csv

import pytest

from slimkit.errors import ConfigError
from slimkit_nlp.hat.latency import MeasureSettings, measure_dataset, read_csv
from slimkit_nlp.hat.predictor import FlopsLinearFit, LatencyPredictor, kendall_tau, regression_report

from ._hat_common import tiny_space


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    r = regression_report([11.0, 19.0], [10.0, 20.0])
    assert r["mape_pct"] == pytest.approx(7.5) and r["rmse_ms"] == pytest.approx(1.0)


def test_measure_resume_and_predictor_save_load(tmp_path):
    space = tiny_space()
    st = MeasureSettings(src_len=4, steps=2, warmup=1, runs=3)
    path = tmp_path / "lat.csv"
    rows = measure_dataset(space, 6, path, st)
    assert len(rows) == 6 and all(r["latency_ms"] > 0 for r in rows)
    before = path.read_text()
    rows = measure_dataset(space, 9, path, st)  # rerun: keeps the 6, adds 3
    assert path.read_text().startswith(before)
    with path.open() as f:
        assert [int(r["index"]) for r in csv.DictReader(f)] == list(range(9))
    assert len(read_csv(path)) == 9
    # paired timing against the reference model (shared-machine protocol)
    paired = measure_dataset(space, 3, tmp_path / "paired.csv", MeasureSettings(4, 2, 1, 3, reference=True))
    assert (tmp_path / "paired.csv.reference.json").exists()
    assert all(r["latency_ms"] > 0 for r in paired)
    for r in rows:
        space.check(r["sub"])

    subs, lat = [r["sub"] for r in rows], [r["latency_ms"] for r in rows]
    pred = LatencyPredictor(space, hidden=32, layers=2).fit(subs, lat, epochs=1000)  # enough to fit 9 noisy points
    p1 = pred.predict(subs)
    pred.save(tmp_path / "pred.pt")
    back = LatencyPredictor.load(tmp_path / "pred.pt")
    assert back.predict(subs) == p1
    assert back.space == space
    assert isinstance(back.predict(subs[0]), float)
    # trained predictor fits its training data better than the mean does
    mean = sum(lat) / len(lat)
    assert sum((a - b) ** 2 for a, b in zip(p1, lat)) < sum((mean - b) ** 2 for b in lat)
    flops = FlopsLinearFit(space, 4, 2).fit(subs, lat)
    assert len(flops.predict(subs)) == len(subs)
    with pytest.raises(ConfigError, match="not a slimkit HAT latency predictor"):
        (tmp_path / "bad.pt").write_bytes(b"nope")
        LatencyPredictor.load(tmp_path / "bad.pt")
