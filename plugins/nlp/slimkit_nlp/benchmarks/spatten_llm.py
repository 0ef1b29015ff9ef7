"""``slimkit bench spatten-llm``: SpAtten's KV budget on a real LLM against NVIDIA kvpress's own presses.

SmolLM2-135M-Instruct (``slimkit_nlp.models.load_smollm2``, fp32, eager attention), prompts of about
1,000 tokens of real text (Shakespeare and Botchan, ``llm_eval.load_prompts``), KV budgets 50% and 25%
(the share of the prompt's keys and values kept, counted over all layers). For every method:

* continuation: the next 64 true tokens teacher-forced through the compressed cache (8 per step),
  top-1 agreement, KL(full || method) and perplexity against the full cache;
* retrieval: ``llm_eval.retrieval_prompts`` (30 "secret number" lines in real filler text, a question
  about an early one), share of the answer's digits reproduced, dense as the reference;
* prefill seconds, decode tokens/s (1,000 + 128 tokens) and KV bytes, timed side by side: one warm-up
  round, then interleaved rounds over every method, medians; threads fixed.

Peers are kvpress 0.5.5's presses (StreamingLLM, SnapKV, ObservedAttention, TOVA, Knorm,
ExpectedAttention), run through kvpress itself. kvpress requires transformers<5.3, so when it is not
importable here the benchmark re-runs itself in the LLM peer virtualenv (``peers.py``) and says so in
its output and JSON; it never skips a peer. ``SLIMKIT_BENCH_PROMPTS=N`` sets the number of prompts
(default 40; ``--quick`` 2).
"""
from __future__ import annotations

import math
import time

import torch

from .llm_eval import (
    DenseMethod,
    KVPressMethod,
    Method,
    continuation_metrics,
    dense_reference,
    load_prompts,
    prompt_key,
    retrieval_accuracy,
    retrieval_prompts,
    shared_copy,
    time_prefill_and_decode,
)
from .peers import installed_version

DEFAULT_PROMPTS, QUICK_PROMPTS = 40, 2
PROMPT_TOKENS, CONTINUATION_TOKENS, DECODE_TOKENS = 1000, 64, 128
STEP_TOKENS = 8                      # continuation tokens per step (spatten evicts every 8 by default)
BUDGETS = (0.5, 0.25)
PRESSES = ("StreamingLLMPress", "SnapKVPress", "ObservedAttentionPress", "TOVAPress", "KnormPress",
           "ExpectedAttentionPress")
#: slimkit settings measured: (label, spatten options)
SPATTEN_SETTINGS = (
    # the same as the quality setting, its score weighed by each value's norm: the lowest KL at 50% KV, but it
    # keeps fewer of the retrieval probe's answers (40 prompts: top-1 equal to ``observed``'s at both budgets)
    ("spatten observed_values per-head", {"policy": "observed_values", "prefill_pruning": False,
                                          "kv_heads": "separate"}),
    # quality: full prefill, each key/value head keeps its own tokens by the ``observed`` score
    ("spatten observed per-head", {"policy": "observed", "prefill_pruning": False, "kv_heads": "separate"}),
    ("spatten", {}),                                                     # the defaults: the paper's score, cascade
    ("spatten window_group", {"policy": "window_group"}),               # cascade, observation-window score
)
DENSE_SDPA = "dense (sdpa)"
#: the setting the README recommends for each goal: fidelity (top-1, retrieval, decode) and time to first token
QUALITY_SETTING, TTFT_SETTING = "spatten observed per-head", "spatten window_group"


class SpattenMethod(Method):
    """``slimkit.apply(copy, "spatten", token_keep=budget, **options)``: the cascade prunes during prefill,
    then generation evicts to stay within the budget. The model's own ``generate``-style path is used:
    one forward for the prompt, then ``step`` with explicit positions (spatten keeps the true ones)."""

    kind = "spatten"

    def __init__(self, model, budget: float, options: dict, name: str):
        import slimkit

        self.options = dict(options)
        pruned = slimkit.apply(shared_copy(model), "spatten", token_keep=budget, **self.options)
        super().__init__(pruned, name=name, budget=budget)

    def key_options(self) -> dict:
        """The spatten options: a setting whose options change is measured again, the others are kept."""
        return self.options


def prompt_count(ctx) -> int:
    from .peers import prompt_count as count

    return count(ctx, DEFAULT_PROMPTS, QUICK_PROMPTS)


def _kvpress_here() -> bool:
    try:
        import kvpress  # noqa: F401  (importable = run here)
        return True
    except Exception:  # noqa: BLE001 - any import failure means: run in the peer env
        return False


def _rerun_in_peers(ctx) -> dict:
    from .peers import rerun_benchmark_in_peer_env

    return rerun_benchmark_in_peer_env("spatten-llm", ctx, prompt_count(ctx))


def _measurement_stores() -> dict:
    """Per-(prompt, method) results on disk, so an interrupted run resumes where it stopped
    (``llm_eval.MeasurementStore``, keyed by prompt content and ``Method.store_key``). Two stores: the peers'
    (dense and kvpress) depend only on the harness's measuring code (``llm_eval.MEASURING``) and the peer
    versions, so they survive changes to spatten; spatten's also fingerprints the ``spatten`` package and
    ``SpattenMethod``, and keys each setting by its options, so adding or changing one setting measures only
    that one. Goals, timing and plots are not fingerprinted: changing them keeps every stored result."""
    from pathlib import Path

    import transformers

    from .llm_eval import MEASURING, MeasurementStore

    here = Path(__file__).resolve().parent
    common = {"prompt_tokens": PROMPT_TOKENS, "continuation_tokens": CONTINUATION_TOKENS, "step_tokens": STEP_TOKENS,
              "transformers": transformers.__version__, "kvpress": installed_version("kvpress"), "torch": torch.__version__}
    peers = MeasurementStore("spatten-llm-peers", common, sources=MEASURING)
    ours = MeasurementStore("spatten-llm-spatten", common, source_dirs=[here.parent / "spatten"],
                            sources=(*MEASURING, SpattenMethod))
    return {"dense": peers, "kvpress": peers, "spatten": ours}


def build_methods(model, budgets=BUDGETS, presses=PRESSES, settings=SPATTEN_SETTINGS) -> list[Method]:
    """Dense, then per budget every press and every spatten setting."""
    methods: list[Method] = [DenseMethod(model, name="dense")]
    for b in budgets:
        for press in presses:
            methods.append(KVPressMethod(model, press, b, name=f"kvpress {press[:-5]} @{b:g}"))
        for label, opts in settings:
            methods.append(SpattenMethod(model, b, opts, name=f"{label} @{b:g}"))
    return methods


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def run(ctx) -> dict:
    if not _kvpress_here():
        return _rerun_in_peers(ctx)
    import transformers

    from slimkit_nlp.models import load_smollm2

    from .llm_eval import fix_threads
    from .peers import chosen_budgets, chosen_presses

    fix_threads(ctx.threads)
    n_prompts = prompt_count(ctx)
    model, tok = load_smollm2(attn_implementation="eager", dtype=torch.float32)
    prompts = load_prompts(tok, n=n_prompts, prompt_tokens=PROMPT_TOKENS, continuation_tokens=CONTINUATION_TOKENS,
                           seed=ctx.seed)
    rprompts = retrieval_prompts(tok, n=max(2, n_prompts // 2), seed=ctx.seed)
    budgets, presses = chosen_budgets(BUDGETS), chosen_presses(PRESSES)
    methods = build_methods(model, budgets=budgets, presses=presses)
    t0 = time.perf_counter()

    stores = _measurement_stores()
    per = {m.name: [] for m in methods}
    for prompt in ctx.progress(prompts, desc="spatten-llm continuation"):
        ref = None
        for m in methods:
            def measure(m=m):
                nonlocal ref
                ref = dense_reference(model, prompt) if ref is None else ref
                return continuation_metrics(m, prompt, ref, step_tokens=STEP_TOKENS)
            key = f"continuation/{prompt_key(prompt.ids)}/{m.store_key}"
            per[m.name].append(stores[m.kind].measure(key, measure))
    retr = {m.name: [] for m in methods}
    for rp in ctx.progress(rprompts, desc="spatten-llm retrieval"):
        for m in methods:
            key = f"retrieval/{prompt_key(rp.ids)}/{m.store_key}"
            retr[m.name].append(stores[m.kind].measure(key, lambda m=m: retrieval_accuracy(m, rp)))
    repeats = 2 if ctx.quick else 3
    sdpa_dense = DenseMethod(shared_copy(model, "sdpa"), name=DENSE_SDPA)    # timed beside, as a reference
    timing = time_prefill_and_decode([*methods, sdpa_dense], prompts[0], decode_tokens=DECODE_TOKENS,
                                     repeats=repeats)

    dense_bytes = _mean([x["kv_bytes"] for x in per["dense"]])
    rows = []
    for m in methods:
        ms = per[m.name]
        rows.append({
            "name": m.name, "kind": m.kind, "budget": m.budget,
            "options": getattr(m, "options", None),
            "top1": _mean([x["top1"] for x in ms]),
            "kl": _mean([x["kl"] for x in ms]),
            "ppl": math.exp(_mean([x["nll"] for x in ms])),
            "top1_per_prompt": [x["top1"] for x in ms],
            "kv_share_after_prefill": _mean([x["kv_bytes"] for x in ms]) / dense_bytes,
            "retrieval": _mean(retr[m.name]),
            "retrieval_per_prompt": retr[m.name],
            "prefill_s": timing[m.name]["prefill_s"],
            "decode_tok_s": timing[m.name]["decode_tok_s"],
            "kv_bytes": timing[m.name]["kv_bytes"],
        })
    by = {r["name"]: r for r in rows}
    dense = by["dense"]
    for r in rows:
        r["prefill_vs_dense"] = r["prefill_s"] / dense["prefill_s"]
        r["decode_vs_dense"] = r["decode_tok_s"] / dense["decode_tok_s"]
    goals = []
    for b in budgets:
        goals += _goals_at(rows, by, b)
    return {
        "model": "SmolLM2-135M-Instruct (fp32, eager attention), slimkit_nlp.models.load_smollm2",
        "transformers_version": transformers.__version__,
        "kvpress_version": installed_version("kvpress"),
        "prompts": n_prompts, "retrieval_prompts": len(rprompts), "prompt_tokens": PROMPT_TOKENS,
        "continuation_tokens": CONTINUATION_TOKENS, "step_tokens": STEP_TOKENS, "decode_tokens": DECODE_TOKENS,
        "threads": ctx.threads, "budgets": list(budgets), "presses": list(chosen_presses(PRESSES)),
        "timing": f"prompt 0, {repeats} interleaved rounds after one warm-up round, medians",
        "quality_setting": QUALITY_SETTING, "ttft_setting": TTFT_SETTING,
        "goals_judge": f"fidelity and decode goals: {QUALITY_SETTING!r}; prefill: {TTFT_SETTING!r}; budget: both "
                       f"(no single setting meets every goal: full prefill is faithful, the cascade is fast)",
        "rows": rows, "goals": goals, "measure_seconds": time.perf_counter() - t0,
        "dense_sdpa": {**{k: timing[DENSE_SDPA][k] for k in ("prefill_s", "decode_tok_s")},
                       "note": "the dense model under PyTorch's fused attention, timed in the same rounds: every "
                               "method above runs eager attention (kvpress's ObservedAttention and spatten's scores "
                               "need the probabilities), and spatten's cascade uses fused attention where no "
                               "probabilities are read, so its prefill is also given against this",
                       "ttft_prefill_vs_dense_sdpa": {f"{b:g}": by[f"{TTFT_SETTING} @{b:g}"]["prefill_s"]
                                                      / timing[DENSE_SDPA]["prefill_s"] for b in budgets}},
    }


def _goals_at(rows: list[dict], by: dict, b: float) -> list:
    """The issue's goals at budget ``b``: fidelity and decode judged on ``QUALITY_SETTING``, prefill on
    ``TTFT_SETTING`` (the settings the README recommends for those goals), the budget on both."""
    import slimkit

    presses = [r for r in rows if r["kind"] == "kvpress" and r["budget"] == b]
    best_top1 = max(presses, key=lambda r: r["top1"])
    best_retr = max(presses, key=lambda r: r["retrieval"])
    best_dec = max(presses, key=lambda r: r["decode_tok_s"])
    q, t = by[f"{QUALITY_SETTING} @{b:g}"], by[f"{TTFT_SETTING} @{b:g}"]
    goals = [slimkit.goal(f"@{b:g}: {r['name']}: KV share kept after prefill / budget",
                          r["kv_share_after_prefill"] / b, 1.02, higher_is_better=False, unit="x",
                          valid_when_quick=True) for r in (q, t)]     # the budget holds at any size
    return goals + [
        slimkit.goal(f"@{b:g}: {QUALITY_SETTING}: top-1 minus best press ({best_top1['name']})",
                     q["top1"] - best_top1["top1"], 0.0),
        slimkit.goal(f"@{b:g}: {QUALITY_SETTING}: retrieval minus best press ({best_retr['name']})",
                     q["retrieval"] - best_retr["retrieval"], 0.0),
        slimkit.goal(f"@{b:g}: {TTFT_SETTING}: prefill / dense", t["prefill_vs_dense"], 0.7, higher_is_better=False,
                     unit="x"),
        slimkit.goal(f"@{b:g}: {QUALITY_SETTING}: decode tok/s / best press ({best_dec['name']})",
                     q["decode_tok_s"] / best_dec["decode_tok_s"], 1.0, unit="x"),
    ]


def plot(result, png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["kind"] != "dense"]
    dense = next(r for r in result["rows"] if r["kind"] == "dense")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = {"kvpress": "tab:blue", "spatten": "tab:red"}
    marks = {0.5: "o", 0.25: "^"}
    for r in rows:
        c, mk = colors.get(r["kind"], "gray"), marks.get(r["budget"], "x")
        label = r["name"].replace("kvpress ", "")
        for ax, x, y in ((axes[0], r["kv_bytes"] / 1e6, r["top1"]), (axes[1], r["prefill_s"], r["top1"]),
                         (axes[2], r["kv_bytes"] / 1e6, r["retrieval"])):
            ax.scatter(x, y, color=c, marker=mk)
            ax.annotate(label, (x, y), fontsize=6)
    axes[0].set(xlabel="KV MB after 1,000 + 128 tokens", ylabel="next-64 top-1 agreement with full cache",
                title="quality vs KV bytes")
    axes[1].axvline(dense["prefill_s"], color="gray", ls="--", lw=0.8)
    axes[1].set(xlabel="prefill seconds (1,000 tokens; dashed: dense)", ylabel="top-1 agreement",
                title="quality vs time to first token")
    axes[2].axhline(dense["retrieval"], color="gray", ls="--", lw=0.8)
    axes[2].set(xlabel="KV MB", ylabel="retrieval: answer digits right (dashed: dense)", title="key-value retrieval")
    fig.suptitle(f"SmolLM2-135M, {result['prompts']} prompts: slimkit spatten (red) vs kvpress presses (blue); "
                 f"o = 50% KV, ^ = 25% KV")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
