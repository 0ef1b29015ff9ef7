"""Does TSM find the arrow of time on the real footage with more pixels, a longer step and longer training
than ``slimkit bench tsm-arrow-of-time``? Same footage, split, trainer and models as the benchmark, at
128x128 crops (decoded at 144), ``STEP`` seconds per frame step (default 0.5), 10 epochs and a wider tiny
ResNet. Prints held-out accuracy and the accuracy on a third of the training clips (does it fit them at
all?), and writes ``/tmp/arrow_wider_<step>.json``.

    .venv/bin/python scripts/arrow_of_time_wider.py [STEP] [THREADS]

Measured (1 thread, 13 min): TSM 52.5% held out (204 clips of vtest.avi: the other videos are too
short for a held-out clip at 0.5 s steps), 46.6% on its own training clips, final loss 0.694 (ln 2 =
0.693); TSN 50.0% and 50.0%."""
import copy
import json
import sys
import time

import torch

import slimkit
from slimkit_video.benchmarks import arrow_of_time as A
from slimkit_video.classifier import VideoClassifier, tiny_resnet
from slimkit_video.train import train

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
cfg = dict(A.FULL, decode=144, crop=128, step_seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 0.5,
           epochs=10, widths=(16, 32, 64, 128), flip=False)
t0 = time.time()
videos = A.load_footage(cfg["decode"], cfg["max_frames"])
split = A.make_split(videos, cfg["num_frames"], cfg["step_seconds"], cfg["test_fraction"], cfg["gap_seconds"],
                     train_every=cfg["train_every"], test_every=cfg["test_every"], max_train_starts=cfg["max_train_starts"])
train_ds = A.ArrowClips(videos, split.train, cfg["crop"], train=True, seed=0, flip=False)
train_eval = A.ArrowClips(videos, split.train[::3], cfg["crop"], train=False)
test_ds = A.ArrowClips(videos, split.test, cfg["crop"], train=False)
keys = [videos[c.video].name for c in split.test]
print("clips train/test", len(split.train), len(split.test), "decode s", round(time.time() - t0), flush=True)
torch.manual_seed(0)
base = VideoClassifier(tiny_resnet(widths=cfg["widths"]), n_segment=cfg["num_frames"], num_classes=2)
out = {"cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}
for name in ("TSM", "TSN"):
    clf = copy.deepcopy(base)
    if name == "TSM":
        clf = slimkit.apply(clf, "tsm", n_segment=cfg["num_frames"])
    res = train(clf, train_ds, test_ds, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=0,
                progress=False)
    acc, per_video, gap = A._accuracy_by(clf, test_ds, keys)
    tr_acc = A._accuracy_by(clf, train_eval, [0] * len(train_eval))[0]
    out[name] = {"held_out": acc, "per_video": per_video, "train_acc": tr_acc, "epoch_losses": res.epoch_losses,
                 "seconds": res.seconds}
    print(name, json.dumps(out[name]), flush=True)
json.dump(out, open(f"/tmp/arrow_wider_{cfg['step_seconds']}.json", "w"), indent=1)
