"""Benchmarks ``r2plus1d-cost`` and ``r2plus1d-fidelity`` (see the issue and README)."""
import copy
import warnings

import torch

import slimkit
from slimkit.measure import count_macs, count_params

from .models import conv_weight_count, r2plus1d_18, r3d_18


def _block_conv_weights(model) -> int:
    """Weights of the 3x3x3 (or (2+1)D) block convs only: what the R(2+1)D paper matches (no stem, no 1x1x1)."""
    from torch import nn
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv3d) and name.startswith("layer") and ".downsample." not in name:
            total += m.weight.numel()
    return total


# -- r2plus1d-cost ------------------------------------------------------------------------------
def run_cost(ctx) -> dict:
    """Params, Mult-Adds and median latency (batch 1, clips 8x112x112; quick: width 16, 8x56x56)."""
    torch.manual_seed(ctx.seed)
    width, size, frames = (16, 56, 8) if ctx.quick else (64, 112, 8)
    clip = torch.randn(1, 3, frames, size, size)
    r3d = r3d_18(width=width).eval()
    models = {
        "R3D-18": r3d,
        "R(2+1)D-18 (per-conv M)": r2plus1d_18(width=width).eval(),
        "R3D-18 converted (svd, rank=match)": slimkit.apply(copy.deepcopy(r3d), "r2plus1d").eval(),
        "R3D-18 converted (svd, rank=match, mid BN+ReLU)":
            slimkit.apply(copy.deepcopy(r3d), "r2plus1d", mid_activation=True).eval(),
        "R(2+1)D-18 torchvision-style (per-block M, stem 45)": r2plus1d_18(width=width, mid_width="per-block").eval(),
    }
    cl_clip = clip.contiguous(memory_format=torch.channels_last_3d)
    calls = {}
    for name, model in models.items():
        cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last_3d)
        calls[(name, "default")] = lambda m=model: m(clip)
        calls[(name, "channels_last")] = lambda m=cl_model: m(cl_clip)
    warmup, runs = (1, 3) if ctx.quick else (3, 15)
    lat = {k: r.to_dict() for k, r in ctx.latencies(calls, warmup=warmup, runs=runs,
                                                     desc="r2plus1d-cost rounds").items()}
    rows = []
    for name, model in models.items():
        macs = count_macs(model, clip)
        rows.append({"model": name, "params": count_params(model), "conv_weights": conv_weight_count(model),
                     "block_conv_weights": _block_conv_weights(model), "macs": macs.total,
                     "gmacs": round(macs.total / 1e9, 3),
                     "median_ms": lat[(name, "default")]["median_ms"], "p95_ms": lat[(name, "default")]["p95_ms"],
                     "median_ms_channels_last": lat[(name, "channels_last")]["median_ms"],
                     "p95_ms_channels_last": lat[(name, "channels_last")]["p95_ms"]})
    base = rows[0]
    for r in rows:
        r["params_vs_r3d"] = r["params"] / base["params"]
        r["block_conv_weights_vs_r3d"] = r["block_conv_weights"] / base["block_conv_weights"]
        r["macs_vs_r3d"] = r["macs"] / base["macs"]
        r["latency_vs_r3d"] = r["median_ms"] / base["median_ms"]
        r["latency_vs_r3d_channels_last"] = r["median_ms_channels_last"] / base["median_ms_channels_last"]
    by = {r["model"]: r for r in rows}
    conv_gap = abs(by["R3D-18 converted (svd, rank=match)"]["params_vs_r3d"] - 1) * 100
    r21_gap = abs(by["R(2+1)D-18 (per-conv M)"]["block_conv_weights_vs_r3d"] - 1) * 100
    tv_gap = abs(by["R(2+1)D-18 torchvision-style (per-block M, stem 45)"]["block_conv_weights_vs_r3d"] - 1) * 100
    report = models["R3D-18 converted (svd, rank=match)"].r2plus1d_report
    return {
        "clip": [1, 3, frames, size, size], "width": width, "rows": rows,
        "conversion": {"layers": len(report.layers), "left_alone": [n for n, _, _ in report.skipped],
                       "mean_rel_error": sum(r.rel_error for r in report.layers) / len(report.layers)},
        "goals": [
            slimkit.goal("converted params gap to R3D-18 (%)", conv_gap, 1.0, higher_is_better=False, unit="%"),
            slimkit.goal("R(2+1)D-18 per-conv block-conv weight gap (%)", r21_gap, 1.0, higher_is_better=False, unit="%"),
        ],
        # side row (not a goal): torchvision reuses one M per block and hand-sets the stem to 45
        "torchvision_style_block_conv_weight_gap_pct": tv_gap,
    }


def plot_cost(result: dict, png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["model"].replace(" (", "\n(") for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.8))
    for ax, key, label in zip(axes, ("params", "gmacs", "median_ms", "median_ms_channels_last"),
                              ("parameters (M)", "Mult-Adds (G)", "median latency (ms, batch 1)",
                               "median latency, channels_last_3d (ms)")):
        vals = [r[key] / (1e6 if key == "params" else 1) for r in rows]
        ax.barh(range(len(rows)), vals, color=["C0", "C1", "C2", "C3", "C7"][: len(rows)])
        if key.startswith("median"):
            p95 = [r[key.replace("median", "p95")] for r in rows]
            ax.errorbar(vals, range(len(rows)), xerr=[[0] * len(rows), [p - v for p, v in zip(p95, vals)]],
                        fmt="none", ecolor="k", capsize=3, lw=0.8)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(names if ax is axes[0] else [], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ends = ([r[key.replace("median", "p95")] for r in rows] if key.startswith("median") else vals)
        for i, (v, end) in enumerate(zip(vals, ends)):
            ax.text(max(v, end), i, f" {v:.0f}" if key.startswith("median") else f" {v:.3g}", va="center", fontsize=7)
        ax.set_xlim(0, max(ends) * 1.18)
    c = result["clip"]
    fig.suptitle(f"r2plus1d-cost: clip {c[2]}x{c[3]}x{c[4]}, batch 1, width {result['width']}, "
                 f"{result['machine']['threads']} thread(s) (whiskers: p95)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# -- r2plus1d-fidelity --------------------------------------------------------------------------
def run_fidelity(ctx) -> dict:
    from .fidelity import run
    return run(ctx)


def plot_fidelity(result: dict, png) -> None:
    from .fidelity import plot
    plot(result, png)
