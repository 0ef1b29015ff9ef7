"""``slimkit bench spatten-retrieval``: SpAtten on all-MiniLM-L6-v2, judged by retrieval quality.

People embed long documents once (where pruning 512 tokens pays) and short queries at search time.
The task (``slimkit_nlp.spatten.retrieval``): 512-token documents of the evaluation plays' scenes, each
with a 128-token query from the same scene next to it (never inside a document), in a gallery of 500
documents (the rest: 512-token distractors from the training plays). A query's answers are the
documents of its scene (``relevance="scene"``; the document it touches alone is reported too).

Documents are embedded by the pruned model (mean-pooled, weighted by ``kept_token_weights``), queries
by the dense one; "both pruned" embeds the queries with the pruned model too. Cosine similarity,
Recall@1, Recall@10 (a relevant document in the top k) and MRR; ratios to the dense model on the same
queries. Settings: cumulative SpAtten (drop, merge, the shipped distillation in its own mode and keep, and that model
with heads pruned), per-layer scores and random selection at the same keep ratios. Speed-up: each
setting timed round-robin against the dense document encoder (sdpa, its default) on one 512-token
document, batch 1, threads fixed, median after warm-up. Mult-Adds from ``spatten_stats``.
"""
from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass

import torch

DOC_TOKENS, QUERY_TOKENS, MIN_DOCUMENTS = 512, 128, 500
KEEPS = (0.3, 0.4, 0.5, 0.6)
MODES = ("drop", "merge")
POLICIES = ("spatten", "per_layer", "random")
#: the baselines run in merge mode only (the shipped model's mode): each setting embeds 500 documents of 512
#: tokens, and in the encoder benchmark per-layer and random differed from each other by under 0.005 in both modes
BASELINE_MODES = ("merge",)
HEAD_KEEPS = (0.95, 0.9, 0.8)
BATCH = 8
TARGET_RATIO, TARGET_SPEEDUP = 0.98, 2.0


@dataclass(frozen=True)
class Setting:
    """One pruned document encoder: ``policy`` at ``token_keep`` with ``pruned_tokens``; ``distilled``:
    the shipped distillation's weights and config (``head_keep`` replaced)."""

    policy: str
    pruned_tokens: str
    token_keep: float
    head_keep: float = 1.0
    distilled: bool = False

    @property
    def name(self) -> str:
        if self.distilled:
            heads = "" if self.head_keep == 1.0 else f", head_keep {self.head_keep:g}"
            return f"spatten {self.pruned_tokens} + distill @{self.token_keep:g}{heads}"
        return f"{self.policy} {self.pruned_tokens} @{self.token_keep:g}"


def settings(quick: bool) -> list[Setting]:
    """Every setting measured: cumulative SpAtten at each keep in both modes, per-layer and random at the
    same keeps in ``BASELINE_MODES``, the shipped distilled model, and it with heads pruned."""
    keeps = (0.5,) if quick else KEEPS
    out = [Setting(p, m, k) for m in MODES for p in POLICIES for k in keeps
           if p == "spatten" or m in BASELINE_MODES]
    out.append(shipped_distilled_setting())
    out += [shipped_distilled_setting(h) for h in ((0.8,) if quick else HEAD_KEEPS)]
    return out


def shipped_distilled_setting(head_keep: float = 1.0) -> Setting:
    """The shipped distilled model (``minilm-spatten/slimkit_config.json``: its mode and keep), ``head_keep`` set."""
    from slimkit_nlp.assets import MINILM_SPATTEN

    cfg = json.loads((MINILM_SPATTEN / "slimkit_config.json").read_text())
    return Setting("spatten", cfg["pruned_tokens"], cfg["token_keep"], head_keep, distilled=True)


def dense_model(attn: str = "sdpa"):
    from transformers import AutoModel

    from slimkit_nlp.spatten.textdata import minilm_path

    return AutoModel.from_pretrained(minilm_path(), attn_implementation=attn).eval()


def _sharing(model):
    """A copy of ``model`` whose parameters are the same tensors (spatten replaces a bound forward only)."""
    import copy

    memo = {id(p): p for p in model.parameters()}
    memo.update({id(b): b for b in model.buffers()})
    return copy.deepcopy(model, memo)


def make_model(s: Setting, base=None, distilled_base=None):
    """The pruned encoder of setting ``s``; ``base`` / ``distilled_base``: eager models to share weights with."""
    import slimkit

    if s.distilled:
        from slimkit_nlp.assets import MINILM_SPATTEN
        from slimkit_nlp.spatten import SpattenConfig

        cfg = SpattenConfig.from_pretrained(MINILM_SPATTEN).replace(head_keep=s.head_keep)
        return slimkit.apply(_sharing(distilled_base), cfg)
    return slimkit.apply(_sharing(base), "spatten", token_keep=s.token_keep, policy=s.policy,
                         pruned_tokens=s.pruned_tokens)


def distilled_weights():
    """all-MiniLM-L6-v2 (eager) with the shipped distillation's low-rank deltas added, no spatten."""
    from slimkit_nlp.assets import MINILM_SPATTEN
    from slimkit_nlp.spatten import load_deltas

    m = dense_model("eager")
    load_deltas(m, MINILM_SPATTEN / "deltas.safetensors")
    return m


def embed(model, ids: torch.Tensor, batch: int = BATCH, progress=None) -> torch.Tensor:
    """Mean-pooled embeddings ``(N, H)`` of ``ids (N, L)`` (no padding): weighted by ``kept_token_weights``
    for a spatten model (the tokens each kept token stands for), a plain mean otherwise."""
    from slimkit_nlp.spatten.textdata import mean_pool

    chunks = range(0, ids.shape[0], batch)
    out = []
    with torch.inference_mode():
        for i in (progress(chunks) if progress else chunks):
            o = model(input_ids=ids[i:i + batch])
            w = getattr(o, "kept_token_weights", None)
            h = o.last_hidden_state
            out.append(mean_pool(h, w if w is not None else torch.ones(h.shape[:2])))
    return torch.cat(out)


def score(q_emb: torch.Tensor, d_emb: torch.Tensor, task) -> dict:
    """Retrieval metrics of query embeddings ``(Q, H)`` against document embeddings ``(D, H)``: at the scene
    level (the goals) and the document level, plus the per-query reciprocal ranks (scene level)."""
    from slimkit_nlp.spatten.retrieval import cosine_matrix, retrieval_metrics, target_ranks

    sim = cosine_matrix(q_emb, d_emb)
    rel = task.relevance("scene")
    out = retrieval_metrics(sim, rel)
    out["document_level"] = retrieval_metrics(sim, task.targets)
    out["reciprocal_ranks"] = (1.0 / target_ranks(sim, rel).double()).tolist()
    return out


def evaluate(model, task, dense: dict, progress=None) -> dict:
    """Everything measured on one pruned document encoder except speed: metrics with dense queries and
    with pruned queries, their ratios to ``dense`` (``{"docs", "queries", "metrics"}``), the mean cosine
    of each pruned document embedding to its dense one, Mult-Adds of one document."""
    docs = embed(model, task.doc_ids, progress=progress)
    pruned_q = embed(model, task.query_ids, batch=64)
    row = {"metrics": score(dense["queries"], docs, task), "both_pruned": score(pruned_q, docs, task)}
    row["cosine_to_dense"] = float(torch.cosine_similarity(docs, dense["docs"]).mean())
    with torch.inference_mode():
        model(input_ids=task.doc_ids[:1])
    st = model.spatten_stats
    row.update(macs=st.macs, dense_macs=st.dense_macs, macs_ratio=st.macs_ratio,
               heads_pruned_share=1 - sum(s.heads_kept for s in st.layers) / sum(s.heads_total for s in st.layers))
    for key in ("mrr", "recall@1", "recall@10"):
        row[f"{key}_ratio"] = row["metrics"][key] / max(dense["metrics"][key], 1e-12)
        row[f"both_pruned_{key}_ratio"] = row["both_pruned"][key] / max(dense["metrics"][key], 1e-12)
    return row


def speedup(ctx, dense, model, x: torch.Tensor, rounds: int) -> dict:
    """Round-robin timing of the dense encoder and ``model`` on ``x (1, L)``: medians and the speed-up."""
    lat = ctx.latencies({"dense": lambda: dense(input_ids=x), "pruned": lambda: model(input_ids=x)},
                        warmup=1, runs=rounds, desc="timing")
    return {"ms": lat["pruned"].median_ms, "dense_ms": lat["dense"].median_ms,
            "speedup": lat["dense"].median_ms / lat["pruned"].median_ms}


def dense_document_embeddings(ctx, model, ids: torch.Tensor) -> torch.Tensor:
    """The dense model's document embeddings, cached on disk (``$SLIMKIT_CACHE/spatten-retrieval``) by the
    digest of ``ids``, the model's weights and the torch version: they are deterministic, so a rerun skips
    the 500 dense forwards. Quick runs do not cache."""
    import hashlib
    import os
    from pathlib import Path

    h = hashlib.sha256(ids.numpy().tobytes())
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.float().numpy().tobytes()[:4096])
    h.update(torch.__version__.encode())
    root = Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit")) / "spatten-retrieval"
    path = root / f"dense-{h.hexdigest()[:16]}.safetensors"
    if path.exists():
        from slimkit.io import FileFormatError, load_safetensors

        try:
            emb = load_safetensors(path)["embeddings"]
            if emb.shape[0] == ids.shape[0]:
                return emb
        except (FileFormatError, KeyError):
            pass                      # a damaged cache file only costs the recomputation
    emb = embed(model, ids, progress=lambda it: ctx.progress(it, desc="dense documents"))
    from slimkit.io import save_safetensors

    save_safetensors({"embeddings": emb}, path)
    return emb


def build_task(quick: bool):
    from transformers import AutoTokenizer

    from slimkit_nlp.spatten.retrieval import build_retrieval_task
    from slimkit_nlp.spatten.textdata import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    task = build_retrieval_task(tok, DOC_TOKENS, QUERY_TOKENS, MIN_DOCUMENTS)
    return task.subset(12, 12) if quick else task


def run_task(ctx, task, chosen: list[Setting], rounds: int) -> dict:
    """Dense reference, then every setting in ``chosen``: metrics, cosine, Mult-Adds and speed-up."""
    from slimkit_nlp.benchmarks.spatten import _paired_ci

    sdpa, eager = dense_model("sdpa"), dense_model("eager")
    distilled = distilled_weights() if any(s.distilled for s in chosen) else None
    d_docs = (embed(sdpa, task.doc_ids, progress=lambda it: ctx.progress(it, desc="dense documents")) if ctx.quick
              else dense_document_embeddings(ctx, sdpa, task.doc_ids))
    d_queries = embed(sdpa, task.query_ids, batch=64)
    dense = {"docs": d_docs, "queries": d_queries, "metrics": score(d_queries, d_docs, task)}
    n_eval = task.n_evaluation
    dense["metrics"]["evaluation_documents_only"] = score(d_queries, d_docs[:n_eval], _only_evaluation(task))
    dense["metrics"]["evaluation_documents_only"].pop("reciprocal_ranks")
    store = None if ctx.quick else progress_store(task)
    rows = []
    for s in ctx.progress(chosen, desc="settings"):
        m = make_model(s, eager, distilled)

        def measure(m=m, s=s):
            return evaluate(m, task, dense, progress=lambda it, n=s.name: ctx.progress(it, desc=n))
        quality = measure() if store is None else store.measure(s.name, measure)
        row = {"setting": s.name, "policy": s.policy, "pruned_tokens": s.pruned_tokens, "token_keep": s.token_keep,
               "head_keep": s.head_keep, "distilled": s.distilled, **copy.deepcopy(quality)}
        row.update(speedup(ctx, sdpa, m, task.doc_ids[:1], rounds))     # timed in every run, side by side
        base_rr = dense["metrics"]["reciprocal_ranks"]
        row["mrr_minus_dense"] = _paired_ci(row["metrics"]["reciprocal_ranks"], base_rr, ctx.seed)
        rows.append(row)
        del m
    return {"dense": dense["metrics"], "rows": rows}


def progress_store(task):
    """Where each setting's quality measurements (``evaluate``: 500 pruned documents, a few minutes each) are kept
    so that an interrupted run resumes (``MeasurementStore``). Its fingerprint covers the task's token ids, the
    shipped distillation (deltas and config), the torch and transformers versions, the ``spatten`` package and
    the measuring functions here; the speed-ups are measured again in every run."""
    import hashlib
    from pathlib import Path

    import transformers

    from slimkit_nlp.assets import MINILM_SPATTEN

    from .llm_eval import MeasurementStore

    digest = hashlib.sha256(task.doc_ids.numpy().tobytes() + task.query_ids.numpy().tobytes())
    for f in ("deltas.safetensors", "slimkit_config.json"):
        digest.update((MINILM_SPATTEN / f).read_bytes())
    settings = {"task_and_distillation": digest.hexdigest()[:16], "torch": torch.__version__,
                "transformers": transformers.__version__}
    here = Path(__file__).resolve().parent
    return MeasurementStore("spatten-retrieval", settings, source_dirs=[here.parent / "spatten"],
                            sources=(Setting, make_model, distilled_weights, embed, score, evaluate))


def _only_evaluation(task):
    from slimkit_nlp.spatten.retrieval import RetrievalTask

    n = task.n_evaluation
    return RetrievalTask(task.doc_ids[:n], task.query_ids, task.targets, task.docs[:n], task.queries)


def summarize(rows: list[dict], seed: int = 0) -> dict:
    """Goals and summary figures from ``run_task``'s rows (which still carry per-query reciprocal ranks):
    the best speed-up at the target ratios, cumulative minus the better baseline per mode and keep (with
    paired 95% bootstrap intervals over queries), and the largest head share at MRR >= 0.98x dense."""
    import slimkit
    from slimkit_nlp.benchmarks.spatten import _paired_ci

    def ok(r):
        return r["mrr_ratio"] >= TARGET_RATIO and r["recall@10_ratio"] >= TARGET_RATIO

    passing = [r for r in rows if r["policy"] == "spatten" and ok(r)]
    best = max(passing, key=lambda r: r["speedup"]) if passing else None
    margins, paired = {}, {}
    for mode in MODES:
        for k in sorted({r["token_keep"] for r in rows if not r["distilled"] and r["pruned_tokens"] == mode}):
            at = {r["policy"]: r for r in rows if not r["distilled"] and r["pruned_tokens"] == mode
                  and r["token_keep"] == k}
            rivals = [p for p in ("per_layer", "random") if p in at]
            if "spatten" not in at or not rivals:
                continue
            rival = max(rivals, key=lambda p: at[p]["metrics"]["mrr"])
            margins[f"{mode} @{k:g}"] = at["spatten"]["metrics"]["mrr"] - at[rival]["metrics"]["mrr"]
            paired[f"{mode} @{k:g}"] = {"best_baseline": rival, **_paired_ci(
                at["spatten"]["metrics"]["reciprocal_ranks"], at[rival]["metrics"]["reciprocal_ranks"], seed)}
    goals = [slimkit.goal(f"document-encoder speed-up at MRR and Recall@10 >= {TARGET_RATIO}x dense "
                          f"({DOC_TOKENS} tok, pruned documents, dense queries)",
                          best["speedup"] if best else 0.0, TARGET_SPEEDUP, unit="x")]
    for mode in MODES:
        mine = {k: v for k, v in margins.items() if k.startswith(mode + " ")}
        if mine:
            goals.append(slimkit.goal(f"cumulative - best of per-layer/random, MRR, {mode}, worst of keeps "
                                      f"{', '.join(k.split('@')[1] for k in mine)}", min(mine.values()), 0.0))
    heads_ok = [r["heads_pruned_share"] for r in rows if r["distilled"] and r["mrr_ratio"] >= TARGET_RATIO]
    return {"goals": goals,
            "best_at_target": ({k: best[k] for k in ("setting", "speedup", "macs_ratio", "mrr_ratio",
                                                      "recall@10_ratio", "recall@1_ratio")} if best else None),
            "cumulative_minus_best_baseline_mrr": margins, "cumulative_vs_best_baseline_paired": paired,
            "largest_heads_pruned_share_at_mrr_0.98": max(heads_ok) if heads_ok else 0.0}


def run(ctx) -> dict:
    from slimkit_nlp.assets import MINILM_SPATTEN

    warnings.filterwarnings("ignore", message="spatten: switched")
    task = build_task(ctx.quick)
    chosen = settings(ctx.quick)
    rounds = 3 if ctx.quick else 7
    res = run_task(ctx, task, chosen, rounds)
    rows, dense = res["rows"], res["dense"]
    summary = summarize(rows, ctx.seed)
    training = json.loads((MINILM_SPATTEN / "training.json").read_text())
    for r in rows:      # per-query lists stay out of the JSON; the paired intervals summarise them
        for key in ("metrics", "both_pruned"):
            r[key].pop("reciprocal_ranks", None)
    dense.pop("reciprocal_ranks", None)
    return {
        "model": "all-MiniLM-L6-v2", "document_tokens": DOC_TOKENS, "query_tokens": QUERY_TOKENS,
        "documents": len(task.docs), "evaluation_documents": task.n_evaluation, "queries": task.n_evaluation,
        "distractors": len(task.docs) - task.n_evaluation,
        "relevant_per_query": float(task.relevance("scene").sum(1).float().mean()),
        "task": "documents: 512-token passages of the evaluation plays' scenes (modern edition), plus 512-token "
                "distractors from the training plays up to 500; queries: the 128 tokens of the same scene next to "
                "each evaluation document, never inside a document (q D D q layout). Answers: every document of "
                "the query's scene (metrics); document_level: only the document the query touches",
        "metrics_note": "recall@k: share of queries with an answer in the top k; mrr: mean of 1/rank of the first "
                        "answer; ties count against the query. *_ratio: pruned / dense on the same queries. "
                        "metrics: pruned documents, dense queries (the goals); both_pruned: queries embedded by the "
                        "pruned model too; mrr_minus_dense: paired per-query difference, mean and 95% bootstrap",
        "speed": "speedup: dense all-MiniLM-L6-v2 with its default attention (sdpa) / the pruned model on one "
                 f"{DOC_TOKENS}-token document, batch 1, round-robin, 1 warm-up + {rounds} rounds per setting, "
                 "medians; macs_ratio: dense / pruned Mult-Adds of the transformer layers",
        "distilled": {"made_by": training["script"], "settings": training["settings"],
                      "objective": training.get("objective", "mean-pooled + per-token cosine to the unpruned model"),
                      "train_seconds": training["seconds"]},
        "dense": dense,
        "heads_note": "shipped distillation with heads pruned too (head_keep; no head pruning in the first 30% of "
                      "layers): largest_heads_pruned_share_at_mrr_0.98 is the largest share of heads pruned whose "
                      "MRR stays >= 0.98x dense",
        **{k: v for k, v in summary.items() if k != "goals"},
        "rows": rows, "goals": summary["goals"]}


def plot(result: dict, png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    marks = {"spatten": "o", "per_layer": "s", "random": "^"}
    styles = {"drop": "--", "merge": "-"}
    for ax, key, title in zip(axes, ("mrr_ratio", "recall@10_ratio"), ("MRR", "Recall@10")):
        for mode in MODES:
            for i, policy in enumerate(POLICIES):
                rs = sorted([r for r in result["rows"] if not r["distilled"] and r["policy"] == policy
                             and r["pruned_tokens"] == mode], key=lambda r: r["token_keep"])
                if rs:
                    ax.plot([r["speedup"] for r in rs], [r[key] for r in rs], styles[mode] + marks[policy],
                            color="C4" if mode == "drop" else f"C{i}", ms=4, alpha=1.0 if policy == "spatten" else 0.6,
                            label=f"{policy}, {mode}")
        for r in result["rows"]:
            if r["distilled"]:
                full = r["head_keep"] == 1.0
                ax.plot([r["speedup"]], [r[key]], "D" if full else "x", color="C3", ms=7 if full else 6,
                        label=f"spatten {r['pruned_tokens']} + distill" if full else None)
                if not full:
                    ax.annotate(f"heads {r['heads_pruned_share']:.0%}", (r["speedup"], r[key]), fontsize=6,
                                xytext=(3, -8), textcoords="offset points")
        ax.axhline(TARGET_RATIO, color="grey", lw=0.8)
        ax.axvline(TARGET_SPEEDUP, color="grey", lw=0.8)
        d = result["dense"]
        ax.set_title(f"{title} of pruned documents / dense ({title} dense {d[key.replace('_ratio', '')]:.3f})",
                     fontsize=9)
        ax.set_xlabel("document encoder speed-up vs dense (sdpa), 512 tokens (x)")
        ax.set_ylabel(f"{title} / dense (dense queries)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
