"""The shared causal-LM trainer: loss goes down on real text, checkpoints, files, CLI, errors."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from slimkit.errors import ConfigError, SlimkitError
from slimkit_nlp.data import load_text
from slimkit_nlp.train import build_causal_lm, evaluate_perplexity, load_text_files, lr_at, train_causal_lm


def _tiny_gpt2():
    return build_causal_lm("gpt2", n_layer=1, d_model=32, n_head=2, max_positions=64)


@pytest.fixture(scope="module")
def shakespeare():
    return load_text("train")[:300_000], load_text("validation")[:20_000]


def test_short_training_lowers_loss_and_writes_checkpoints(shakespeare, tmp_path):
    train, val = shakespeare
    model = _tiny_gpt2()
    before = evaluate_perplexity(model, torch.tensor(list(val.encode()))[:4097], block_size=32)
    m = train_causal_lm(model, train, val, block_size=32, batch_size=8, steps=40, lr=3e-3,
                        eval_tokens=4096, output_dir=tmp_path, save_every=10, keep_checkpoints=2,
                        show_progress=False)
    assert m["steps"] == 40
    assert m["final_train_loss"] < m["initial_loss"] - 0.5
    assert m["eval_perplexity"] < before["eval_perplexity"] * 0.5
    assert m["eval_tokens"] == 4096
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-0000030", "step-0000040"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["eval_perplexity"] == pytest.approx(m["eval_perplexity"])
    from transformers import AutoModelForCausalLM
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    again = evaluate_perplexity(back, torch.tensor(list(val.encode()))[:4097], block_size=32)
    assert again["eval_loss"] == pytest.approx(m["eval_loss"], abs=1e-5)


def test_time_budget_stops_and_lr_schedule():
    model = _tiny_gpt2()
    m = train_causal_lm(model, "to be or not to be, that is the question. " * 50, steps=None,
                        time_budget_s=0.3, block_size=16, batch_size=2, show_progress=False)
    assert 1 <= m["steps"] and 0.3 <= m["train_seconds"] < 3
    assert "eval_perplexity" not in m
    assert lr_at(0, 100, 0, None, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(100, 100, 0, None, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(10, None, 5.0, 10.0, 1.0, 10) == pytest.approx(0.55)


def test_text_files_through_datasets_loader(tmp_path):
    (tmp_path / "a.txt").write_text("first file\nline two\n")
    (tmp_path / "b.txt").write_text("second file\n")
    text = load_text_files(tmp_path)
    assert "first file\nline two" in text and "second file" in text
    with pytest.raises(SlimkitError, match="does not exist"):
        load_text_files([tmp_path / "missing.txt"])


def test_bad_arguments_are_one_sentence():
    with pytest.raises(ConfigError, match="steps or time_budget_s"):
        train_causal_lm(_tiny_gpt2(), "abc" * 100)
    with pytest.raises(SlimkitError, match="fewer than block_size"):
        train_causal_lm(_tiny_gpt2(), "abc", steps=1, block_size=32)
    with pytest.raises(ConfigError, match="unknown model"):
        build_causal_lm("bert")


@pytest.mark.parametrize("kind", ["gpt2", "lite"])
def test_cli_train_on_files(tmp_path, kind):
    from slimkit.cli import _load_plugin_commands, cli

    _load_plugin_commands()

    (tmp_path / "t.txt").write_text("Now is the winter of our discontent. " * 40)
    res = CliRunner().invoke(cli, ["nlp", "train", "--model", kind, "--train-file", str(tmp_path / "t.txt"),
                                   "--eval-file", str(tmp_path / "t.txt"), "--n-layer", "1", "--d-model", "32",
                                   "--n-head", "2", "--block-size", "16", "--batch-size", "4", "--steps", "5",
                                   "--output-dir", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "perplexity" in res.output
    assert (tmp_path / "run" / "final" / "config.json").exists()
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert back.config.model_type == ("gpt2" if kind == "gpt2" else "lite_transformer")


@pytest.mark.slow
def test_same_trainer_runs_in_two_processes(tmp_path):
    """torchrun starts 2 CPU processes (gloo): gradients are averaged and eval tokens split across them."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "run.py"
    script.write_text(
        "import json, os, sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from slimkit_nlp.train import build_causal_lm, train_causal_lm\n"
        "torch.manual_seed(0)\n"
        "m = build_causal_lm('gpt2', n_layer=1, d_model=16, n_head=2, max_positions=32)\n"
        "text = 'So foul and fair a day I have not seen. ' * 60\n"
        "r = train_causal_lm(m, text, text, block_size=16, batch_size=2, steps=3, eval_tokens=512,\n"
        "                    show_progress=False, output_dir=sys.argv[1])\n"
        "w = next(m.parameters()).detach().flatten()[:4].tolist()\n"
        "rank = os.environ['RANK']\n"
        "with open(os.path.join(sys.argv[2], 'result-' + rank + '.json'), 'w') as f:\n"
        "    json.dump({'n': r['num_processes'], 'loss': r['eval_loss'], 'w': w}, f)\n")
    torchrun = Path(sys.executable).with_name("torchrun")
    res = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(script), str(tmp_path / "out"), str(tmp_path)],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    # each rank writes its own file (two processes printing to one pipe can lose or merge lines)
    rows = [json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in (0, 1)]
    assert len(rows) == 2 and all(r["n"] == 2 for r in rows)
    assert rows[0] == rows[1]  # same weights and same (all-reduced) eval loss in both processes
    assert (tmp_path / "out" / "metrics.json").exists()
