"""Latency dataset on the machine it runs on (HAT protocol).

Each sampled SubTransformer is exported as a dense model (random weights; latency does
not depend on values) and timed at batch 1: ``warmup`` untimed runs, then ``runs``
timed runs, reporting the trimmed mean (10% from each end). One run = the encoder once
over ``src_len`` tokens plus ``steps`` incremental decoding steps with a KV cache
(decoder-only: a ``src_len`` prompt, then ``steps`` incremental steps). Rows go to a CSV;
a rerun appends only the missing samples (sample ``i`` is seeded by ``i``).

On a shared machine whose load drifts over minutes (other jobs), set
``MeasureSettings(reference=True)``: every timed run of a candidate is paired with a run
of a fixed reference SubTransformer (order alternating), and the latency reported is
``trimmed_mean(candidate_i / reference_i, ratio_trim) * reference_ms``, where ``reference_ms`` is the
reference's own latency measured once per CSV (kept in ``<csv>.reference.json``). Load
that slows both alike cancels in the ratio; ``raw_ms`` keeps the plain trimmed mean.
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from slimkit.errors import ConfigError
from slimkit.measure import measure_latency

from .export import random_model
from .space import HatSpace, SubConfig

CSV_FIELDS = ["index", "config", "latency_ms", "median_ms", "p95_ms", "std_ms", "runs", "threads", "raw_ms", "ratio"]


@dataclass
class MeasureSettings:
    """HAT protocol knobs: source length, decoding steps, warm-up, timed runs, threads."""

    src_len: int = 16
    steps: int = 8
    warmup: int = 5
    runs: int = 20
    threads: int = 1
    trim: float = 0.1
    reference: bool = False
    ratio_trim: float = 0.25  # paired mode: interquartile mean of the per-pair ratios (robust to load spikes)


def decode_workload(model, src_len: int, steps: int, seed: int = 0) -> Callable[[], torch.Tensor]:
    """A closure running the encoder once + ``steps`` greedy incremental decoding steps."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, cfg.vocab_size, (1, src_len), generator=g)
    if cfg.encoder_layers > 0:
        start = torch.full((1, 1), cfg.decoder_start_token_id, dtype=torch.long)

        def run():
            states = model.encode(src)
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            ids = start
            for _ in range(steps):
                logits = model.decoder(ids, None, states, None, cache)
                ids = logits[:, -1:].argmax(-1)
            return ids
    else:
        def run():
            cache = DynamicCache()
            logits = model.decoder(src, None, cache=cache)
            ids = logits[:, -1:].argmax(-1)
            for _ in range(steps - 1):
                logits = model.decoder(ids, None, cache=cache)
                ids = logits[:, -1:].argmax(-1)
            return ids
    return run


def measure_model(model, settings: MeasureSettings) -> dict:
    """Time one dense model with the HAT protocol; returns the latency row fields (ms)."""
    fn = decode_workload(model, settings.src_len, settings.steps)
    res = measure_latency(fn, warmup=settings.warmup, runs=settings.runs, threads=settings.threads,
                          trim=settings.trim)
    return {"latency_ms": res.trimmed_mean_ms, "median_ms": res.median_ms, "p95_ms": res.p95_ms,
            "std_ms": res.std_ms, "runs": res.runs, "threads": res.threads}


def measure_paired(model, ref_model, settings: MeasureSettings, ref_ms: float) -> dict:
    """Candidate runs interleaved with reference runs; latency = trimmed mean ratio x ``ref_ms``."""
    import statistics
    import time

    from slimkit.measure import fixed_threads, trimmed_mean
    fn = decode_workload(model, settings.src_len, settings.steps)
    ref = decode_workload(ref_model, settings.src_len, settings.steps)
    cand, refs = [], []
    with fixed_threads(settings.threads), torch.inference_mode():
        for _ in range(settings.warmup):
            fn()
            ref()
        for i in range(settings.runs):
            pair = (fn, ref) if i % 2 == 0 else (ref, fn)
            times = []
            for f in pair:
                t0 = time.perf_counter()
                f()
                times.append((time.perf_counter() - t0) * 1000.0)
            c, r = times if i % 2 == 0 else times[::-1]
            cand.append(c)
            refs.append(r)
        threads = torch.get_num_threads()
    ratios = [c / r for c, r in zip(cand, refs)]
    ratio = trimmed_mean(ratios, settings.ratio_trim)
    q = sorted(cand)
    return {"latency_ms": ratio * ref_ms, "median_ms": statistics.median(cand),
            "p95_ms": q[min(len(q) - 1, int(0.95 * len(q)))], "std_ms": statistics.pstdev(ratios) * ref_ms,
            "runs": len(cand), "threads": threads, "raw_ms": trimmed_mean(cand, settings.trim), "ratio": ratio}


def reference_sub(space: HatSpace) -> SubConfig:
    """The fixed reference SubTransformer for paired timing (the middle choice of every gene)."""
    return space.decode_gene([c[len(c) // 2] for c in space.gene_choices()])


class Reference:
    """The reference model and its latency (measured once, or read from ``sidecar``)."""

    def __init__(self, space: HatSpace, settings: MeasureSettings, sidecar: str | Path | None = None):
        self.model = random_model(space, reference_sub(space), seed=12345)
        p = Path(sidecar) if sidecar else None
        if p is not None and p.exists():
            self.ms = float(json.loads(p.read_text())["reference_ms"])
        else:
            runs = max(settings.runs, 20)
            res = measure_latency(decode_workload(self.model, settings.src_len, settings.steps),
                                  warmup=settings.warmup, runs=runs, threads=settings.threads, trim=settings.trim)
            self.ms = res.trimmed_mean_ms
            if p is not None:
                p.write_text(json.dumps({"reference_ms": self.ms, "reference": reference_sub(space).to_dict()}))


def measure_sub(space: HatSpace, sub: SubConfig, settings: MeasureSettings, reference: "Reference | None" = None) -> dict:
    """Latency row for one SubTransformer (dense export with random weights); paired with
    ``reference`` when given (see the module docstring)."""
    model = random_model(space, sub)
    if reference is not None:
        return measure_paired(model, reference.model, settings, reference.ms)
    row = measure_model(model, settings)
    return {**row, "raw_ms": row["latency_ms"], "ratio": ""}


def sample_for_index(space: HatSpace, i: int, seed: int = 0) -> SubConfig:
    """The ``i``-th configuration of a latency dataset (the same in every run)."""
    return space.sample(random.Random(f"latency-{seed}-{i}"))


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a latency CSV: ``{"index", "sub": SubConfig, "latency_ms", ...}``."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"no latency CSV at {str(p)!r}; create one with `slimkit hat measure`")
    rows = []
    with p.open(newline="") as f:
        for r in csv.DictReader(f):
            try:
                rows.append({"index": int(r["index"]), "sub": SubConfig.from_dict(json.loads(r["config"])),
                             "latency_ms": float(r["latency_ms"]), "median_ms": float(r["median_ms"]),
                             "p95_ms": float(r["p95_ms"]), "std_ms": float(r["std_ms"])})
            except (KeyError, ValueError, TypeError) as e:
                raise ConfigError(f"{str(p)!r} is not a slimkit latency CSV ({e}); re-measure with `slimkit hat measure`") from None
    return rows


def measure_dataset(space: HatSpace, n: int, csv_path: str | Path, settings: MeasureSettings | None = None,
                    seed: int = 0, progress: Callable[[Iterable, int], Iterable] | None = None) -> list[dict]:
    """Measure samples ``0..n-1`` into ``csv_path``; samples already there are kept (resume)."""
    settings = settings or MeasureSettings()
    p = Path(csv_path)
    done = {r["index"] for r in read_csv(p)} if p.exists() and p.stat().st_size else set()
    todo = [i for i in range(n) if i not in done]
    p.parent.mkdir(parents=True, exist_ok=True)
    new_file = not p.exists() or p.stat().st_size == 0
    with p.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new_file:
            w.writeheader()
        ref = Reference(space, settings, str(p) + ".reference.json") if settings.reference and todo else None
        it = progress(todo, len(todo)) if progress else todo
        for i in it:
            sub = sample_for_index(space, i, seed)
            row = measure_sub(space, sub, settings, ref)
            w.writerow({"index": i, "config": json.dumps(sub.to_dict(), sort_keys=True), **row})
            f.flush()
    return [r for r in read_csv(p) if r["index"] < n]


def analytic_macs(space: HatSpace, sub: SubConfig, src_len: int, steps: int) -> float:
    """Mult-Adds of one measured run (encoder over ``src_len`` + ``steps`` cached decode steps)."""
    q = space.qkv_dim
    total = 0.0
    if sub.is_encdec:
        d, s = sub.encoder_embed_dim, src_len
        for i in range(sub.encoder_layers):
            total += s * (4 * d * q + 2 * d * sub.encoder_ffn_dims[i]) + 2 * s * s * q
        prefix = 0
        first = 1
    else:
        prefix = src_len
        first = src_len
    d = sub.decoder_embed_dim
    for t in range(steps):
        n_tok = first if t == 0 else 1
        ctx = (prefix if not sub.is_encdec else 0) + (t + 1 if sub.is_encdec else t + 1)
        for i in range(sub.decoder_layers):
            total += n_tok * (4 * d * q + 2 * d * sub.decoder_ffn_dims[i]) + 2 * n_tok * ctx * q
            if sub.is_encdec:
                span = min(sub.ende_spans[i], sub.encoder_layers)
                total += n_tok * 2 * d * q + 2 * n_tok * span * src_len * q
                if t == 0:
                    total += span * src_len * 2 * sub.encoder_embed_dim * q
        total += n_tok * d * space.vocab_size
    return total
