"""Two processes (torchrun, gloo on CPU) for the trainers the per-plugin tests do not cover:
HAT's SuperTransformer and SpAtten distillation. Every rank starts from different weights; after
training both hold the same weights (accelerate broadcasts and averages), and only rank 0 writes.
(Video and causal-LM training have their two-process tests beside their other tests.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

HAT = textwrap.dedent("""
    import json, os, sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    from nlp._hat_common import tiny_space
    from slimkit_nlp.hat.supernet import SuperTransformer
    from slimkit_nlp.hat.tasks import Seq2SeqTask
    from slimkit_nlp.hat.train import train_supernet
    torch.manual_seed(100 + int(os.environ["RANK"]))        # different initial weights per process
    net = SuperTransformer(tiny_space(vocab_size=13))
    task = Seq2SeqTask("reverse", min_len=3, max_len=6, val_size=16)
    s = train_supernet(net, task, steps=4, batch_size=4, warmup=1, progress=False, output_dir=sys.argv[1],
                       checkpoint_every=2)
    w = [float(p.detach().double().sum()) for p in net.parameters()][:6]
    with open(f"{sys.argv[1]}.rank{os.environ['RANK']}.json", "w") as f:   # one file per rank: no mixed lines
        json.dump({"n": s["num_processes"], "w": w, "val": s["val_loss_largest"]}, f)
""")

DISTILL = textwrap.dedent("""
    import json, os, sys, torch
    torch.set_num_threads(1)
    import transformers as tf
    from slimkit_nlp.spatten import SpattenConfig, distill
    from slimkit_nlp.spatten.transform import apply_spatten
    torch.manual_seed(100 + int(os.environ["RANK"]))        # different initial weights per process
    cfg = tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    model = apply_spatten(tf.BertModel(cfg).eval(), SpattenConfig(token_keep=0.5))
    ids = torch.randint(5, 60, (8, 16), generator=torch.Generator().manual_seed(0))
    r = distill(model, ids, steps=3, batch_size=2, rank=2, show_progress=False, output_dir=sys.argv[1],
                save_every=2)
    w = [float(p.detach().double().sum()) for p in model.parameters()][:6]
    with open(f"{sys.argv[1]}.rank{os.environ['RANK']}.json", "w") as f:   # one file per rank: no mixed lines
        json.dump({"w": w, "hist": r["history"]}, f)
""")


def _torchrun(tmp_path: Path, code: str) -> list[dict]:
    script = tmp_path / "run.py"
    script.write_text(code)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLIMKIT_LOAD_PLUGINS": "nlp"}
    res = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(script), str(tmp_path / "out"),
                          str(REPO / "tests")], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads((tmp_path / f"out.rank{r}.json").read_text()) for r in (0, 1)
            if (tmp_path / f"out.rank{r}.json").exists()]


@pytest.mark.slow
def test_hat_supernet_trains_as_one_model_in_two_processes(tmp_path):
    # before: each rank trained alone from its own weights and both wrote the same folder
    rows = _torchrun(tmp_path, HAT)
    assert len(rows) == 2 and rows[0]["n"] == 2
    assert rows[0]["w"] == pytest.approx(rows[1]["w"], abs=1e-6)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert json.loads((out / "train_state.json").read_text())["num_processes"] == 2
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]   # no temporary folders left


@pytest.mark.slow
def test_spatten_distill_trains_as_one_model_in_two_processes(tmp_path):
    rows = _torchrun(tmp_path, DISTILL)
    assert len(rows) == 2
    assert rows[0]["w"] == pytest.approx(rows[1]["w"], abs=1e-6)
    assert (tmp_path / "out" / "checkpoints" / "step-0000003").is_dir()
