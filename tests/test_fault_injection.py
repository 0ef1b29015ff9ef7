"""Fault injection: kills during saves, Ctrl-C during every trainer, corrupt and mismatched files.

Each test fails without the reliability fixes (atomic folders, the shared trainer's checkpoints
and per-step seeding, checked loads): see the comment above each one for what used to happen.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import slimkit
from slimkit.errors import ConfigError, SlimkitError
from slimkit.io import FileFormatError, atomic_folder, read_json
from slimkit.training import TrainingInterrupted

REPO = Path(__file__).resolve().parents[1]


def interrupt_at(step: int):
    """A trainer callback that sends this process SIGINT (Ctrl-C) after ``step`` completed steps."""
    def callback(done: int) -> None:
        if done == step:
            os.kill(os.getpid(), signal.SIGINT)
    return callback


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=atol), k


# -- kill -9 during a save ----------------------------------------------------------------------
SAVER = textwrap.dedent("""
    import sys, torch, slimkit
    from slimkit.io import atomic_write_text
    torch.set_num_threads(1)
    out = sys.argv[1]
    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(24)])   # 25 MB of weights
    i = 0
    while True:                       # saves generation i: every weight equals i
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(i))
        slimkit.save_pretrained(model, out)
        atomic_write_text(out + ".generation", str(i))
        i += 1
""")


def test_kill_during_save_pretrained_leaves_a_complete_save(tmp_path):
    # before: configs were written before the weights, in place; a kill left a mismatched pair
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    target = tmp_path / "model"
    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(24)])
    for trial, delay in enumerate((0.9, 1.3, 1.7, 2.2)):
        proc = subprocess.Popen([sys.executable, str(script), str(target)], env={**os.environ, "OMP_NUM_THREADS": "1"})
        time.sleep(delay)
        proc.kill()
        proc.wait()
        if not target.exists():
            continue
        back = slimkit.from_pretrained(model, target)
        values = {float(p.flatten()[0]) for p in back.parameters()}
        assert len(values) == 1, f"trial {trial}: a mix of generations {values}"
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.")]
        slimkit.save_pretrained(back, target)          # the next save cleans any leftover temporary folder
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.")], leftovers


def test_a_save_removes_files_of_an_older_save(tmp_path):
    # before: saving over a folder kept its stale slimkit_config.json, so load_config returned the old technique
    from slimkit_video import VideoClassifier
    from slimkit_video.classifier import tiny_resnet

    clf = slimkit.apply(VideoClassifier(tiny_resnet(widths=(8, 8, 8, 8)), n_segment=4, num_classes=2), "tsm",
                        n_segment=4)
    slimkit.save_pretrained(clf, tmp_path / "m")
    assert (tmp_path / "m" / "slimkit_config.json").exists()
    plain = torch.nn.Linear(2, 2)
    slimkit.save_pretrained(plain, tmp_path / "m")
    assert not (tmp_path / "m" / "slimkit_config.json").exists()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "slimkit_applied.json"]


def test_save_refuses_to_replace_a_folder_of_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        slimkit.save_pretrained(torch.nn.Linear(2, 2), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_atomic_folder_keeps_the_old_folder_when_the_writer_fails(tmp_path):
    target = tmp_path / "ck"
    with atomic_folder(target) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a").write_text("new")
            raise RuntimeError("disk full")
    assert (target / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_a_kill_between_the_two_renames_is_undone(tmp_path):
    # a kill after the old folder moved aside but before the new one moved in: the loaders put it back
    from slimkit.io import recover_folder

    target = tmp_path / "ck"
    slimkit.save_pretrained(torch.nn.Linear(2, 2), target)
    os.replace(target, tmp_path / ".ck.old-999999-abcd")
    recover_folder(target)
    assert (target / "model.safetensors").exists()


# -- corrupt, missing, mismatched files ------------------------------------------------------------
def test_from_pretrained_refuses_missing_truncated_and_mismatched_weights(tmp_path):
    # before: a folder without weights returned the untrained model silently, even with strict=True
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    slimkit.save_pretrained(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlimkitError, match=r"model\.safetensors.*truncated"):
        slimkit.from_pretrained(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)), tmp_path / "m")
    weights.unlink()
    with pytest.raises(ConfigError, match="holds no model.safetensors"):
        slimkit.from_pretrained(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)), tmp_path / "m")
    slimkit.save_pretrained(model, tmp_path / "m")
    with pytest.raises(ConfigError, match=r"shape"):
        slimkit.from_pretrained(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2)), tmp_path / "m")
    with pytest.raises(ConfigError, match="does not have"):
        slimkit.from_pretrained(torch.nn.Sequential(torch.nn.Linear(8, 8)), tmp_path / "m")


def test_corrupt_json_names_the_file(tmp_path):
    slimkit.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "m")
    (tmp_path / "m" / "slimkit_applied.json").write_text('{"techniques": [')
    with pytest.raises(SlimkitError, match=r"slimkit_applied\.json.*not valid JSON"):
        slimkit.from_pretrained(torch.nn.Linear(2, 2), tmp_path / "m")
    (tmp_path / "c.json").write_text("")
    with pytest.raises(FileFormatError, match=r"c\.json.*is empty"):
        read_json(tmp_path / "c.json")
    with pytest.raises(ConfigError, match=r"slimkit_config\.json"):
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "slimkit_config.json").write_text("{not json")
        slimkit.load_config(tmp_path / "d")


def test_corrupt_training_checkpoint_is_named_on_resume(tmp_path):
    from slimkit_nlp.train import build_causal_lm, train_causal_lm

    text = "to be or not to be, that is the question. " * 40
    kw = dict(block_size=16, batch_size=2, steps=4, save_every=2, output_dir=tmp_path, show_progress=False)
    train_causal_lm(build_causal_lm("gpt2", n_layer=1, d_model=16, n_head=2, max_positions=32), text, **kw)
    newest = sorted((tmp_path / "checkpoints").iterdir())[-1]
    opt = newest / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:100])
    with pytest.raises(SlimkitError, match=r"optimizer\.safetensors"):
        train_causal_lm(build_causal_lm("gpt2", n_layer=1, d_model=16, n_head=2, max_positions=32), text, **kw)


# -- Ctrl-C during every trainer, then resume: the same weights as an uninterrupted run ------------
def _lm(seed=0):
    from slimkit_nlp.train import build_causal_lm

    torch.manual_seed(seed)
    return build_causal_lm("gpt2", n_layer=1, d_model=32, n_head=2, max_positions=64)


def test_causal_lm_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    # before: `nlp train` saved only at the end; checkpoints had no optimizer state and no data position
    from slimkit_nlp.train import train_causal_lm

    text = "Now is the winter of our discontent made glorious summer by this sun of York. " * 30
    kw = dict(block_size=32, batch_size=4, steps=12, lr=3e-3, warmup_steps=2, show_progress=False)
    ref = _lm()
    train_causal_lm(ref, text, **kw)
    with pytest.raises(TrainingInterrupted, match="after step 5"):
        train_causal_lm(_lm(), text, output_dir=tmp_path, save_every=100, callbacks=[interrupt_at(5)], **kw)
    assert (tmp_path / "checkpoints" / "step-0000005").is_dir()
    resumed = _lm(seed=123)                      # other initial weights: the checkpoint must replace them
    m = train_causal_lm(resumed, text, output_dir=tmp_path, save_every=100, **kw)
    assert m["resumed_from"].endswith("step-0000005") and m["steps"] == 12
    assert_same_weights(ref, resumed)
    with pytest.raises(ConfigError, match=r"lr: 0\.003 -> 0\.002"):
        train_causal_lm(_lm(), text, output_dir=tmp_path, **{**kw, "lr": 2e-3})


def test_video_training_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    # before: `video train` saved only at the end and had no --resume
    from slimkit_video import VideoClassifier
    from slimkit_video.classifier import tiny_resnet
    from slimkit_video.data import SyntheticTemporalDataset
    from slimkit_video.train import train

    def clf():
        torch.manual_seed(0)
        c = VideoClassifier(tiny_resnet(widths=(8, 8, 8, 8)), n_segment=4, num_classes=2, dropout=0.2)
        return slimkit.apply(c, "tsm", n_segment=4)

    data = SyntheticTemporalDataset(n_per_class=4, num_frames=4, size=32, seed=0, cache=True)
    kw = dict(epochs=3, batch_size=2, lr=3e-3, progress=False, seed=7)
    ref = clf()
    train(ref, data, **kw)
    with pytest.raises(TrainingInterrupted):
        train(clf(), data, output_dir=tmp_path / "run", callbacks=[interrupt_at(5)], **kw)
    resumed = clf()
    r = train(resumed, data, output_dir=tmp_path / "run", **kw)
    assert r.steps == 12
    assert_same_weights(ref, resumed)
    assert (tmp_path / "run" / "model.safetensors").exists() and (tmp_path / "run" / "checkpoints").is_dir()


def test_hat_training_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    # before: HAT resumed weights but not the data position or RNG, and optimizer.pt was written in place
    from nlp._hat_common import tiny_space

    from slimkit_nlp.hat.supernet import SuperTransformer
    from slimkit_nlp.hat.tasks import Seq2SeqTask
    from slimkit_nlp.hat.train import train_supernet

    space = tiny_space(vocab_size=13)
    task = Seq2SeqTask("reverse", min_len=3, max_len=6, val_size=16)

    def net(seed=0):
        torch.manual_seed(seed)
        return SuperTransformer(space)

    kw = dict(steps=10, batch_size=8, lr=3e-3, warmup=2, progress=False, checkpoint_every=100)
    ref = net()
    train_supernet(ref, task, **kw)
    with pytest.raises(TrainingInterrupted):
        train_supernet(net(), task, output_dir=tmp_path, callbacks=[interrupt_at(4)], **kw)
    resumed = net(seed=5)
    state = train_supernet(resumed, task, output_dir=tmp_path, **kw)
    assert state["step"] == 10 and state["resumed_from"].endswith("step-0000004")
    assert_same_weights(ref, resumed)


def test_spatten_distill_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    from nlp.test_spatten_encoder import tiny_bert

    from slimkit_nlp.spatten import distill

    def student():
        torch.manual_seed(0)
        return slimkit.apply(tiny_bert().eval(), "spatten", token_keep=0.5)

    ids = torch.randint(5, 60, (12, 24), generator=torch.Generator().manual_seed(0))
    kw = dict(steps=8, batch_size=3, rank=2, show_progress=False)
    ref = student()
    a = distill(ref, ids, **kw)
    with pytest.raises(TrainingInterrupted):
        distill(student(), ids, output_dir=tmp_path, callbacks=[interrupt_at(3)], **kw)
    resumed = student()
    b = distill(resumed, ids, output_dir=tmp_path, **kw)
    assert_same_weights(ref, resumed)
    assert a["history"] == pytest.approx(b["history"])


# -- the command line: Ctrl-C saves, kill -9 loses at most the steps since the last checkpoint ------------
def _run_cli(args, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLIMKIT_LOAD_PLUGINS": "nlp"}
    return subprocess.Popen([sys.executable, "-m", "slimkit.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def _wait_for(path: Path, proc, timeout=120.0):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {path} appeared:\n{proc.stdout.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


@pytest.mark.slow
def test_nlp_train_cli_ctrl_c_then_kill_then_resume_equals_uninterrupted(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Now is the winter of our discontent made glorious summer by this sun of York. " * 60)
    args = ["nlp", "train", "--train-file", str(text), "--steps", "40", "--n-layer", "1", "--d-model", "32",
            "--n-head", "2", "--block-size", "32", "--batch-size", "4", "--save-every", "10"]
    ref = _run_cli([*args, "--output-dir", str(tmp_path / "ref")])
    assert ref.wait(timeout=300) == 0, ref.stdout.read()
    run = tmp_path / "run"
    proc = _run_cli([*args, "--output-dir", str(run)])
    _wait_for(run / "checkpoints" / "step-0000010", proc)
    proc.send_signal(signal.SIGINT)                           # Ctrl-C: a checkpoint, a clear line, exit 130
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "interrupted after step" in out and "Traceback" not in out, out
    proc = _run_cli([*args, "--output-dir", str(run)])        # resumes; then kill -9 after its next checkpoint
    _wait_for(run / "checkpoints" / "step-0000020", proc)
    proc.kill()
    proc.wait()
    proc = _run_cli([*args, "--output-dir", str(run)])
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "ref" / "final" / "model.safetensors"))
    b = load_file(str(run / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert json.loads((run / "metrics.json").read_text())["steps"] == 40
