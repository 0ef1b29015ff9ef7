"""Benchmarks of online streaming inference.

- ``online-latency``: per-frame latency (p50, p95) of (a) the online step of a causal TSM
  MobileNetV2, (b) the common workaround, re-running the last 8 frames as a clip for every new
  frame, (c) the plain 2D MobileNetV2 on one frame; HF MobileNetV2 (default config, 27 classes as
  Jester) at 224x224, threads fixed. The three are timed in interleaved rounds so that machine
  load hits them alike. Goals: (a) within 10 % of (c); (b) / (a) >= 6.
- ``online-memory``: 1,000 online steps (untracked; RSS and buffer bytes sampled every 100) between
  a first and a last 50-frame window run under the tensor tracker (peak tensor bytes of a step,
  tensor bytes left alive). Goal: flat (no growth anywhere).
- ``online-accuracy``: the shipped demo model on generated clips, offline (the clip through the
  ``VideoClassifier``) vs online (stepping the frames): the same accuracy and the same
  prediction on every clip; plus the live-loop accuracy on the ``synthetic`` stream.
- ``online-ort``: frames per second of the online step in ONNX Runtime (the exported step, buffers
  as inputs and outputs; graph optimizations ``ORT_ENABLE_ALL``, also ``ENABLE_BASIC`` and a static
  int8 QDQ variant) against eager PyTorch, on the shipped demo model (64x64) and on a causal TSM
  MobileNetV2 ``VideoClassifier`` at 224x224 (weights randomised so logits are of order 1), 1 thread,
  interleaved rounds; max |ORT - PyTorch| over a long stream of frames; int8 accuracy on the demo's
  clips. Goals: FPS ratio ORT / PyTorch >= 1.5 on both models, outputs within 1e-4.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

import slimkit
import slimkit.measure


def _mobilenet_v2(num_labels: int = 27):
    import transformers

    return transformers.MobileNetV2ForImageClassification(
        transformers.MobileNetV2Config(num_labels=num_labels)).eval()


def _percentile(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


# -- online-latency ------------------------------------------------------------------------------
def run_latency(ctx: slimkit.BenchContext) -> dict:
    from slimkit_video.online.convert import to_online

    size = 224
    T = 8
    torch.manual_seed(ctx.seed)
    plain = _mobilenet_v2()
    tsm = slimkit.apply(_mobilenet_v2(), "tsm", n_segment=T, direction="past")
    stream = to_online(tsm)
    frames = torch.randn(T + 64, 3, size, size)
    clip = frames[:T].clone()
    state = {"i": 0}

    def online():
        state["i"] = (state["i"] + 1) % frames.shape[0]
        return stream.step(frames[state["i"]])

    def rerun():
        # the workaround: keep the last T frames, run the whole clip for every new frame
        clip[:-1] = clip[1:].clone()
        clip[-1] = frames[state["i"]]
        return tsm(clip).logits[-1]

    one = frames[:1]

    def plain_2d():
        return plain(one).logits[0]

    rounds = 3 if ctx.quick else 10
    per_round = 4 if ctx.quick else 12
    times = {"online": [], "rerun": [], "plain": []}
    fns = {"online": online, "rerun": rerun, "plain": plain_2d}
    with slimkit.measure.fixed_threads(ctx.threads), torch.inference_mode():
        for name, fn in fns.items():  # warm-up
            for _ in range(3):
                fn()
        for _ in ctx.progress(range(rounds), total=rounds, desc="online-latency rounds"):
            for name in ("online", "plain", "rerun", "plain", "online"):
                n = per_round if name != "rerun" else max(2, per_round // 4)
                for _ in range(n):
                    t0 = time.perf_counter()
                    fns[name]()
                    times[name].append((time.perf_counter() - t0) * 1000.0)
    stats = {k: {"p50_ms": statistics.median(v), "p95_ms": _percentile(v, 0.95), "mean_ms": statistics.fmean(v),
                 "runs": len(v)} for k, v in times.items()}
    overhead = stats["online"]["p50_ms"] / stats["plain"]["p50_ms"]
    speedup = stats["rerun"]["p50_ms"] / stats["online"]["p50_ms"]
    return {
        "model": "HF MobileNetV2 (default config, 27 classes), 224x224, TSM direction='past', shift_div 8",
        "n_segment": T,
        "threads": ctx.threads,
        "buffers": len(stream.cells),
        "buffer_floats": sum(torch.Size(s).numel() for s in stream.buffer_shapes((3, size, size))),
        "latency": stats,
        "online_vs_plain_ratio_p50": overhead,
        "online_vs_plain_ratio_p95": stats["online"]["p95_ms"] / stats["plain"]["p95_ms"],
        "rerun_vs_online_speedup_p50": speedup,
        "goals": [
            slimkit.goal("online step / plain 2D (p50)", overhead, 1.10, higher_is_better=False, unit="x"),
            slimkit.goal("re-run 8 frames / online step (p50)", speedup, 6.0, unit="x"),
        ],
    }


def plot_latency(result: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = result["latency"]
    names = [("plain", "plain 2D\n(1 frame)"), ("online", "online step\n(shift buffers)"),
             ("rerun", f"re-run last {result['n_segment']}\nframes as a clip")]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [lat[k]["p50_ms"] for k, _ in names], 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [lat[k]["p95_ms"] for k, _ in names], 0.4, label="p95")
    for x, (k, _) in zip(xs, names):
        ax.text(x - 0.2, lat[k]["p50_ms"], f"{lat[k]['p50_ms']:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([n for _, n in names])
    ax.set_ylabel("ms per new frame")
    ax.set_title(f"Per-frame latency, MobileNetV2 224x224, {result['threads']} thread(s): online "
                 f"{result['online_vs_plain_ratio_p50']:.2f}x plain, {result['rerun_vs_online_speedup_p50']:.1f}x "
                 f"faster than re-run", fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# -- online-memory -------------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_memory(ctx: slimkit.BenchContext) -> dict:
    from slimkit.measure import peak_memory
    from slimkit_video.online.convert import to_online

    n_frames = 100 if ctx.quick else 1000
    size = 112 if ctx.quick else 224
    every = 20 if ctx.quick else 100
    probe = 20 if ctx.quick else 50
    torch.manual_seed(ctx.seed)
    tsm = slimkit.apply(_mobilenet_v2(), "tsm", n_segment=8, direction="past")
    stream = to_online(tsm)
    frames = torch.randn(16, 3, size, size)
    state = {"t": 0}

    def steps(n):
        for _ in range(n):
            stream.step(frames[state["t"] % frames.shape[0]])
            state["t"] += 1

    with slimkit.measure.fixed_threads(ctx.threads):
        steps(1)
        stream.reset()
        # tensor bytes of a first and a last window, under the (slow) tensor tracker
        _, first = peak_memory(lambda: steps(probe))
        samples = []
        bar = ctx.progress(total=n_frames, desc="online-memory frames")
        done = 0
        while done < n_frames:  # the long run itself, untracked; RSS and buffers sampled
            steps(every)
            done += every
            bar.update(every)
            samples.append({"frame": done, "buffer_bytes": stream.buffer_bytes(), "rss_bytes": _rss_bytes()})
        bar.close()
        _, last = peak_memory(lambda: steps(probe))
    buf = [s["buffer_bytes"] for s in samples]
    rss = [s["rss_bytes"] for s in samples]
    # growth = peak RSS of the second half minus that of the first half; single samples jitter by
    # a few MiB (allocator), while a leak of one buffer copy per frame (108 KiB) would add ~50 MiB
    half = max(1, len(rss) // 2)
    rss_growth = (max(rss[half:]) - max(rss[:half])) / 2**20
    return {
        "model": f"HF MobileNetV2 (default), {size}x{size}, TSM past, online step",
        "frames": n_frames + 2 * probe + 1,
        "samples": samples,
        "buffer_bytes": buf[-1],
        "buffer_bytes_growth": max(buf) - min(buf),
        "probe_frames": probe,
        "peak_step_tensor_bytes_first": first.peak_tensor_bytes, "peak_step_tensor_bytes_last": last.peak_tensor_bytes,
        "retained_tensor_bytes_first": first.end_tensor_bytes, "retained_tensor_bytes_last": last.end_tensor_bytes,
        "rss_first_mib": rss[0] / 2**20, "rss_last_mib": rss[-1] / 2**20,
        "rss_growth_second_half_vs_first_half_mib": rss_growth,
        "goals": [
            slimkit.goal("buffer bytes growth over the run", max(buf) - min(buf), 0, higher_is_better=False, unit="B"),
            slimkit.goal("peak step tensor bytes, last/first window", last.peak_tensor_bytes / first.peak_tensor_bytes,
                         1.0, higher_is_better=False, unit="x"),
            slimkit.goal("tensor bytes left alive, last - first window",
                         last.end_tensor_bytes - first.end_tensor_bytes, 0, higher_is_better=False, unit="B"),
            slimkit.goal("peak RSS growth, 2nd half vs 1st half", rss_growth, 4.0, higher_is_better=False, unit=" MiB"),
        ],
    }


def plot_memory(result: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples"]
    x = [r["frame"] for r in s]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(x, [r["rss_bytes"] / 2**20 for r in s], marker="o", label="process RSS")
    ax.plot(x, [r["buffer_bytes"] / 2**20 for r in s], marker="^", label="stream buffers")
    for key, at, name in (("first", x[0], "first"), ("last", x[-1], "last")):
        v = result[f"peak_step_tensor_bytes_{key}"] / 2**20
        ax.scatter([at], [v], marker="s", color="tab:green", zorder=3,
                   label="peak tensor bytes of a step window" if key == "first" else None)
    ax.set_xlabel("frames streamed")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Online TSM MobileNetV2 over {result['frames']} frames: flat "
                 f"(RSS growth {result['rss_growth_second_half_vs_first_half_mib']:.1f} MiB)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# -- online-accuracy -----------------------------------------------------------------------------
def run_accuracy(ctx: slimkit.BenchContext) -> dict:
    from slimkit_video.online.convert import to_online
    from slimkit_video.online.demo_data import StreamWindows
    from slimkit_video.online.live import LivePredictor, demo_model_dir, load_online_model
    from slimkit_video.sources.openers import SyntheticSource
    from slimkit_video.train import checkpoint_info, load_checkpoint

    n_per_class = 25 if ctx.quick else 200
    with demo_model_dir() as d:
        info = checkpoint_info(d)
        clf = load_checkpoint(d).eval()
    meta = info["metadata"]
    T = info["n_segment"]
    stream = to_online(clf)
    results = {}
    for stride in (1, 2):
        data = StreamWindows(n_per_class, T, clip_len=meta.get("clip_len", 16), size=meta["size"], seed=123_456,
                             mean=meta["mean"], std=meta["std"], strides=(stride,))
        off_ok = on_ok = agree = 0
        worst = 0.0
        for i in ctx.progress(range(len(data)), total=len(data), desc=f"online-accuracy stride {stride}"):
            clip, label = data[i]
            with torch.inference_mode():
                off_logits, per_frame = clf(clip[None], return_per_frame=True)
                stream.reset()
                on_frames = torch.stack([stream.step(clip[t]) for t in range(T)])
            on_logits = on_frames.mean(0)
            worst = max(worst, (on_frames - per_frame[0]).abs().max().item())
            p_off, p_on = int(off_logits[0].argmax()), int(on_logits.argmax())
            off_ok += p_off == label
            on_ok += p_on == label
            agree += p_off == p_on
        n = len(data)
        results[f"stride{stride}"] = {"clips": n, "offline_accuracy": off_ok / n, "online_accuracy": on_ok / n,
                                      "agreement": agree / n, "max_abs_logit_diff": worst}
    # the live loop on the synthetic stream (no pacing here: every frame is processed)
    model = load_online_model()
    predictor = LivePredictor(model, history=8)
    src = SyntheticSource("synthetic", size=model.size, seed=ctx.seed + 7)
    n_live = 300 if ctx.quick else 2000
    ok = 0
    for _ in ctx.progress(range(n_live), total=n_live, desc="live synthetic stream"):
        frame = next(src)
        pred, _ = predictor(frame, 0)
        ok += pred == src.label
    r1 = results["stride1"]
    return {
        "model": "shipped online demo (VideoClassifier(tiny HF ResNet) + TSM past)",
        "n_segment": T,
        "clips": results,
        "live_stream": {"frames": n_live, "smoothed_accuracy": ok / n_live, "resets": predictor.resets,
                        "history": 8},
        "goals": [
            slimkit.goal("online - offline accuracy (stride 1)", abs(r1["online_accuracy"] - r1["offline_accuracy"]),
                         0.0, higher_is_better=False),
            slimkit.goal("offline/online prediction agreement", min(r["agreement"] for r in results.values()), 1.0),
            slimkit.goal("live synthetic stream accuracy", ok / n_live, 0.5),
        ],
    }


def plot_accuracy(result: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = result["clips"]
    keys = sorted(clips)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    xs = range(len(keys))
    off = [100 * clips[k]["offline_accuracy"] for k in keys]
    on = [100 * clips[k]["online_accuracy"] for k in keys]
    ax.bar([x - 0.2 for x in xs], off, 0.4, label="offline (whole clip)")
    ax.bar([x + 0.2 for x in xs], on, 0.4, label="online (frame by frame)")
    live = 100 * result["live_stream"]["smoothed_accuracy"]
    ax.bar([len(keys)], [live], 0.4, color="tab:green", label="live stream, smoothed per frame")
    for x, (a, b) in enumerate(zip(off, on)):
        ax.text(x, max(a, b) + 1, f"{a:.1f} / {b:.1f}", ha="center", fontsize=8)
    ax.text(len(keys), live + 1, f"{live:.1f}", ha="center", fontsize=8)
    ax.set_xticks(list(range(len(keys) + 1)))
    ax.set_xticklabels([f"clips, frame {k.replace('stride', 'stride ')}" for k in keys] + ["synthetic stream"])
    ax.set_ylim(0, 110)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Shipped online demo model: offline == online", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# -- online-ort ----------------------------------------------------------------------------------
ORT_VARIANTS = (("torch", "eager PyTorch"), ("ort", "ONNX Runtime, ENABLE_ALL"),
                ("ort_basic", "ONNX Runtime, ENABLE_BASIC"), ("ort_int8", "ONNX Runtime int8 (static QDQ)"))


def randomize_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fan-in scaled random weights and random BatchNorm statistics, in place: logits of order 1.

    Hugging Face's default initialisation gives MobileNetV2 logits of about 1e-21, which would make
    any output tolerance meaningless (and feed denormals to the timing).
    """
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0, ((0.5 if isinstance(m, nn.Linear) else 2.0) / fan_in) ** 0.5, generator=g)
                if m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1, generator=g)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.8, 1.2, generator=g)
                m.weight.uniform_(0.8, 1.2, generator=g)
                m.bias.uniform_(-0.1, 0.1, generator=g)
    return model


def _mobilenet_v2_stream(seed: int):
    """A causal TSM MobileNetV2 ``VideoClassifier`` (27 classes) as an online stream, random weights."""
    from slimkit_video.classifier import VideoClassifier, build_backbone
    from slimkit_video.online.convert import to_online

    torch.manual_seed(seed)
    clf = VideoClassifier(build_backbone("mobilenet_v2"), n_segment=8, num_classes=27)
    clf = slimkit.apply(clf, "tsm", n_segment=8, direction="past")
    return to_online(randomize_weights(clf, seed).eval())


def _synthetic_inputs(n: int, size: int, seed: int, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """``n`` normalised frames ``(3, size, size)`` of the synthetic stream (float32 tensors)."""
    from slimkit_video.sources.openers import SyntheticSource

    src = SyntheticSource("synthetic", size=size, seed=seed)
    m = torch.tensor(mean).view(3, 1, 1) * 255.0
    s = torch.tensor(std).view(3, 1, 1) * 255.0
    return [((torch.from_numpy(next(src)).permute(2, 0, 1).float() - m) / s).contiguous() for _ in range(n)]


class _Cycler:
    """``step()`` feeds the next of ``frames`` (cyclically) to ``stream.step``: one timed call per frame."""

    def __init__(self, stream, frames) -> None:
        self.stream, self.frames, self.i = stream, frames, 0

    def __call__(self):
        self.i = (self.i + 1) % len(self.frames)
        return self.stream.step(self.frames[self.i])


def quantize_step_int8(path: Path, out: Path, calibration: list) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) of an exported step, calibrated on
    ``calibration``: a list of ``{input name: array}`` feeds (frames with their real buffers)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            return next(self.it, None)

    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(path), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _calibration_feeds(step, frames) -> list:
    """Feeds ``{name: array}`` of ``frames`` streamed through the fp32 ONNX step (real buffers)."""
    feeds, bufs = [], step.init_buffers()
    for f in frames:
        x = f[None].numpy()
        feeds.append(dict(zip(step.input_names, (x, *bufs))))
        _, bufs = step.run(x, bufs)
    return feeds


def _stream_difference(torch_stream, ort_stream, frames, n: int) -> dict:
    """Max |ORT - PyTorch| of the logits over ``n`` consecutive frames (cycling ``frames``), buffers carried."""
    torch_stream.reset()
    ort_stream.reset()
    worst, agree, biggest = 0.0, 0, 0.0
    for t in range(n):
        a = torch_stream.step(frames[t % len(frames)])
        b = ort_stream.step(frames[t % len(frames)])
        worst = max(worst, (a - b).abs().max().item())
        biggest = max(biggest, a.abs().max().item())
        agree += int(a.argmax() == b.argmax())
    return {"frames": n, "max_abs_diff": worst, "max_abs_logit": biggest, "argmax_agreement": agree / n}


def _demo_clip_accuracy(streams: dict, n_per_class: int, seed: int) -> dict:
    """Accuracy of each stream (stepping every frame, mean logits) on the demo's generated clips."""
    from slimkit_video.online.demo_data import StreamWindows
    from slimkit_video.online.live import demo_model_dir
    from slimkit_video.train import checkpoint_info

    with demo_model_dir() as d:
        meta = checkpoint_info(d)["metadata"]
    data = StreamWindows(n_per_class, 8, clip_len=meta.get("clip_len", 16), size=meta["size"], seed=seed,
                         mean=meta["mean"], std=meta["std"], strides=(1, 2))
    right = {k: 0 for k in streams}
    for i in range(len(data)):
        clip, label = data[i]
        for k, s in streams.items():
            s.reset()
            logits = torch.stack([s.step(clip[t]) for t in range(clip.shape[0])]).mean(0)
            right[k] += int(int(logits.argmax()) == label)
    return {"clips": len(data), **{k: v / len(data) for k, v in right.items()}}


def _ort_model_runs(ctx, key: str, stream, size: int, tmp: Path, diff_frames: int, runs: int) -> dict:
    """Export ``stream`` at ``size``x``size``, build the ORT variants and time them against PyTorch."""
    from slimkit_video.online.ort import OrtStep, OrtStream, export_model_step

    frame_shape = (3, size, size)
    frames = _synthetic_inputs(32, size, ctx.seed + 11)
    t0 = time.perf_counter()
    path = export_model_step(stream, frame_shape, tmp / f"{key}.onnx")
    export_s = time.perf_counter() - t0
    fp32 = OrtStep(path, threads=ctx.threads, optimization="all")
    t0 = time.perf_counter()
    int8_path = quantize_step_int8(path, tmp / f"{key}.int8.onnx", _calibration_feeds(fp32, frames))
    quant_s = time.perf_counter() - t0
    streams = {"torch": stream,
               "ort": OrtStream(fp32),
               "ort_basic": OrtStream(OrtStep(path, threads=ctx.threads, optimization="basic")),
               "ort_int8": OrtStream(OrtStep(int8_path, threads=ctx.threads, optimization="all"))}
    for s in streams.values():
        s.reset()
    fns = {k: _Cycler(s, frames) for k, s in streams.items()}
    lat = ctx.latencies(fns, warmup=10, runs=runs, desc=f"online-ort {key} rounds")
    ms = {k: v.median_ms for k, v in lat.items()}
    diffs = {k: _stream_difference(stream, streams[k], frames, n)
             for k, n in (("ort", diff_frames), ("ort_basic", max(10, diff_frames // 10)),
                          ("ort_int8", max(10, diff_frames // 10)))}
    return {
        "frame_shape": list(frame_shape),
        "buffers": len(fp32.buffer_shapes),
        "buffer_floats": int(sum(_numel(s) for s in fp32.buffer_shapes)),
        "onnx_bytes": path.stat().st_size, "int8_onnx_bytes": int8_path.stat().st_size,
        "export_seconds": export_s, "quantize_seconds": quant_s,
        "latency": {k: v.to_dict() for k, v in lat.items()},
        "median_ms": ms,
        "fps": {k: 1000.0 / v for k, v in ms.items()},
        "fps_ratio_vs_torch": {k: ms["torch"] / v for k, v in ms.items() if k != "torch"},
        "difference_vs_torch": diffs,
        "torch_step_profile": torch_step_profile(stream, frames),
        "streams": streams,
    }


def torch_step_profile(stream, frames, steps: int = 5, top: int = 6) -> list:
    """Where the eager PyTorch step spends its time: the ``top`` aten ops by self CPU time over
    ``steps`` steps (``torch.profiler``), as ``{"op", "share", "calls_per_step"}`` rows."""
    from torch.profiler import ProfilerActivity, profile

    stream.reset()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for t in range(steps):
            stream.step(frames[t % len(frames)])
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    return [{"op": e.key, "share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps}
            for e in rows[:top]]


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def run_ort(ctx: slimkit.BenchContext) -> dict:
    import tempfile

    from slimkit.measure import fixed_threads
    from slimkit_video.online.live import load_online_model

    quick = ctx.quick
    mb_size = 112 if quick else 224
    runs = {"demo": 40 if quick else 300, "mobilenet_v2": 10 if quick else 80}
    diff_frames = {"demo": 200 if quick else 1000, "mobilenet_v2": 20 if quick else 200}
    demo = load_online_model()
    models = {"demo": (demo.stream, demo.size), "mobilenet_v2": (_mobilenet_v2_stream(ctx.seed), mb_size)}
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="online-ort-") as tmp, fixed_threads(ctx.threads):
        for key, (stream, size) in models.items():
            with ctx.phase(f"online-ort: {key} at {size}x{size} (export, int8 calibration, timing)"):
                out[key] = _ort_model_runs(ctx, key, stream, size, Path(tmp), diff_frames[key], runs[key])
        with ctx.phase("online-ort: demo clip accuracy, PyTorch vs ONNX Runtime fp32 vs int8"):
            streams = out["demo"].pop("streams")
            accuracy = _demo_clip_accuracy({k: streams[k] for k in ("torch", "ort", "ort_int8")},
                                           25 if quick else 100, 123_456)
        out["mobilenet_v2"].pop("streams")
    goals = []
    for key, label in (("demo", "shipped demo 64x64"), ("mobilenet_v2", f"MobileNetV2 {mb_size}x{mb_size}")):
        r = out[key]
        goals.append(slimkit.goal(f"FPS ORT / PyTorch, {label}", r["fps_ratio_vs_torch"]["ort"], 1.5, unit="x"))
        goals.append(slimkit.goal(f"max |ORT - PyTorch|, {label}", r["difference_vs_torch"]["ort"]["max_abs_diff"],
                                  1e-4, higher_is_better=False, valid_when_quick=key == "demo"))
    return {
        "settings": {"threads": ctx.threads, "mobilenet_v2_size": mb_size, "ort_threads": ctx.threads},
        "models": {"demo": "shipped online demo (VideoClassifier(tiny HF ResNet) + TSM past), 64x64",
                   "mobilenet_v2": f"VideoClassifier(HF MobileNetV2, 27 classes) + TSM past (shift_div 8), "
                                   f"{mb_size}x{mb_size}, randomised weights"},
        "onnxruntime_version": _ort_version(),
        "variants": dict(ORT_VARIANTS),
        "results": out,
        "int8_demo_clip_accuracy": accuracy,
        "goals": goals,
    }


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def plot_ort(result: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = result["results"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.9))
    labels = dict(result["variants"])
    colors = {"torch": "tab:grey", "ort": "tab:blue", "ort_basic": "tab:cyan", "ort_int8": "tab:orange"}
    for ax, key in zip(axes, ("demo", "mobilenet_v2")):
        r = res[key]
        keys = [k for k in ("torch", "ort_basic", "ort", "ort_int8") if k in r["fps"]]
        vals = [r["fps"][k] for k in keys]
        ax.bar(range(len(keys)), vals, color=[colors[k] for k in keys])
        for x, k in enumerate(keys):
            ratio = "" if k == "torch" else f"\n{r['fps_ratio_vs_torch'][k]:.1f}x"
            ax.text(x, r["fps"][k], f"{r['fps'][k]:.0f}{ratio}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([labels[k].replace("ONNX Runtime", "ORT").replace(", ", "\n") for k in keys], fontsize=7)
        ax.set_ylim(0, max(vals) * 1.25)
        ax.set_ylabel("frames per second (median step)")
        d = r["difference_vs_torch"]["ort"]
        size = r["frame_shape"][1]
        name = "shipped demo" if key == "demo" else "TSM MobileNetV2"
        ax.set_title(f"{name} {size}x{size}: max |ORT - torch| {d['max_abs_diff']:.1e} over {d['frames']} frames",
                     fontsize=8)
    acc = result["int8_demo_clip_accuracy"]
    fig.suptitle(f"Online step, 1 thread: ONNX Runtime vs eager PyTorch (demo clip accuracy: torch "
                 f"{100 * acc['torch']:.1f}%, ORT {100 * acc['ort']:.1f}%, int8 {100 * acc['ort_int8']:.1f}%)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
