"""Benchmarks: ``spatten-encoder``, ``spatten-decoder``, ``spatten-heads`` (``slimkit bench NAME``).

All ratios are measured side by side in one run with the latency protocol (fixed threads,
warm-up, median of repeated runs), batch 1, on real Shakespeare text.
"""
from __future__ import annotations

import math
import warnings

import torch

import slimkit

from ..compat import cache_kwargs, output_cache

ENC_KEEPS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ENC_POLICIES = ("spatten", "per_layer", "random")


def _minilm(**spatten):
    from transformers import AutoModel

    from .textdata import minilm_path

    model = AutoModel.from_pretrained(minilm_path(), attn_implementation="eager").eval()
    if spatten:
        model = slimkit.apply(model, "spatten", **spatten)
    return model


def _paired_speedup(ctx, dense_fn, pruned_fn, rounds: int) -> tuple[float, float, float]:
    """Dense and pruned timed alternately (one call each per round, after warm-up) so that load
    changes on a shared machine hit both alike; returns (speed-up of medians, dense ms, pruned ms)."""
    import statistics
    import time

    from slimkit.measure import fixed_threads

    td, tp = [], []
    with fixed_threads(ctx.threads), torch.inference_mode():
        dense_fn(), pruned_fn()
        for _ in range(rounds):
            t0 = time.perf_counter(); dense_fn(); t1 = time.perf_counter(); pruned_fn(); t2 = time.perf_counter()
            td.append(t1 - t0)
            tp.append(t2 - t1)
    d, p = statistics.median(td) * 1000, statistics.median(tp) * 1000
    return d / p, d, p


def _tokenizer():
    from transformers import AutoTokenizer

    from .textdata import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


# -- spatten-encoder -------------------------------------------------------------------------------
def run_encoder(ctx) -> dict:
    from .textdata import mean_pool, wordpiece_passages

    tok = _tokenizer()
    lengths = (128, 512) if ctx.quick else (128, 256, 512)
    keeps = (0.5,) if ctx.quick else ENC_KEEPS
    n_pass = 2 if ctx.quick else 6
    rounds = 3 if ctx.quick else 7
    dense = _minilm()
    rows, passages = [], {}
    with torch.inference_mode():
        for L in lengths:
            ids = wordpiece_passages(tok, L, n_pass)
            full = [dense(input_ids=x[None]).last_hidden_state[0] for x in ids]
            ref = [h.mean(0, keepdim=True) for h in full]
            passages[L] = (ids, ref)
            for policy in ENC_POLICIES:
                for keep in ctx.progress(keeps, desc=f"L={L} {policy}"):
                    m = _minilm(token_keep=keep, policy=policy)
                    cos, cos_cls, cos_tok, cos_full = [], [], [], []
                    for x, r, hd in zip(ids, ref, full):
                        o = m(input_ids=x[None])
                        hk, kept = o.last_hidden_state[0], o.kept_indices[0]
                        cos.append(float(torch.cosine_similarity(mean_pool(o.last_hidden_state,
                                                                           o.kept_attention_mask), r)))
                        cos_full.append(float(torch.cosine_similarity(
                            mean_pool(o.full_hidden_state, torch.ones(1, x.shape[0])), r)))
                        cos_cls.append(float(torch.cosine_similarity(hk[0], hd[0], 0)))
                        cos_tok.append(float(torch.cosine_similarity(hk, hd[kept], -1).mean()))
                    macs_ratio = m.spatten_stats.macs_ratio
                    speedup, t_dense, t = _paired_speedup(ctx, lambda: dense(input_ids=ids[:1]),
                                                          lambda: m(input_ids=ids[:1]), rounds)
                    rows.append({"length": L, "policy": policy, "token_keep": keep, "cosine": sum(cos) / len(cos),
                                 "cosine_min": min(cos), "cls_cosine": sum(cos_cls) / len(cos_cls),
                                 "kept_token_cosine": sum(cos_tok) / len(cos_tok),
                                 "full_length_cosine": sum(cos_full) / len(cos_full), "speedup": speedup,
                                 "ms": t, "dense_ms": t_dense,
                                 "macs_ratio": macs_ratio})
    longest = max(lengths)
    rows += _distilled_rows(ctx, tok, dense, longest, (0.5,) if ctx.quick else DISTILL_KEEPS, *passages[longest],
                            rounds)
    at = [r for r in rows if r["length"] == longest]

    def best_speed(*policies):
        ok = [r["speedup"] for r in at if r["policy"] in policies and r["cosine"] >= 0.98]
        return max(ok) if ok else 0.0

    def cos_at_speed(*policies, s=1.8):
        ok = [r["cosine"] for r in at if r["policy"] in policies and r["speedup"] >= s]
        return max(ok) if ok else 0.0

    def mean_cos(policy, key="cosine"):
        v = [r[key] for r in at if r["policy"] == policy]
        return sum(v) / len(v)

    margin = mean_cos("spatten") - max(mean_cos("per_layer"), mean_cos("random"))
    margin_tok = mean_cos("spatten", "kept_token_cosine") - max(mean_cos("per_layer", "kept_token_cosine"),
                                                                 mean_cos("random", "kept_token_cosine"))
    goals = [
        slimkit.goal(f"speed-up at cosine>=0.98 ({longest} tok, with or without distill)",
                     best_speed("spatten", "spatten+distill"), 1.8, unit="x"),
        slimkit.goal(f"cosine at >=1.8x speed-up ({longest} tok, with or without distill)",
                     cos_at_speed("spatten", "spatten+distill"), 0.98),
        slimkit.goal(f"cumulative - best baseline, mean-pooled cosine ({longest} tok)", margin, 0.0),
        slimkit.goal(f"cumulative - best baseline, kept-token cosine ({longest} tok)", margin_tok, 0.0),
    ]
    full_at = {p: max([r["full_length_cosine"] for r in at if r["policy"] == p and r["speedup"] >= 1.8],
                      default=0.0) for p in ENC_POLICIES}
    from .config import SpattenConfig
    distilled = [r for r in at if r["policy"] == "spatten+distill"]
    return {"model": "all-MiniLM-L6-v2", "passages_per_length": n_pass, "token_slope": SpattenConfig().token_slope,
            "distill": {"what": "slimkit_nlp.spatten.distill: short fine-tune of the pruned model toward the unpruned "
                                "mean-pooled embedding (1 - cosine), on passages of the training plays; evaluated on "
                                "the validation plays like every other row",
                        "passages": distilled[0]["distill_passages"] if distilled else 0,
                        "steps": distilled[0]["distill_steps"] if distilled else 0,
                        "cosine_before_after": {r["token_keep"]: [r["cosine_before_distill"], r["cosine"]]
                                                for r in distilled}},
            "fidelity": "cosine: mean-pooled embedding (pruned: mean over kept tokens) vs the unpruned model; "
                        "cls_cosine: first-token state; kept_token_cosine: each kept token's final state vs "
                        "the unpruned model's state of the same token (mean); full_length_cosine: mean over all "
                        "input tokens of out.full_hidden_state (kept tokens' final states scattered back to "
                        "their positions, pruned tokens frozen at the layer that removed them) vs the unpruned "
                        "model (timing always includes building full_hidden_state)",
            "goal_metric": "cosine (mean over kept tokens); full_length_cosine is reported, not used by the goals "
                           "(it is lower: MiniLM's intermediate states point elsewhere than its final ones)",
            "full_length_cosine_at_1.8x": full_at,
            "full_length_cosine_mean": {p: mean_cos(p, "full_length_cosine") for p in ENC_POLICIES},
            "rows": rows, "goals": goals}


DISTILL_KEEPS = (0.5, 0.6)


def _distilled_rows(ctx, tok, dense, L: int, keeps, ids, ref, rounds: int) -> list[dict]:
    """``spatten`` rows after ``distill`` (the paper's short fine-tune), at length ``L``, scored on
    the validation passages ``ids (N, L)`` against the unpruned mean-pooled embeddings ``ref``."""
    from .finetune import distill
    from .textdata import mean_pool, wordpiece_passages

    steps, n_train = (10, 8) if ctx.quick else (200, 160)
    train = wordpiece_passages(tok, L, n_train, split="train")
    rows = []
    for keep in keeps:
        m = _minilm(token_keep=keep)

        def cosine():
            with torch.inference_mode():
                cs = [float(torch.cosine_similarity(mean_pool(o.last_hidden_state, o.kept_attention_mask), r))
                      for o, r in ((m(input_ids=x[None]), r) for x, r in zip(ids, ref))]
            return sum(cs) / len(cs), min(cs)

        before, _ = cosine()
        info = distill(m, train, steps=steps, show_progress=ctx.show_progress, seed=ctx.seed)
        after, worst = cosine()
        speedup, t_dense, t = _paired_speedup(ctx, lambda: dense(input_ids=ids[:1]), lambda: m(input_ids=ids[:1]),
                                              rounds)
        rows.append({"length": L, "policy": "spatten+distill", "token_keep": keep, "cosine": after,
                     "cosine_min": worst, "cosine_before_distill": before, "speedup": speedup, "ms": t,
                     "dense_ms": t_dense, "macs_ratio": m.spatten_stats.macs_ratio, "distill_steps": steps,
                     "distill_passages": n_train, "distill_seconds": info["seconds"],
                     "distill_loss_last": info["loss_last"]})
    return rows


def plot_encoder(result: dict, png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["length"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.8), squeeze=False)
    for ax, L in zip(axes[0], lengths):
        for policy, mk in zip(ENC_POLICIES, ("o-", "s--", "^:")):
            rs = sorted([r for r in result["rows"] if r["length"] == L and r["policy"] == policy],
                        key=lambda r: r["token_keep"])
            ax.plot([r["speedup"] for r in rs], [r["cosine"] for r in rs], mk, label=policy)
            if policy == "spatten" and rs and "full_length_cosine" in rs[0]:
                ax.plot([r["speedup"] for r in rs], [r["full_length_cosine"] for r in rs], "x-", color="grey",
                        label="spatten, full-length mean")
        rs = sorted([r for r in result["rows"] if r["length"] == L and r["policy"] == "spatten+distill"],
                    key=lambda r: r["token_keep"])
        if rs:
            ax.plot([r["speedup"] for r in rs], [r["cosine"] for r in rs], "D", color="C3",
                    label="spatten + distill")
        ax.axhline(0.98, color="grey", lw=0.8)
        ax.axvline(1.8, color="grey", lw=0.8)
        ax.set_title(f"MiniLM, {L} tokens")
        ax.set_xlabel("measured speed-up (x)")
        ax.set_ylabel("cosine to unpruned (mean-pooled)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# -- spatten-decoder -------------------------------------------------------------------------------
DEC_POLICIES = ("spatten", "h2o", "streaming", "random", "spatten+recent16", "spatten+recent64")
DEC_OPTIONS = {"spatten+recent16": dict(policy="spatten", protect_recent=16),
               "spatten+recent64": dict(policy="spatten", protect_recent=64)}


def _teacher_forced(model, prompt: torch.Tensor, cont: torch.Tensor):
    """Prefill ``prompt (1, P)`` then feed ``cont (1, N)`` one token at a time through the cache
    (the generation stage, as in ``generate()``); returns next-token log-probs ``(N, V)``."""
    out = model(input_ids=prompt, use_cache=True)
    cache = output_cache(out)
    logps = [out.logits[0, -1].log_softmax(-1)]
    seq = prompt.shape[1]
    for t in range(cont.shape[1] - 1):
        seq += 1
        out = model(input_ids=cont[:, t:t + 1], **cache_kwargs(cache), use_cache=True,
                    attention_mask=torch.ones(1, seq, dtype=torch.long))
        logps.append(out.logits[0, -1].log_softmax(-1))
    return torch.stack(logps), cache


def _cache_bytes(cache) -> int:
    return sum(lay.keys.numel() * lay.keys.element_size() + lay.values.numel() * lay.values.element_size()
               for lay in cache.layers if getattr(lay, "keys", None) is not None)


def run_decoder(ctx) -> dict:
    from slimkit_nlp.assets import load_shakespeare_gpt2

    from .textdata import byte_passages

    P, N = (512, 32) if ctx.quick else (512, 128)
    n_prompts = 1 if ctx.quick else 6
    budgets = (0.25, 0.5)
    data = byte_passages(P + N, n_prompts)
    dense = load_shakespeare_gpt2()
    gen = dict(max_new_tokens=N, min_new_tokens=N, do_sample=False, pad_token_id=0)
    rows = []
    with torch.inference_mode():
        ref = [_teacher_forced(dense, x[None, :P], x[None, P:]) for x in data]
        dense_nll = [-lp.gather(1, x[P:, None]).mean().item() for (lp, _), x in zip(ref, data)]
        dense_bytes = _cache_bytes(ref[0][1])
        t_dense = ctx.latency(lambda: dense.generate(input_ids=data[:1, :P], **gen), warmup=1,
                              runs=1 if ctx.quick else 3).median_ms
        for budget in budgets:
            for policy in ctx.progress(DEC_POLICIES, desc=f"budget {budget}"):
                opts = DEC_OPTIONS.get(policy, dict(policy=policy))
                m = slimkit.apply(load_shakespeare_gpt2(), "spatten", token_keep=budget, **opts)
                agree, nll, kv, kl = [], [], [], []
                for x, (rlp, _) in zip(data, ref):
                    lp, cache = _teacher_forced(m, x[None, :P], x[None, P:])
                    agree.append((lp.argmax(-1) == rlp.argmax(-1)).float().mean().item())
                    kl.append((rlp.exp() * (rlp - lp)).sum(-1).mean().item())
                    nll.append(-lp.gather(1, x[P:, None]).mean().item())
                    kv.append(_cache_bytes(cache))
                t = ctx.latency(lambda: m.generate(input_ids=data[:1, :P], **gen), warmup=1,
                                runs=1 if ctx.quick else 3).median_ms
                d_nll = sum(nll) / len(nll)
                rows.append({"budget": budget, "policy": policy, "top1_agreement": sum(agree) / len(agree),
                             "kl_to_dense": sum(kl) / len(kl),
                             "perplexity": math.exp(d_nll), "kv_bytes": sum(kv) / len(kv),
                             "kv_share": sum(kv) / len(kv) / dense_bytes, "tokens_per_s": N / (t / 1000.0)})
    dense_ppl = math.exp(sum(dense_nll) / len(dense_nll))
    for r in rows:
        r["perplexity_change"] = r["perplexity"] / dense_ppl - 1.0
    goals = []
    for budget in budgets:
        at = {r["policy"]: r for r in rows if r["budget"] == budget}
        best = max(at[p]["top1_agreement"] for p in ("h2o", "streaming", "random"))
        goals.append(slimkit.goal(f"top-1 agreement: spatten - best baseline, budget {budget:.0%}",
                                  at["spatten"]["top1_agreement"] - best, 0.0))
    return {"model": "shipped byte-level GPT-2 (4x256)", "prompt_tokens": P, "generated_tokens": N,
            "prompts": n_prompts, "dense_perplexity": dense_ppl, "dense_kv_bytes": dense_bytes,
            "dense_tokens_per_s": N / (t_dense / 1000.0),
            "note": "teacher-forced on the real continuation through the generation-stage cache (top-1 agreement, "
                    "KL(dense || pruned) of the next-token distribution, perplexity of the real text); all policies "
                    "share the same per-layer budgets (cascade schedule), only the score differs; kv_share is the "
                    "cache size relative to the unpruned cache (the first layer is never pruned)",
            "rows": rows, "goals": goals}


def plot_decoder(result: dict, png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["budget"] for r in result["rows"]})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    width = 0.8 / len(DEC_POLICIES)
    for i, p in enumerate(DEC_POLICIES):
        rs = {r["budget"]: r for r in result["rows"] if r["policy"] == p}
        xs = [j + i * width for j in range(len(budgets))]
        axes[0].bar(xs, [rs[b]["top1_agreement"] for b in budgets], width, label=p)
        axes[1].bar(xs, [rs[b]["perplexity_change"] * 100 for b in budgets], width, label=p)
    for ax, t in zip(axes, ("top-1 agreement with unpruned", "perplexity change (%)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(budgets))])
        ax.set_xticklabels([f"KV budget {b:.0%}" for b in budgets])
        ax.set_title(t)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# -- spatten-heads ---------------------------------------------------------------------------------
def run_heads(ctx) -> dict:
    from .textdata import mean_pool, wordpiece_passages

    tok = _tokenizer()
    L = 256
    keeps = (1.0, 0.5) if ctx.quick else (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
    ids = wordpiece_passages(tok, L, 2 if ctx.quick else 6)
    rounds = 3 if ctx.quick else 7
    dense = _minilm()
    rows = []
    with torch.inference_mode():
        ref = [mean_pool(dense(input_ids=x[None]).last_hidden_state, torch.ones(1, L)) for x in ids]
        for hk in ctx.progress(keeps, desc="head_keep"):
            m = _minilm(token_keep=1.0, head_keep=hk)
            cos = [float(torch.cosine_similarity(m(input_ids=x[None]).last_hidden_state.mean(1), r)) for x, r in
                   zip(ids, ref)]
            st = m.spatten_stats
            heads = sum(s.heads_kept for s in st.layers) / sum(s.heads_total for s in st.layers)
            speedup, _, _ = _paired_speedup(ctx, lambda: dense(input_ids=ids[:1]), lambda: m(input_ids=ids[:1]),
                                            rounds)
            rows.append({"head_keep": hk, "heads_pruned_share": 1 - heads, "cosine": sum(cos) / len(cos),
                         "macs": st.macs, "dense_macs": st.dense_macs, "macs_ratio": st.macs_ratio,
                         "speedup": speedup})
    ok = [r["macs_ratio"] for r in rows if r["cosine"] >= 0.98]
    goals = [slimkit.goal("Mult-Adds reduction from heads at cosine>=0.98", max(ok) if ok else 0.0, 1.1, unit="x")]
    return {"model": "all-MiniLM-L6-v2", "tokens": L, "rows": rows, "goals": goals}


def plot_heads(result: dict, png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = sorted(result["rows"], key=lambda r: r["heads_pruned_share"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot([r["heads_pruned_share"] * 100 for r in rs], [r["cosine"] for r in rs], "o-", label="cosine")
    ax.set_xlabel("heads pruned (%)")
    ax.set_ylabel("cosine to unpruned")
    ax2 = ax.twinx()
    ax2.plot([r["heads_pruned_share"] * 100 for r in rs], [r["macs"] / 1e6 for r in rs], "s--", color="C1",
             label="Mult-Adds (M)")
    ax2.set_ylabel("Mult-Adds (M)")
    ax.set_title("SpAtten head pruning, MiniLM, 256 tokens")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def benchmarks():
    from slimkit import Benchmark

    warnings.filterwarnings("ignore", message="spatten: switched")
    return [
        Benchmark("spatten-encoder", run_encoder,
                  "SpAtten token pruning on all-MiniLM-L6-v2: speed-up vs cosine, cumulative vs random/per-layer",
                  plot_encoder),
        Benchmark("spatten-decoder", run_decoder,
                  "SpAtten KV pruning in GPT-2 generation vs StreamingLLM/H2O/random eviction at 25%/50% budgets",
                  plot_decoder),
        Benchmark("spatten-heads", run_heads, "SpAtten head pruning on MiniLM: heads pruned vs fidelity and Mult-Adds",
                  plot_heads),
    ]
