"""``slimkit nlp demo``: SpAtten on all-MiniLM-L6-v2 over real Shakespeare text (about 10-20 s)."""
from __future__ import annotations

import warnings

import click


def run_demo(tokens: int = 512, token_keep: float = 0.5, passages: int = 2, threads: int = 1, echo=print) -> dict:
    """Dense vs SpAtten MiniLM on ``passages`` real passages of ``tokens`` tokens; returns the numbers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    import slimkit
    from slimkit.measure import measure_latency

    from .textdata import mean_pool, minilm_path, wordpiece_passages

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    ids = wordpiece_passages(tok, tokens, passages)
    dense = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = slimkit.apply(AutoModel.from_pretrained(path, attn_implementation="eager").eval(), "spatten",
                               token_keep=token_keep)
    cos = []
    with torch.inference_mode():
        for x in ids:
            ref = mean_pool(dense(input_ids=x[None]).last_hidden_state, torch.ones(1, tokens))
            out = pruned(input_ids=x[None])
            cos.append(float(torch.cosine_similarity(mean_pool(out.last_hidden_state, out.kept_attention_mask), ref)))
    t_dense = measure_latency(lambda: dense(input_ids=ids[:1]), warmup=2, runs=5, threads=threads).median_ms
    t_pruned = measure_latency(lambda: pruned(input_ids=ids[:1]), warmup=2, runs=5, threads=threads).median_ms
    st = pruned.spatten_stats
    res = {"tokens": tokens, "token_keep": token_keep, "dense_ms": t_dense, "spatten_ms": t_pruned,
           "speedup": t_dense / t_pruned, "cosine": sum(cos) / len(cos), "macs_ratio": st.macs_ratio,
           "tokens_per_layer": st.tokens_kept()}
    echo(f"SpAtten on all-MiniLM-L6-v2, {passages} Shakespeare passages of {tokens} tokens, token_keep={token_keep}")
    echo("  tokens per layer: " + " -> ".join(f"{t:.0f}" for t in st.tokens_kept()))
    echo(f"  latency (batch 1, {threads} thread): dense {t_dense:.0f} ms, spatten {t_pruned:.0f} ms "
         f"-> {res['speedup']:.2f}x measured speed-up ({st.macs_ratio:.2f}x fewer layer Mult-Adds)")
    echo(f"  fidelity: cosine of the mean-pooled embedding to the unpruned model {res['cosine']:.4f}")
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
    run_demo(tokens, token_keep, passages, threads, echo=click.echo)
