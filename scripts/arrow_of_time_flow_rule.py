"""How far does "which way the scene moves" tell the arrow of time on the real footage? A rule on the
``tsm-arrow-of-time`` benchmark's own split and settings: per video, the majority sign (and axis) of the
clips' summed mean optical flow (Farneback) on the training range; a held-out clip is called forward when
its summed flow has that sign (a reversed clip's flow is the forward one negated).

    .venv/bin/python scripts/arrow_of_time_flow_rule.py

Measured: 54.2% of 284 held-out clips (vtest 51.8%, bikes 40%, Megamind 76.5%, bigbuckbunny 66.7%)."""
import cv2
import numpy as np

from slimkit_video.benchmarks import arrow_of_time as A

cfg = A.FULL
videos = A.load_footage(cfg["decode"], cfg["max_frames"])
split = A.make_split(videos, cfg["num_frames"], cfg["step_seconds"], cfg["test_fraction"], cfg["gap_seconds"],
                     train_every=cfg["train_every"], test_every=cfg["test_every"], max_train_starts=cfg["max_train_starts"])
flow_cache = {}
def flow(v, i, j):
    key = (v, i, j)
    if key not in flow_cache:
        g = [cv2.cvtColor(videos[v].frames[k], cv2.COLOR_RGB2GRAY) for k in (i, j)]
        flow_cache[key] = cv2.calcOpticalFlowFarneback(g[0], g[1], None, 0.5, 3, 9, 3, 5, 1.2, 0).reshape(-1, 2).mean(0)
    return flow_cache[key]
def clip_flow(c):
    idx = list(range(c.start, c.start + c.stride * c.num_frames, c.stride))
    return sum(flow(c.video, a, b) for a, b in zip(idx[:-1], idx[1:]))
rule = {}
for v in range(len(videos)):
    fw = [clip_flow(c) for c in split.train if c.video == v and c.label == 0]
    if not fw:
        continue
    s = np.sum(np.sign(fw), 0)   # majority sign per axis over training clips
    axis = int(np.argmax(np.abs(s)))
    rule[v] = (axis, np.sign(s[axis]) or 1.0)
right = n = 0
per = {}
for c in split.test:
    if c.video not in rule:
        continue
    axis, sign = rule[c.video]
    f = clip_flow(c)[axis] * (1 if c.label == 0 else -1)   # a reversed clip's flow is the forward one negated
    pred_forward = np.sign(f) == sign
    ok = pred_forward == (c.label == 0)
    right += ok
    n += 1
    k = videos[c.video].name
    per.setdefault(k, [0, 0])
    per[k][0] += ok
    per[k][1] += 1
print("flow rule held-out accuracy", right / n, n, {k: round(a / b, 3) for k, (a, b) in per.items()})
