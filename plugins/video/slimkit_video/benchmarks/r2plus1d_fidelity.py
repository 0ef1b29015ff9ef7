"""``r2plus1d-fidelity``: how much of a trained 3D CNN survives SVD conversion, vs rank.

Trains a small R3D (depth 10) on the generated temporal-order dataset (classes differ only in the
direction of motion, so the network must use time), converts it with ``init="svd"`` at ranks from
low to full (spectral-energy fractions, the parameter-matched width and full rank), and measures
test accuracy (model wrapped in ``slimkit_video.classifier.VideoClassifier(clip_input=True)``, trained
with ``slimkit_video.train.train``) and the relative output error ||logits_2+1D - logits_3D||_F / ||logits_3D||_F,
before any fine-tuning and after a short one; random initialisation at the matched rank is the
control.
"""
import copy
import math

import torch
from torch import nn

import slimkit
from slimkit_video.r2plus1d.models import r3d_18

SWEEP = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, "match", "full")


def _settings(quick: bool) -> dict:
    if quick:
        return dict(train=24, test=16, frames=8, size=32, width=4, epochs=2, ft_steps=3, batch=8,
                    sweep=(0.5, "match", "full"))
    return dict(train=160, test=100, frames=8, size=32, width=12, epochs=25, ft_steps=30, batch=16, sweep=SWEEP)


def _data(n_per_class: int, frames: int, size: int, seed: int):
    """(N, T, 3, H, W) float clips and labels, rendered once."""
    from slimkit_video.data import SyntheticTemporalDataset

    ds = SyntheticTemporalDataset(n_per_class=n_per_class, num_frames=frames, size=size, seed=seed)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, batch: int, seed: int) -> None:
    """Train in place with the shared accelerate trainer: AdamW, cosine lr, ``steps`` mini-batches."""
    from torch.utils.data import TensorDataset

    from slimkit_video.train import train

    epochs = math.ceil(steps / max(len(x) // batch, 1))
    train(model, TensorDataset(x, y), None, epochs=epochs, max_steps=steps, batch_size=batch, lr=lr,
          seed=seed, progress=False)
    model.eval()


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 50):
    model.eval()
    logits = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
    return (logits.argmax(1) == y).float().mean().item(), logits


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def run(ctx) -> dict:
    s = _settings(ctx.quick)
    torch.manual_seed(ctx.seed)
    xtr, ytr = _data(s["train"], s["frames"], s["size"], seed=ctx.seed + 1)
    xte, yte = _data(s["test"], s["frames"], s["size"], seed=ctx.seed + 2)
    steps = s["epochs"] * math.ceil(len(xtr) / s["batch"])
    from slimkit_video.classifier import VideoClassifier

    # the 3D network sees (N, C, T, H, W) clips; the classifier takes the datasets' (N, T, C, H, W)
    net = r3d_18(depth=10, width=s["width"], num_classes=2, clip_len=s["frames"])
    base = VideoClassifier(net, n_segment=s["frames"], clip_input=True)
    _fit(base, xtr, ytr, steps, 1e-3, s["batch"], ctx.seed)
    acc3d, logits3d = _evaluate(base, xte, yte)

    def convert(rank, init, mid):
        torch.manual_seed(ctx.seed + 7)
        m = copy.deepcopy(base)
        slimkit.apply(m.backbone, "r2plus1d", rank=rank, init=init, mid_activation=mid)
        return m

    def measure(model, label, init, mid):
        acc, logits = _evaluate(model, xte, yte)
        rep = model.backbone.r2plus1d_report
        row = {"rank": label, "init": init, "mid_activation": mid, "acc": acc,
               "rel_output_error": _rel(logits, logits3d),
               "relative_rank": sum(r.rank / r.full_rank for r in rep.layers) / len(rep.layers),
               "params_ratio": rep.model_params_after / rep.model_params_before,
               "mean_kernel_rel_error": (None if init == "random" else
                                         sum(r.rel_error for r in rep.layers) / len(rep.layers))}
        ft = copy.deepcopy(model)
        _fit(ft, xtr, ytr, s["ft_steps"], 5e-4, s["batch"], ctx.seed + 3)
        row["acc_finetuned"], logits_ft = _evaluate(ft, xte, yte)
        row["rel_output_error_finetuned"] = _rel(logits_ft, logits3d)
        return row

    rows = []
    # the SVD sweep; random init at the matched rank (control); SVD + BN/ReLU in between (init only)
    jobs = [(r, "svd", False) for r in s["sweep"]] + [("match", "random", False), ("match", "svd", True)]
    for rank, init, mid in ctx.progress(jobs, desc="r2plus1d-fidelity"):
        label = rank if isinstance(rank, str) else f"energy {rank:g}"
        rows.append(measure(convert(rank, init, mid), label, init, mid))
    by = {(r["rank"], r["init"], r["mid_activation"]): r for r in rows}
    svd_m, rnd_m = by[("match", "svd", False)], by[("match", "random", False)]
    mid_m = by[("match", "svd", True)]
    kept = svd_m["acc"] / max(acc3d, 1e-12)
    return {
        "settings": {k: v for k, v in s.items() if k != "sweep"}, "train_steps": steps,
        "chance": 0.5, "acc_3d": acc3d, "rows": rows,
        "matched": {"svd_acc": svd_m["acc"], "svd_acc_finetuned": svd_m["acc_finetuned"],
                    "svd_rel_output_error": svd_m["rel_output_error"], "random_acc": rnd_m["acc"],
                    "random_acc_finetuned": rnd_m["acc_finetuned"], "svd_mid_bn_relu_acc": mid_m["acc"],
                    "svd_mid_bn_relu_acc_finetuned": mid_m["acc_finetuned"], "params_ratio": svd_m["params_ratio"]},
        "goals": [
            slimkit.goal("3D network test accuracy (sanity)", acc3d, 0.9),
            slimkit.goal("SVD @ matched rank: accuracy kept before fine-tune", kept, 0.95),
            slimkit.goal("random init @ matched rank: accuracy before fine-tune (chance 0.5)", rnd_m["acc"], 0.6,
                         higher_is_better=False),
        ],
    }


def plot(result: dict, png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    svd = sorted((r for r in result["rows"] if r["init"] == "svd" and not r.get("mid_activation")),
                 key=lambda r: r["relative_rank"])
    rnd = [r for r in result["rows"] if r["init"] == "random"]
    mid = [r for r in result["rows"] if r.get("mid_activation")]
    x = [r["relative_rank"] for r in svd]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    a1.plot(x, [r["acc"] for r in svd], "o-", label="SVD init, no fine-tune")
    a1.plot(x, [r["acc_finetuned"] for r in svd], "s--", label=f"SVD init + {result['settings']['ft_steps']} fine-tune steps")
    for r in rnd:
        a1.plot([r["relative_rank"]], [r["acc"]], "rx", ms=10, label="random init @ match, no fine-tune")
        a1.plot([r["relative_rank"]], [r["acc_finetuned"]], "r^", ms=8, label="random init @ match + fine-tune")
    for r in mid:
        a1.plot([r["relative_rank"]], [r["acc"]], "mD", ms=7, label="SVD @ match + BN/ReLU between (init only)")
        a1.plot([r["relative_rank"]], [r["acc_finetuned"]], "mv", ms=7, label="... + fine-tune")
    a1.axhline(result["acc_3d"], color="k", lw=1, label=f"3D network ({result['acc_3d']:.3f})")
    a1.axhline(0.95 * result["acc_3d"], color="k", lw=0.8, ls=":", label="95% of 3D")
    a1.axhline(result["chance"], color="gray", lw=0.8, ls="--", label="chance")
    a2.semilogy(x, [max(r["rel_output_error"], 1e-8) for r in svd], "o-", label="no fine-tune")
    a2.semilogy(x, [max(r["rel_output_error_finetuned"], 1e-8) for r in svd], "s--", label="after fine-tune")
    for a in (a1, a2):
        for r in svd:
            if r["rank"] in ("match", "full"):
                a.axvline(r["relative_rank"], color="C2" if r["rank"] == "match" else "C7", lw=0.8, ls="-.")
        a.set_xlabel("mean rank / full rank over converted convs")
        a.grid(alpha=0.3)
    for r in svd:
        if r["rank"] == "match":
            continue
        a1.annotate(r["rank"].replace("energy ", "E"), (r["relative_rank"], r["acc"]), fontsize=7,
                    xytext=(3, -10), textcoords="offset points")
    a1.set_ylabel("test accuracy")
    a1.set_title("accuracy vs rank (matched width: green)")
    a1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    a2.set_ylabel("relative logit error vs 3D network")
    a2.set_title("relative output error vs rank")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
