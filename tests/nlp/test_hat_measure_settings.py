"""`hat measure` stores its settings beside the CSV, refuses to mix rows measured with other settings,
writes the CSV atomically, and `fit-predictor` reads (and checks) the settings."""
import csv
import json

import pytest
from click.testing import CliRunner

from slimkit import ConfigError
from slimkit.io import FileFormatError
from slimkit_nlp.hat import latency
from slimkit_nlp.hat.cli import hat

from ._hat_common import tiny_space

FAST = dict(src_len=4, steps=2, warmup=0, runs=2)


def _indices(path):
    with open(path, newline="") as f:
        return [int(r["index"]) for r in csv.DictReader(f)]


def test_settings_are_stored_and_other_settings_are_refused(tmp_path):
    space, path = tiny_space(), tmp_path / "lat.csv"
    latency.measure_dataset(space, 3, path, latency.MeasureSettings(**FAST))
    stored = latency.read_settings(path)
    assert {"src_len", "steps", "warmup", "runs", "threads", "trim", "reference", "seed", "batch", "device", "cpu",
            "torch", "space"} <= set(stored)
    assert stored["runs"] == 2 and stored["space"] == json.loads(json.dumps(space.to_dict()))
    before = path.read_text()
    with pytest.raises(ConfigError) as e:                   # more runs and another seed: refused, listed
        latency.measure_dataset(space, 5, path, latency.MeasureSettings(**{**FAST, "runs": 3}), seed=1)
    msg = str(e.value)
    assert "runs: 2 in the CSV, 3 now" in msg and "seed: 0 in the CSV, 1 now" in msg and "--overwrite" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match=r"space \(decoder_ffn_choices differ\)"):
        latency.measure_dataset(tiny_space(decoder_ffn_choices=[16, 64]), 5, path, latency.MeasureSettings(**FAST))
    assert path.read_text() == before and latency.read_settings(path) == stored   # nothing was mixed in
    rows = latency.measure_dataset(space, 5, path, latency.MeasureSettings(**FAST))        # same settings: resumes
    assert [r["index"] for r in rows] == list(range(5)) and path.read_text().startswith(before)
    rows = latency.measure_dataset(space, 2, path, latency.MeasureSettings(**{**FAST, "runs": 3}), overwrite=True)
    assert _indices(path) == [0, 1] and latency.read_settings(path)["runs"] == 3 and all(r["runs"] == 3 for r in rows)


def test_csv_is_written_atomically_and_a_kill_keeps_whole_rows(tmp_path, monkeypatch):
    space, path = tiny_space(), tmp_path / "lat.csv"
    writes = []
    real = latency.atomic_write_text
    monkeypatch.setattr(latency, "atomic_write_text", lambda p, text: writes.append(p) or real(p, text))
    calls = {"n": 0}
    measure = latency.measure_sub

    def dies_on_the_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return measure(*a, **k)

    monkeypatch.setattr(latency, "measure_sub", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        latency.measure_dataset(space, 5, path, latency.MeasureSettings(**FAST))
    assert writes and all(str(p) == str(path) for p in writes)
    assert [r["index"] for r in latency.read_csv(path)] == [0, 1] and latency.read_settings(path) is not None
    assert [r["index"] for r in latency.measure_dataset(space, 5, path, latency.MeasureSettings(**FAST))] == list(range(5))


def test_a_cut_last_row_is_refused_by_the_reader_and_measured_again(tmp_path):
    space, path = tiny_space(), tmp_path / "lat.csv"
    latency.measure_dataset(space, 3, path, latency.MeasureSettings(**FAST))
    text = path.read_text()
    path.write_text(text[:-12])                             # a kill in the middle of the last row (old append mode)
    with pytest.raises(FileFormatError) as e:
        latency.read_csv(path)
    assert "last row" in str(e.value) and "sample '2'" in str(e.value)
    rows = latency.measure_dataset(space, 3, path, latency.MeasureSettings(**FAST))
    assert [r["index"] for r in rows] == [0, 1, 2] and path.read_text().endswith("\n")
    assert _indices(path) == [0, 1, 2]


def test_a_csv_without_settings_is_not_resumed_and_mixed_rows_are_not_fitted(tmp_path):
    space, path = tiny_space(), tmp_path / "lat.csv"
    rows = latency.measure_dataset(space, 3, path, latency.MeasureSettings(**FAST))
    latency.settings_path(path).unlink()                            # a CSV from an older slimkit
    with pytest.raises(ConfigError, match="no settings file"):
        latency.measure_dataset(space, 4, path, latency.MeasureSettings(**FAST))
    got_space, src_len, steps, note = latency.fit_inputs(path, rows)
    assert got_space is None and (src_len, steps) == (16, 8) and "no settings file" in note
    mixed = [dict(r) for r in rows]
    mixed[1]["threads"] = 4
    with pytest.raises(ConfigError, match="mixes rows measured with threads = 1 and 4"):
        latency.fit_inputs(path, mixed)


def test_fit_inputs_follow_and_check_the_settings(tmp_path):
    space, path = tiny_space(), tmp_path / "lat.csv"
    rows = latency.measure_dataset(space, 3, path, latency.MeasureSettings(**FAST))
    got_space, src_len, steps, note = latency.fit_inputs(path, rows)
    assert got_space == space and (src_len, steps) == (4, 2) and note == ""
    with pytest.raises(ConfigError, match="--src-len 16 differs from the 4"):
        latency.fit_inputs(path, rows, src_len=16)
    with pytest.raises(ConfigError, match="another design space"):
        latency.fit_inputs(path, rows, tiny_space(decoder_ffn_choices=[16, 64]))
    bad = [dict(r) for r in rows]
    bad[0]["runs"] = 7
    with pytest.raises(ConfigError, match="mixes measurements"):
        latency.fit_inputs(path, bad)


def test_measure_settings_that_would_measure_the_wrong_thing_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="trim"):
        latency.MeasureSettings(trim=0.5)                           # nothing left to average: silently the plain mean
    with pytest.raises(ConfigError, match="runs"):
        latency.MeasureSettings(runs=0)
    with pytest.raises(ConfigError, match="max_positions=40"):
        latency.measure_dataset(tiny_space("decoder"), 1, tmp_path / "x.csv", latency.MeasureSettings(src_len=40, steps=2))
    assert not (tmp_path / "x.csv").exists()


def test_cli_measure_refuses_other_settings_and_fit_reads_them(tmp_path):
    tiny_space().save(tmp_path / "space.yaml")
    r = CliRunner()
    base = ["measure", "--space", str(tmp_path / "space.yaml"), "-n", "4", "--csv", str(tmp_path / "lat.csv"),
            "--src-len", "4", "--steps", "2", "--warmup", "0"]
    res = r.invoke(hat, base + ["--runs", "2"])
    assert res.exit_code == 0, res.output
    res = r.invoke(hat, base + ["--runs", "3"])
    assert res.exit_code != 0 and "runs: 2 in the CSV, 3 now" in res.output and "--overwrite" in res.output
    fit = ["fit-predictor", "--csv", str(tmp_path / "lat.csv"), "--out", str(tmp_path / "p.pt"), "--epochs", "5"]
    res = r.invoke(hat, fit + ["--steps", "8"])
    assert res.exit_code != 0 and "--steps 8 differs from the 2" in res.output
    res = r.invoke(hat, fit)                                # space and lengths from the settings file
    assert res.exit_code == 0 and "Kendall tau" in res.output, res.output
    res = r.invoke(hat, base + ["--runs", "3", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert latency.read_settings(tmp_path / "lat.csv")["runs"] == 3
