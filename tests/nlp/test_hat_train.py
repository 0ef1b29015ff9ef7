"""SuperTransformer training (accelerate): sampled SubTransformers, checkpoint, resume; CLI chain."""
import json

import pytest
import torch
from click.testing import CliRunner

from slimkit.errors import ConfigError
from slimkit_nlp.hat.cli import hat
from slimkit_nlp.hat.supernet import SuperTransformer
from slimkit_nlp.hat.tasks import LMTask, Seq2SeqTask, evaluate
from slimkit_nlp.hat.train import load_supernet, train_supernet

from ._hat_common import tiny_space


def test_train_checkpoint_resume(tmp_path):
    space = tiny_space(vocab_size=13)
    task = Seq2SeqTask("reverse", min_len=3, max_len=6, val_size=32)
    net = SuperTransformer(space)
    before = evaluate(net, space.largest(), task, task.val_batches())
    state = train_supernet(net, task, steps=30, batch_size=16, lr=3e-3, warmup=5, output_dir=tmp_path,
                           checkpoint_every=10, progress=False)
    assert state["step"] == 30 and state["val_loss_largest"] < before
    back = load_supernet(tmp_path)
    x = task.val_batches()[0]
    with torch.no_grad():
        assert torch.equal(back(None, x["input_ids"], x["attention_mask"], x["decoder_input_ids"]),
                           net.eval()(None, x["input_ids"], x["attention_mask"], x["decoder_input_ids"]))
    # rerunning the same training resumes from its last checkpoint (step 30): nothing left to do
    again = train_supernet(SuperTransformer(space), task, steps=30, batch_size=16, lr=3e-3, warmup=5,
                           output_dir=tmp_path, checkpoint_every=10, progress=False)
    assert again["step"] == 30 and again["resumed_from"].endswith("step-0000030")
    assert again["val_loss_largest"] == state["val_loss_largest"]
    # other settings: refused, naming the setting
    with pytest.raises(ConfigError, match="steps: 30 -> 35"):
        train_supernet(SuperTransformer(space), task, steps=35, batch_size=16, lr=3e-3, warmup=5,
                       output_dir=tmp_path, checkpoint_every=10, progress=False)


def test_lm_task_from_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("to be or not to be, that is the question. " * 40)
    task = LMTask.from_dataset(str(tmp_path), block=16)
    space = tiny_space("decoder", vocab_size=256)
    state = train_supernet(SuperTransformer(space), task, steps=3, batch_size=4, progress=False)
    assert state["step"] == 3 and state["val_loss_largest"] > 0


def test_cli_chain(tmp_path):
    space = tiny_space(vocab_size=13)
    space.save(tmp_path / "space.yaml")
    r = CliRunner()
    ck, csv_path, pred = tmp_path / "ck", tmp_path / "lat.csv", tmp_path / "pred.pt"
    res = r.invoke(hat, ["train", "--task", "reverse", "--space", str(tmp_path / "space.yaml"), "--steps", "4",
                         "--batch-size", "8", "--output-dir", str(ck)])
    assert res.exit_code == 0, res.output
    res = r.invoke(hat, ["measure", "--checkpoint", str(ck), "-n", "8", "--csv", str(csv_path), "--src-len", "4",
                         "--steps", "2", "--warmup", "1", "--runs", "3"])
    assert res.exit_code == 0, res.output
    res = r.invoke(hat, ["fit-predictor", "--csv", str(csv_path), "--checkpoint", str(ck), "--out", str(pred),
                         "--epochs", "50", "--src-len", "4", "--steps", "2"])
    assert res.exit_code == 0 and "Kendall tau" in res.output, res.output
    res = r.invoke(hat, ["search", "--checkpoint", str(ck), "--predictor", str(pred), "--latency-bound", "1000",
                         "--population", "4", "--parents", "2", "--mutations", "1", "--crossovers", "1",
                         "--iterations", "2", "--out", str(tmp_path / "found.json")])
    assert res.exit_code == 0, res.output
    found = json.loads((tmp_path / "found.json").read_text())
    assert found["evaluations"] <= 8
    res = r.invoke(hat, ["export", "--checkpoint", str(ck), "--config", str(tmp_path / "found.json"),
                         "--output-dir", str(tmp_path / "model")])
    assert res.exit_code == 0 and (tmp_path / "model" / "config.json").exists(), res.output
    res = r.invoke(hat, ["search", "--checkpoint", str(tmp_path / "nope"), "--predictor", str(pred),
                         "--latency-bound", "1"])
    assert res.exit_code != 0


def test_next_line_task_batches():
    from slimkit_nlp.hat.tasks import make_task
    task = make_task("shakespeare-lines", max_len=16, val_size=8)
    b = task.batch(torch.Generator().manual_seed(0), 4)
    assert b["input_ids"].shape == (4, 16) and b["labels"].shape == (4, 17)
    assert int(b["input_ids"].max()) < task.vocab_size and bool((b["labels"] == 2).any())
    space = tiny_space(vocab_size=task.vocab_size)
    loss = evaluate(SuperTransformer(space), space.smallest(), task, task.val_batches())
    assert 4.0 < loss < 7.0  # about log(259) for an untrained model
