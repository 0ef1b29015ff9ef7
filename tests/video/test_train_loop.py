"""Training with accelerate: loss goes down, checkpoints restore, two CPU processes stay in sync, CLI."""
from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest
import torch

import slimkit
from slimkit_video import VideoClassifier
from slimkit_video.classifier import tiny_resnet
from slimkit_video.data import SyntheticTemporalDataset, write_synthetic_videos
from slimkit_video.train import checkpoint_info, load_checkpoint, train


def _tsm_classifier(n_segment=4):
    clf = VideoClassifier(tiny_resnet(widths=(8, 8, 16, 16)), n_segment=n_segment, num_classes=2)
    return slimkit.apply(clf, "tsm", n_segment=n_segment)


def test_tiny_training_lowers_the_loss_and_checkpoint_restores(tmp_path):
    clf = _tsm_classifier()
    data = SyntheticTemporalDataset(n_per_class=4, num_frames=4, size=32, seed=0, cache=True)
    result = train(clf, data, data, epochs=8, batch_size=4, lr=3e-3, schedule="constant",
                   progress=False, output_dir=tmp_path / "ckpt")
    first, last = sum(result.losses[:4]) / 4, sum(result.losses[-4:]) / 4
    assert result.steps == 16 and len(result.eval_accuracy) == 8
    assert last < 0.6 * first, (first, last)
    restored = load_checkpoint(tmp_path / "ckpt").eval()
    clf.eval()
    x = torch.stack([data[i][0] for i in range(3)])
    with torch.no_grad():
        assert torch.equal(restored(x), clf(x))
    assert checkpoint_info(tmp_path / "ckpt")["n_segment"] == 4
    assert [c.technique for c in restored.slimkit_configs] == ["tsm"]


SCRIPT = textwrap.dedent('''
    import os, sys, torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from accelerate import PartialState
    from slimkit_video import VideoClassifier
    from slimkit_video.data import SyntheticTemporalDataset
    from slimkit_video.train import train
    from slimkit_video.tsm import TSMConfig, apply_tsm
    out = sys.argv[1]
    torch.manual_seed(100 + int(os.environ["RANK"]))  # different initial weights per process
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
    clf = VideoClassifier(net, n_segment=4, num_classes=2, feature_dim=16)
    # apply_tsm directly: slimkit.apply would load every plugin (seconds of imports per process)
    clf = apply_tsm(clf, TSMConfig(n_segment=4, target_modules=["backbone.3"]))
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, f"{out}/init{os.environ['RANK']}.st")
    r = train(clf, SyntheticTemporalDataset(4, 4, 32), SyntheticTemporalDataset(2, 4, 32, seed=1),
              epochs=2, batch_size=2, progress=False, output_dir=f"{out}/ckpt")
    st = PartialState()
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, f"{out}/rank{st.process_index}.st")
    with open(f"{out}/result{st.process_index}.txt", "w") as f:
        f.write(f"{st.process_index} {st.num_processes} {r.steps}")
''')


@pytest.mark.slow  # two fresh processes: ~10 s of torch imports each on this machine
def test_two_cpu_processes_end_with_identical_weights(tmp_path):
    from safetensors.torch import load_file

    (tmp_path / "run.py").write_text(SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), str(tmp_path / "run.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [(tmp_path / f"result{r}.txt").read_text() for r in (0, 1)]
    assert results == ["0 2 4", "1 2 4"]  # 8 clips / (2 processes x batch 2) = 2 steps x 2 epochs
    init0, init1 = load_file(tmp_path / "init0.st"), load_file(tmp_path / "init1.st")
    a, b = load_file(tmp_path / "rank0.st"), load_file(tmp_path / "rank1.st")
    w = "backbone.0.weight"
    assert not torch.equal(init0[w], init1[w])                   # they started apart
    assert not torch.equal(a[w], init0[w])                       # and trained
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["backbone.1.running_mean"], b["backbone.1.running_mean"])  # BN buffers too
    saved = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert all(torch.equal(v, a[k]) for k, v in saved.items())


def test_cli_trains_from_mp4_folder(tmp_path):
    from click.testing import CliRunner

    from slimkit.cli import _load_plugin_commands, cli

    _load_plugin_commands()

    write_synthetic_videos(tmp_path / "train", n_per_class=2, num_frames=8, size=32)
    write_synthetic_videos(tmp_path / "val", n_per_class=1, num_frames=8, size=32, seed=5)
    res = CliRunner().invoke(cli, ["video", "train", "--data", str(tmp_path / "train"), "--val-data",
                                   str(tmp_path / "val"), "--n-segment", "4", "--size", "32", "--batch-size", "2",
                                   "--max-steps", "2", "--direction", "past", "--output", str(tmp_path / "out"),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "trained 2 steps" in res.output and "eval accuracy" in res.output
    info = checkpoint_info(tmp_path / "out")
    assert info["metadata"]["classes"] == ["left_to_right", "right_to_left"]
    clf = load_checkpoint(tmp_path / "out")
    assert clf.slimkit_configs[0].direction == "past"
    # a saved Hugging Face DatasetDict of video paths and labels (train + validation splits)
    import datasets
    paths = sorted(str(p) for p in (tmp_path / "train").rglob("*.mp4"))
    labels = [0 if "/left_to_right/" in p else 1 for p in paths]
    ds = datasets.Dataset.from_dict({"video": paths, "label": labels})
    datasets.DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(tmp_path / "hf"))
    res = CliRunner().invoke(cli, ["video", "train", "--data", str(tmp_path / "hf"), "--n-segment", "4",
                                   "--size", "32", "--batch-size", "2", "--max-steps", "1", "--no-tsm",
                                   "--output", str(tmp_path / "out_hf"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "trained 1 steps" in res.output and "eval accuracy" in res.output
    assert not hasattr(load_checkpoint(tmp_path / "out_hf"), "slimkit_configs")  # TSN: no technique
    bad = CliRunner().invoke(cli, ["video", "train", "--data", str(tmp_path / "nowhere")])
    assert bad.exit_code != 0 and "nowhere" in bad.output
