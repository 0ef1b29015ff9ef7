"""Benchmarks ``tsm-overhead`` (latency of TSM vs TSN) and ``tsm-temporal`` (accuracy on temporal order)."""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

import slimkit
from slimkit.measure import count_macs, count_params
from slimkit_video.tsm.modules import TemporalShift
from slimkit_video.tsm.shift import INPLACE_MIN_NUMEL, reference_shift, shift_inplace_, temporal_shift, unshift_inplace_


# -- tsm-overhead -------------------------------------------------------------------------------
def _backbones():
    import transformers

    return {
        "MobileNetV2": lambda: transformers.MobileNetV2Model(transformers.MobileNetV2Config()),
        "ResNet-50": lambda: transformers.ResNetModel(transformers.ResNetConfig()),
    }


def _shift_input_shapes(model, x) -> list[tuple[int, ...]]:
    """Shapes of the tensors each TemporalShift of ``model`` shifts in one forward pass."""
    shapes, hooks = [], []
    for m in model.modules():
        if isinstance(m, TemporalShift):
            hooks.append(m.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape))))
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return shapes


def _paired(ctx, fns: dict, pairs: int) -> dict:
    """Time each fn once per round, rounds interleaved (order rotating), after one warm-up each.

    Same protocol as ``ctx.latencies`` (threads fixed, inference mode, round-robin) but keeps
    every round's wall and thread-CPU ms, so ratios can be taken per round (neighbouring runs
    see the same machine load).
    """
    from slimkit.measure import fixed_threads

    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    names = list(fns)
    with fixed_threads(ctx.threads), torch.inference_mode():
        for k in names:
            fns[k]()
        for i in ctx.progress(range(pairs), desc="rounds"):
            for k in names[i % len(names):] + names[:i % len(names)]:
                c0, t0 = time.thread_time(), time.perf_counter()
                fns[k]()
                wall[k].append((time.perf_counter() - t0) * 1000.0)
                cpu[k].append((time.thread_time() - c0) * 1000.0)
    return {"wall": wall, "cpu": cpu}


def _ratio(times: dict, a: str, b: str) -> float:
    return statistics.median([x / y for x, y in zip(times[a], times[b])])


def run_overhead(ctx) -> dict:
    """TSN vs TSM latency (8 frames, batch 1, HF MobileNetV2 and ResNet-50), and shift implementations.

    Variants run in interleaved rounds (TSN, TSM, TSM with the copying shift; order rotating),
    one forward each per round, so that load drift hits all alike; a ratio is the median over
    rounds of the per-round ratio. Thread CPU time ratios are reported beside the wall-clock ones.
    """
    torch.manual_seed(ctx.seed)
    frames, size = 8, (112 if ctx.quick else 224)
    x = torch.randn(frames, 3, size, size)
    models_out, shift_rows = [], []
    for name, build in ctx.progress(list(_backbones().items()), desc="tsm-overhead"):
        tsn = build().eval()
        tsm = slimkit.apply(copy.deepcopy(tsn), "tsm", n_segment=frames).eval()
        tsm_copy = copy.deepcopy(tsm)
        for m in tsm_copy.modules():
            if isinstance(m, TemporalShift):
                m.inplace = False
        with torch.inference_mode():
            assert torch.equal(tsm(x).pooler_output, tsm_copy(x).pooler_output)
        variants = {"TSN": tsn, "TSM": tsm, "TSM (copying shift)": tsm_copy}
        rounds = 3 if ctx.quick else (12 if name == "ResNet-50" else 20)
        t = _paired(ctx, {k: (lambda m=m: m(x)) for k, m in variants.items()}, rounds)
        macs_tsn, macs_tsm = count_macs(tsn, x).total, count_macs(tsm, x).total
        row = {"model": name, "frames": frames, "size": size, "rounds": rounds,
               "macs_tsn": macs_tsn, "macs_tsm": macs_tsm, "params_tsn": count_params(tsn),
               "params_tsm": count_params(tsm),
               "shifted_modules": sum(isinstance(m, TemporalShift) for m in tsm.modules())}
        for k in variants:
            row[f"median_ms[{k}]"] = statistics.median(t["wall"][k])
            row[f"cpu_ms[{k}]"] = statistics.median(t["cpu"][k])
            row[f"round_ms[{k}]"] = t["wall"][k]
        row["tsm_vs_tsn"] = _ratio(t["wall"], "TSM", "TSN")
        row["tsm_copy_vs_tsn"] = _ratio(t["wall"], "TSM (copying shift)", "TSN")
        row["tsm_vs_tsn_cpu"] = _ratio(t["cpu"], "TSM", "TSN")
        row["tsm_copy_vs_tsn_cpu"] = _ratio(t["cpu"], "TSM (copying shift)", "TSN")
        models_out.append(row)

        # the shift alone, on the activations this model shifts
        acts = [torch.randn(s) for s in _shift_input_shapes(tsm, x)]
        fns = {
            "temporal_shift (copy)": lambda: [temporal_shift(a, frames) for a in acts],
            "reference (zeros + slices)": lambda: [reference_shift(a, frames) for a in acts],
            "in-place shift + restore": lambda: [unshift_inplace_(a, shift_inplace_(a, frames)) for a in acts],
            "TemporalShift inference path": lambda: [unshift_inplace_(a, shift_inplace_(a, frames))
                                                     if a.numel() >= INPLACE_MIN_NUMEL else temporal_shift(a, frames)
                                                     for a in acts],
        }
        t = _paired(ctx, fns, 20 if ctx.quick else 100)
        srow = {"model": name, "tensors": len(acts), "floats": int(sum(a.numel() for a in acts))}
        for k in fns:
            srow[f"median_ms[{k}]"] = statistics.median(t["wall"][k])
        srow["ours_vs_reference"] = _ratio(t["wall"], "temporal_shift (copy)", "reference (zeros + slices)")
        srow["inplace_vs_reference"] = _ratio(t["wall"], "in-place shift + restore", "reference (zeros + slices)")
        srow["inference_path_vs_reference"] = _ratio(t["wall"], "TemporalShift inference path",
                                                     "reference (zeros + slices)")
        shift_rows.append(srow)
    goals = [slimkit.goal(f"TSM/TSN latency {r['model']}", r["tsm_vs_tsn"], 1.03, higher_is_better=False, unit="x")
             for r in models_out]
    goals += [slimkit.goal(f"our shift/reference {r['model']} shapes", r["ours_vs_reference"], 1.0,
                           higher_is_better=False, unit="x") for r in shift_rows]
    goals += [slimkit.goal(f"extra Mult-Adds {r['model']}", r["macs_tsm"] - r["macs_tsn"], 0,
                           higher_is_better=False) for r in models_out]
    return {"models": models_out, "shift": shift_rows, "goals": goals,
            "notes": "one forward per variant per round, rounds interleaved with rotating order; latency = "
                     "median over rounds, ratios = median of per-round ratios. TSM shifts tensors of >= "
                     f"{INPLACE_MIN_NUMEL} elements in place at inference (bit-exact restore); 'copying shift' "
                     "is the autograd path (temporal_shift)."}


def plot_overhead(result: dict, png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    keys = ["TSN", "TSM", "TSM (copying shift)"]
    models = result["models"]
    w = 0.27
    for i, k in enumerate(keys):
        vals = [m[f"median_ms[{k}]"] for m in models]
        bars = ax.bar([j + (i - 1) * w for j in range(len(models))], vals, w, label=k)
        if k != "TSN":
            for b, m in zip(bars, models):
                r = m["tsm_vs_tsn"] if k == "TSM" else m["tsm_copy_vs_tsn"]
                ax.annotate(f"{(r - 1) * 100:+.1f}%", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels([f"{m['model']}\n{m['frames']}x{m['size']}x{m['size']}" for m in models])
    ax.set_ylabel("latency, ms (median)")
    ax.set_title("TSM vs TSN (goal: within 3%)")
    ax.legend(fontsize=8)
    ax = axes[1]
    keys = ["reference (zeros + slices)", "temporal_shift (copy)", "in-place shift + restore",
            "TemporalShift inference path"]
    rows = result["shift"]
    w2 = 0.2
    for i, k in enumerate(keys):
        ax.bar([j + (i - 1.5) * w2 for j in range(len(rows))], [r.get(f"median_ms[{k}]", 0) for r in rows], w2,
               label=k)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['model']} shifts\n({r['tensors']} tensors, {r['floats'] / 1e6:.0f}M floats)"
                        for r in rows], fontsize=8)
    ax.set_ylabel("time for all shifts of one pass, ms")
    ax.set_yscale("log")
    ax.set_title("shift implementations")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# -- tsm-temporal -------------------------------------------------------------------------------
def run_temporal(ctx) -> dict:
    """TSM vs TSN trained with the same budget on generated temporal-order mp4s (via decord).

    Both start from the same initial weights (TSM adds none); same data order, optimizer, steps.
    """
    from slimkit_video.classifier import VideoClassifier, tiny_resnet
    from slimkit_video.data import VideoDataset, write_synthetic_videos
    from slimkit_video.train import train

    size, n_segment, written = 32, 8, 16
    n_train, n_val, epochs = (40, 20, 1) if ctx.quick else (300, 100, 3)
    widths = (16, 32, 64, 64)
    root = Path(tempfile.mkdtemp(prefix="tsm-temporal-"))
    t0 = time.perf_counter()
    write_synthetic_videos(root / "train", n_per_class=n_train, num_frames=written, size=size, seed=ctx.seed)
    write_synthetic_videos(root / "val", n_per_class=n_val, num_frames=written, size=size, seed=ctx.seed + 1)
    write_s = time.perf_counter() - t0
    norm = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    torch.manual_seed(ctx.seed)
    base = VideoClassifier(tiny_resnet(widths=widths), n_segment=n_segment, num_classes=2)
    runs = {}
    for name in ctx.progress(["TSN", "TSM"], desc="tsm-temporal"):
        clf = copy.deepcopy(base)
        if name == "TSM":
            clf = slimkit.apply(clf, "tsm", n_segment=n_segment)
        train_ds = VideoDataset.from_folder(root / "train", num_segments=n_segment, size=size, train=True,
                                            seed=ctx.seed, **norm)
        val_ds = VideoDataset.from_folder(root / "val", num_segments=n_segment, size=size, train=False, **norm)
        res = train(clf, train_ds, val_ds, epochs=epochs, batch_size=16, lr=3e-3, seed=ctx.seed,
                    progress=ctx.show_progress)
        runs[name] = {"eval_accuracy": res.eval_accuracy, "accuracy": res.accuracy,
                      "epoch_losses": res.epoch_losses, "steps": res.steps, "seconds": res.seconds,
                      "losses": res.losses}
    return {
        "data": {"train_clips": 2 * n_train, "val_clips": 2 * n_val, "frames_written": written,
                 "n_segment": n_segment, "size": size, "classes": ["left_to_right", "right_to_left"],
                 "format": "mp4v files read back with decord, TSN sampling", "write_seconds": write_s},
        "backbone": {"name": "tiny HF ResNet (basic blocks)", "widths": list(widths),
                     "params": count_params(base)},
        "budget": {"epochs": epochs, "batch_size": 16, "optimizer": "adamw", "lr": 3e-3, "schedule": "cosine"},
        "runs": runs,
        "chance": 0.5,
        "goals": [slimkit.goal("TSM accuracy", runs["TSM"]["accuracy"], 0.90),
                  slimkit.goal("TSN accuracy (near chance)", runs["TSN"]["accuracy"], 0.60, higher_is_better=False)],
    }


def plot_temporal(result: dict, png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, run in result["runs"].items():
        axes[0].plot(range(1, len(run["losses"]) + 1), run["losses"], label=name, lw=1)
        axes[1].plot(range(1, len(run["eval_accuracy"]) + 1), [a * 100 for a in run["eval_accuracy"]],
                     marker="o", label=f"{name} ({run['accuracy'] * 100:.1f}%)")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss")
    axes[0].set_title("same budget, same initial weights")
    axes[0].legend()
    axes[1].axhline(50, color="grey", ls="--", lw=1, label="chance")
    axes[1].axhline(90, color="green", ls=":", lw=1, label="TSM goal")
    axes[1].set_ylim(0, 105)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation accuracy, %")
    axes[1].set_title("temporal order (left vs right): TSM vs TSN")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
