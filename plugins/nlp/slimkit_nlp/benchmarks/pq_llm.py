"""``slimkit bench pq-llm``: progressive quantization's low-bit KV cache on a real LLM.

SmolLM2-135M-Instruct (fp32, eager attention) on ``--prompts N`` (default 40; 4 with ``--quick``)
windows of ~1,000 tokens of real text (``llm_eval.load_prompts``). Methods: the fp32
``DynamicCache``; transformers' ``QuantizedCache`` with quanto int4, quanto int2 and HQQ int4 (their
defaults: groups of 64, residual window of 128 tokens); ``progressive-quant`` in its default setting
(2+2-bit keys, always reading both planes), the same cache read MSB-first (the expected-KL test at
0.01 nats decides which rows read the LSBs) and 4+4-bit keys.

Metrics: next-64-token top-1 agreement, KL(full || method) and perplexity of the true continuation,
teacher-forced through each method's cache, against the full fp32 forward; prefill seconds and decode
tokens/s (1,000 prompt + 128 greedy tokens, methods interleaved, median of the repeats after a
warm-up, torch threads fixed); KV bytes after the 1,000 + 128 tokens (every tensor the cache holds:
packed codes, scales, zeros, residual windows); for pq also key bits read and the recompute rate
per layer, and the bytes of its float32 compute views (not counted as KV bytes, reported apart).

quanto and hqq need a transformers older than slimkit's main environment may carry: when they do not
import here, the benchmark re-runs itself in the LLM peer virtualenv (``peers.py``), so every method
is timed in one process. A missing backend is an error naming the fix, never a silent skip.

The fidelity results are kept per (prompt, method) under ``~/.cache/slimkit/bench-progress/``, so an
interrupted run resumes where it stopped (``llm_eval.MeasurementStore``; pq's recompute counters travel with
each result). ``python -m slimkit_nlp.benchmarks.pq_llm --prompts 4`` runs it with a prompt count (also
``SLIMKIT_BENCH_PROMPTS=N slimkit bench pq-llm``).
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time

import torch

from slimkit.errors import MissingExtraError, SlimkitError

from .llm_eval import (
    DenseMethod,
    Method,
    continuation_metrics,
    dense_reference,
    load_prompts,
    prompt_key,
    shared_copy,
    time_prefill_and_decode,
)
from .peers import PROMPTS_ENV  # noqa: E402  (SLIMKIT_BENCH_PROMPTS)

DEFAULT_PROMPTS = 40
QUICK_PROMPTS = 4
PROMPT_TOKENS = 1000
CONTINUATION_TOKENS = 64
DECODE_TOKENS = 128

PQ_SETTINGS = (
    ("pq (default)", {}),
    ("pq + fp32 views", dict(keep_views=True)),        # faster decode, but resident memory > the fp32 cache
    ("pq 2+2 MSB-first kl>0.01", dict(threshold=0.5, kl_threshold=0.01)),
    ("pq 4+4 v4", dict(msb_bits=4, lsb_bits=4)),
)
QUANTIZED = (("quanto", 4), ("quanto", 2), ("hqq", 4))
_BACKEND_MODULE = {"quanto": "optimum.quanto", "hqq": "hqq"}
_BACKEND_PIP = {"quanto": "optimum-quanto", "hqq": "hqq"}


FP32_SDPA = "fp32 DynamicCache (sdpa)"   # the same weights with PyTorch's fused attention: reported beside the goal


class QuantizedCacheMethod(Method):
    """transformers' ``QuantizedCache(backend, nbits)`` with its defaults (groups of 64, axis 0,
    residual window of 128 float tokens)."""

    kind = "quantized"

    def __init__(self, model, backend: str, nbits: int, name: str | None = None, **cache_kwargs):
        mod = _BACKEND_MODULE.get(backend)
        if mod is None:
            raise SlimkitError(f"unknown QuantizedCache backend {backend!r}; use 'quanto' or 'hqq'")
        try:
            __import__(mod)
        except Exception as exc:  # noqa: BLE001 - any import failure is the same missing peer
            raise MissingExtraError(
                f"QuantizedCache backend {backend!r} needs {mod} ({type(exc).__name__}: {exc}); run the benchmark "
                f"with `slimkit bench pq-llm` (it re-runs in the LLM peer virtualenv) or pip install "
                f"{_BACKEND_PIP[backend]}") from exc
        self.backend, self.nbits, self.cache_kwargs = backend, nbits, cache_kwargs
        super().__init__(model, name=name or f"{backend} int{nbits}")

    def key_options(self) -> dict:
        return {"backend": self.backend, "nbits": self.nbits, **self.cache_kwargs}

    def new_cache(self):
        from transformers import QuantizedCache

        return QuantizedCache(backend=self.backend, config=self.model.config, nbits=self.nbits, **self.cache_kwargs)


class PQMethod(Method):
    """``progressive-quant`` with its packed ``PQCache``. ``config``: a ``ProgressiveQuantConfig`` or a
    dict of its options. Methods may share one pq model (``pq_model``): each call installs its own
    config first. Accumulates the pq stats of every forward (rows, recomputed rows per layer, LSB bytes)."""

    kind = "pq"

    def __init__(self, model, config=None, name: str | None = None, pq_model=None):
        import slimkit
        from slimkit_nlp.pq import ProgressiveQuantConfig

        if config is None or isinstance(config, dict):
            config = ProgressiveQuantConfig(**(config or {}))
        self.config = config
        if pq_model is None:
            pq_model = slimkit.apply(copy.deepcopy(model), "progressive-quant", **_to_dict_fields(config))
        super().__init__(pq_model, name=name or "pq")
        self.reset_stats()

    def key_options(self) -> dict:
        """Every config field: a changed setting is measured again, the others are kept."""
        return _to_dict_fields(self.config)

    def reset_stats(self) -> None:
        self.rows, self.recomputed = {}, {}
        self.lsb_read = self.lsb_stored = 0
        self.view_bytes = 0

    def counters(self) -> dict:
        """The accumulated counters as plain data (layer keys as strings, so they survive JSON)."""
        return {"rows": {str(k): v for k, v in self.rows.items()},
                "recomputed": {str(k): v for k, v in self.recomputed.items()},
                "lsb_read": self.lsb_read, "lsb_stored": self.lsb_stored}

    def add_counters(self, c: dict) -> None:
        """Add counters from ``counters()`` (e.g. a stored result's) to this method's."""
        for name in ("rows", "recomputed"):
            mine = getattr(self, name)
            for k, v in c[name].items():
                mine[int(k)] = mine.get(int(k), 0) + v
        self.lsb_read += c["lsb_read"]
        self.lsb_stored += c["lsb_stored"]

    def _install(self):
        from slimkit_nlp.pq import runtime_of

        rt = runtime_of(self.model)
        rt.config = self.config
        return rt

    def _collect(self, rt) -> None:
        st = rt.stats
        for k, v in st.rows_by_layer.items():
            self.rows[k] = self.rows.get(k, 0) + v
            self.recomputed[k] = self.recomputed.get(k, 0) + st.recomputed_by_layer.get(k, 0)
        self.lsb_read += st.lsb_bytes_read
        self.lsb_stored += st.lsb_bytes_stored

    def new_cache(self):
        from slimkit_nlp.pq import PQCache

        return PQCache(self.model, config=self.config)

    @torch.no_grad()
    def prefill(self, ids):
        rt = self._install()
        out = super().prefill(ids)
        self._collect(rt)
        return out

    @torch.no_grad()
    def step(self, ids, cache, position):
        rt = self._install()
        out = super().step(ids, cache, position)
        self._collect(rt)
        return out

    def kv_bytes(self, cache) -> int:
        self.view_bytes = cache.view_bytes()
        return cache.nbytes()

    def stats(self) -> dict:
        """Recompute rate and key bits read, overall and per layer, since ``reset_stats``."""
        cfg = self.config
        rows, rec = sum(self.rows.values()), sum(self.recomputed.values())
        rate = rec / rows if rows else 0.0
        by_layer = {k: self.recomputed[k] / v for k, v in sorted(self.rows.items()) if v}
        return {"recompute_rate": rate, "key_bits_read": cfg.msb_bits + cfg.lsb_bits * rate,
                "recompute_rate_by_layer": by_layer,
                "key_bits_read_by_layer": {k: cfg.msb_bits + cfg.lsb_bits * r for k, r in by_layer.items()},
                "lsb_read_share": self.lsb_read / self.lsb_stored if self.lsb_stored else 0.0}


def _to_dict_fields(cfg) -> dict:
    d = cfg.to_dict()
    d.pop("type", None)
    d.pop("version", None)
    return d


def _measured_continuation(m: Method, prompt, ref) -> dict:
    """``continuation_metrics`` of one method on one prompt; for pq also the counters this prompt added."""
    if not isinstance(m, PQMethod):
        return continuation_metrics(m, prompt, ref)
    m.reset_stats()            # the caller sums every result's counters, fresh or stored
    result = continuation_metrics(m, prompt, ref)
    result["pq_counters"] = m.counters()
    m.reset_stats()
    return result


def _measurement_store():
    """The fidelity results on disk (``llm_eval.MeasurementStore``), keyed by prompt content and
    ``Method.store_key`` (each setting's options), fingerprinted by the harness's measuring code
    (``llm_eval.MEASURING``), the methods here and the ``pq`` package: a change to timing, goals or plots keeps
    every stored result, a new setting measures only itself."""
    from pathlib import Path

    import transformers

    from .llm_eval import MEASURING, MeasurementStore
    from .peers import installed_version

    here = Path(__file__).resolve().parent
    settings = {"prompt_tokens": PROMPT_TOKENS, "continuation_tokens": CONTINUATION_TOKENS,
                "transformers": transformers.__version__, "torch": torch.__version__,
                **{pip: installed_version(pip) for pip in _BACKEND_PIP.values()}}
    return MeasurementStore("pq-llm", settings, source_dirs=[here.parent / "pq"],
                            sources=(*MEASURING, QuantizedCacheMethod, PQMethod, _to_dict_fields,
                                     _measured_continuation))


def _per_round_ratios(timing: dict, name: str, others) -> dict:
    """``{other: [decode tok/s of name / of other, per round]}``: the two were timed in the same round, a few
    seconds apart, so each ratio is paired (the goals use the ratio of the medians; these show the spread)."""
    mine = timing[name]["decode_runs"]
    return {o: [theirs / ours for ours, theirs in zip(mine, timing[o]["decode_runs"])] for o in others}


def prompt_count(ctx) -> int:
    from .peers import prompt_count as count

    return count(ctx, DEFAULT_PROMPTS, QUICK_PROMPTS)


def _in_this_env() -> bool:
    from .peers import peer_env_ready

    return os.environ.get("SLIMKIT_IN_PEER_ENV") == "1" or peer_env_ready() or all(
        _importable(m) for m in _BACKEND_MODULE.values())


def _importable(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except Exception:  # noqa: BLE001
        return False


def _rerun_in_peers(ctx) -> dict:
    from .peers import rerun_benchmark_in_peer_env

    return rerun_benchmark_in_peer_env("pq-llm", ctx, prompt_count(ctx))


def run(ctx) -> dict:
    if not _in_this_env():
        return _rerun_in_peers(ctx)
    import transformers

    import slimkit
    from slimkit_nlp.models import load_smollm2
    from slimkit_nlp.pq import ProgressiveQuantConfig

    from .llm_eval import fix_threads

    fix_threads(ctx.threads)
    n_prompts = prompt_count(ctx)
    model, tok = load_smollm2(attn_implementation="eager", dtype=torch.float32)
    model.eval()
    prompts = load_prompts(tok, n=n_prompts, prompt_tokens=PROMPT_TOKENS, continuation_tokens=CONTINUATION_TOKENS,
                           seed=ctx.seed)
    dense = DenseMethod(model, name="fp32 DynamicCache")
    methods: list[Method] = [dense, DenseMethod(shared_copy(model, "sdpa"), name=FP32_SDPA)]
    for backend, nbits in QUANTIZED:
        methods.append(QuantizedCacheMethod(model, backend, nbits))
    pq_model = slimkit.apply(copy.deepcopy(model), "progressive-quant")
    pq_methods = []
    for name, opts in PQ_SETTINGS:
        pm = PQMethod(model, ProgressiveQuantConfig(**opts), name=name, pq_model=pq_model)
        pq_methods.append(pm)
        methods.append(pm)

    # fidelity: teacher-forced continuation through each cache vs the full fp32 forward, stored per (prompt,
    # method) so that an interrupted run resumes (pq's counters travel with each result)
    store = _measurement_store()
    per = {m.name: [] for m in methods}
    for pm in pq_methods:
        pm.reset_stats()
    for prompt in ctx.progress(prompts, desc="pq-llm fidelity"):
        ref = None
        for m in methods:
            def measure(m=m):
                nonlocal ref
                ref = dense_reference(model, prompt) if ref is None else ref
                return _measured_continuation(m, prompt, ref)
            result = store.measure(f"continuation/{prompt_key(prompt.ids)}/{m.store_key}", measure)
            if isinstance(m, PQMethod):
                m.add_counters(result["pq_counters"])
            per[m.name].append(result)
    pq_stats = {}
    for pm in pq_methods:
        pq_stats[pm.name] = pm.stats()
        pm.reset_stats()

    # speed: 1,000 + 128 tokens, interleaved, medians after a warm-up
    # 5 rounds: on a shared 2-core machine single rounds swing by 20% (fp32 decode measured 6.23 / 7.48 / 6.37
    # tok/s in three rounds), enough to move a median of 3 across a goal
    repeats = 2 if (ctx.quick or n_prompts <= 4) else 5
    timing = time_prefill_and_decode(methods, prompts[0], decode_tokens=DECODE_TOKENS, repeats=repeats)

    rows = []
    for m in methods:
        ms = per[m.name]
        nll = sum(x["nll"] for x in ms) / len(ms)
        row = {"name": m.name, "kind": m.kind,
               "top1": sum(x["top1"] for x in ms) / len(ms),
               "kl": sum(x["kl"] for x in ms) / len(ms),
               "ppl": math.exp(nll),
               "dense_ppl": math.exp(sum(math.log(x["dense_ppl"]) for x in ms) / len(ms)),
               "kv_bytes_after_prefill": sum(x["kv_bytes"] for x in ms) / len(ms),
               "kv_bytes": timing[m.name]["kv_bytes"],
               "prefill_s": timing[m.name]["prefill_s"],
               "decode_tok_s": timing[m.name]["decode_tok_s"],
               "prefill_runs": timing[m.name]["prefill_runs"],
               "decode_runs": timing[m.name]["decode_runs"]}
        if isinstance(m, PQMethod):
            row.update(config=_to_dict_fields(m.config), view_bytes=m.view_bytes, **pq_stats[m.name])
        rows.append(row)
    by = {r["name"]: r for r in rows}
    fp, q4, pq = by["fp32 DynamicCache"], by["quanto int4"], by[PQ_SETTINGS[0][0]]
    for r in rows:
        r["decode_vs_fp32"] = r["decode_tok_s"] / fp["decode_tok_s"]
        r["prefill_vs_fp32"] = r["prefill_s"] / fp["prefill_s"]
        r["kv_bytes_vs_fp32"] = r["kv_bytes"] / fp["kv_bytes"]
    sk = slimkit
    goals = [
        sk.goal("pq KV bytes / quanto int4", pq["kv_bytes"] / q4["kv_bytes"], 1.0, higher_is_better=False, unit="x"),
        sk.goal("pq KL / quanto int4 KL", pq["kl"] / max(q4["kl"], 1e-12), 0.5, higher_is_better=False, unit="x"),
        sk.goal("pq decode tok/s / quanto int4", pq["decode_tok_s"] / q4["decode_tok_s"], 1.0, unit="x"),
        sk.goal("pq decode tok/s / fp32 cache", pq["decode_vs_fp32"], 0.9, unit="x"),
        sk.goal("pq prefill s / fp32 cache", pq["prefill_vs_fp32"], 1.25, higher_is_better=False, unit="x"),
    ]
    sdpa = by[FP32_SDPA]
    return {
        "model": "SmolLM2-135M-Instruct (fp32, eager attention), slimkit_nlp.models.load_smollm2",
        "transformers_version": transformers.__version__,
        "prompts": n_prompts, "prompt_tokens": PROMPT_TOKENS, "continuation_tokens": CONTINUATION_TOKENS,
        "decode_tokens": DECODE_TOKENS, "threads": ctx.threads,
        "timing": f"prompt 0, {repeats} interleaved rounds after one warm-up round, medians",
        "kv_bytes_note": "after prompt + decode tokens: every tensor the cache holds (codes, scales, zeros, "
                         "residual windows); pq's float32 compute views are reported as view_bytes",
        "pq_default": _to_dict_fields(ProgressiveQuantConfig()),
        "pq_decode_vs_fp32_sdpa": pq["decode_tok_s"] / sdpa["decode_tok_s"],
        "pq_decode_ratio_per_round": _per_round_ratios(timing, pq["name"], (fp["name"], q4["name"])),
        "fp32_note": "the goals compare with the fp32 cache under the eager attention every method here runs "
                     f"(kvpress and the pq recompute test need the probabilities); {FP32_SDPA!r} is the same "
                     "model with PyTorch's fused attention, reported for reference",
        "rows": rows, "goals": goals,
    }


def plot(result, png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    marks = {"dense": "s", "quantized": "^", "pq": "o"}
    for r in rows:
        mb = r["kv_bytes"] / 1e6
        axes[0].scatter(mb, max(r["kl"], 1e-6), marker=marks.get(r["kind"], "x"))
        axes[0].annotate(f"{r['name']}\ntop1 {r['top1']:.3f}", (mb, max(r["kl"], 1e-6)), fontsize=6)
        axes[1].scatter(mb, r["decode_tok_s"], marker=marks.get(r["kind"], "x"))
        axes[1].annotate(r["name"], (mb, r["decode_tok_s"]), fontsize=6)
    axes[0].set(xlabel="KV MB after 1,000 + 128 tokens", ylabel="KL(full || method), next 64 tokens (log)",
                yscale="log", title=f"quality vs KV bytes ({result['prompts']} prompts)")
    axes[1].set(xlabel="KV MB after 1,000 + 128 tokens", ylabel="decode tokens/s",
                title=f"decode speed vs KV bytes ({result['threads']} thread(s))")
    fig.suptitle("SmolLM2-135M: progressive-quant vs transformers QuantizedCache vs fp32")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    import argparse

    from slimkit.bench import benchmarks, goal_line, run_benchmark

    ap = argparse.ArgumentParser(prog="python -m slimkit_nlp.benchmarks.pq_llm", description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=None, help=f"prompts (default {DEFAULT_PROMPTS})")
    ap.add_argument("--json", default="bench-results/pq-llm.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.prompts is not None:
        os.environ[PROMPTS_ENV] = str(args.prompts)
    t0 = time.time()
    result = run_benchmark(benchmarks()["pq-llm"], args.json, threads=args.threads, seed=args.seed)
    for g in result.get("goals", []):
        print(f"  {goal_line(g)}")
    print(f"  wrote {args.json} and {result['plot']} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
