"""``slimkit nlp demo``: SpAtten on all-MiniLM-L6-v2 over real Shakespeare text (about 20-40 s)."""
from __future__ import annotations

import warnings

import click


def run_demo(tokens: int = 512, token_keep: float = 0.5, passages: int = 2, threads: int = 1, echo=print) -> dict:
    """Dense vs SpAtten MiniLM (and the shipped distilled SpAtten MiniLM) on ``passages`` real passages
    of ``tokens`` tokens; returns the numbers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    import slimkit
    from slimkit.measure import measure_latency_interleaved
    from slimkit_nlp.assets import load_minilm_spatten

    from .textdata import mean_pool, minilm_path, wordpiece_passages

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    ids = wordpiece_passages(tok, tokens, passages)
    dense = AutoModel.from_pretrained(path).eval()                       # the default: sdpa attention
    eager = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = slimkit.apply(AutoModel.from_pretrained(path).eval(), "spatten", token_keep=token_keep,
                               pruned_tokens="merge")
        distilled = load_minilm_spatten()
    models = {"spatten": pruned, "spatten + distill": distilled}
    cos = {k: [] for k in models}
    with torch.inference_mode():
        for x in ids:
            ref = dense(input_ids=x[None]).last_hidden_state.mean(1)
            for k, m in models.items():
                out = m(input_ids=x[None])
                cos[k].append(float(torch.cosine_similarity(mean_pool(out.last_hidden_state, out.kept_token_weights),
                                                            ref)))
    lat = measure_latency_interleaved({"dense": lambda: dense(input_ids=ids[:1]), "eager": lambda: eager(input_ids=ids[:1]),
                                       **{k: (lambda m=m: m(input_ids=ids[:1])) for k, m in models.items()}},
                                      warmup=2, runs=5, threads=threads)
    ms = {k: v.median_ms for k, v in lat.items()}
    keep_d = distilled.config.slimkit_spatten["token_keep"]
    mode_d = distilled.config.slimkit_spatten["pruned_tokens"]
    echo(f"SpAtten on all-MiniLM-L6-v2, {passages} Shakespeare passages of {tokens} tokens")
    with torch.inference_mode():
        pruned(input_ids=ids[:1])
    echo("  tokens per layer: " + " -> ".join(f"{t:.0f}" for t in pruned.spatten_stats.tokens_kept()))
    echo(f"  dense: {ms['dense']:.0f} ms (sdpa, the default); {ms['eager']:.0f} ms (eager)   "
         f"[batch 1, {threads} thread]")
    res = {"tokens": tokens, "token_keep": token_keep, "dense_ms": ms["dense"], "dense_eager_ms": ms["eager"],
           "macs_ratio": pruned.spatten_stats.macs_ratio, "tokens_per_layer": pruned.spatten_stats.tokens_kept()}
    for k, label in (("spatten", f"spatten (token_keep={token_keep}, merge)"),
                     ("spatten + distill", f"spatten + shipped distillation (token_keep={keep_d}, {mode_d}; trained for "
                                           f"retrieval, not for this cosine: slimkit bench spatten-retrieval)")):
        c = sum(cos[k]) / len(cos[k])
        echo(f"  {label}: {ms[k]:.0f} ms -> {ms['dense'] / ms[k]:.2f}x vs dense, {ms['eager'] / ms[k]:.2f}x vs eager; "
             f"cosine of the mean-pooled embedding to dense {c:.4f}")
        res[k] = {"ms": ms[k], "speedup": ms["dense"] / ms[k], "speedup_vs_eager": ms["eager"] / ms[k], "cosine": c}
    return res


@click.command("demo")
@click.option("--tokens", default=512, show_default=True, help="passage length in tokens (<= 512)")
@click.option("--token-keep", default=0.5, show_default=True, help="average share of tokens kept")
@click.option("--passages", default=2, show_default=True)
@click.option("--threads", default=1, show_default=True)
def demo_command(tokens: int, token_keep: float, passages: int, threads: int) -> None:
    """Run SpAtten token pruning on all-MiniLM-L6-v2 over real text; print speed-up and fidelity."""
    if not 8 <= tokens <= 512:
        raise click.BadParameter("tokens must be between 8 and 512 (MiniLM's position table)")
    if not 0.0 < token_keep <= 1.0:
        raise click.BadParameter("token-keep must be in (0, 1], e.g. 0.5")
    run_demo(tokens, token_keep, passages, threads, echo=click.echo)
