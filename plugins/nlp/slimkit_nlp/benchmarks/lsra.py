"""Benchmarks of the Lite Transformer.

``lsra-cost``: Mult-Adds per token (``slimkit.measure.count_macs``; conv branch through the
registered counters) at sequence lengths 30 and 512, and median forward latency, for one LSRA
layer and whole models, against a GPT-2-style Transformer (``GPT2LMHeadModel``, FFN 4d) of the
same width/depth, of equal parameters and of equal Mult-Adds.

``lsra-quality``: Lite Transformer vs GPT-2 trained on the Shakespeare corpus (byte level) with the
same CPU time budget each, at matched Mult-Adds per token; validation perplexity vs Mult-Adds.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

VOCAB = 256


def _gpt2(d: int, layers: int, heads: int, positions: int = 1024, dropout: float = 0.0):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=positions, n_embd=d, n_layer=layers, n_head=heads,
                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def _lite(d: int, layers: int, heads: int, positions: int = 1024, dropout: float = 0.0, **kw):
    from slimkit_nlp.lsra.modeling import LiteTransformerConfig, LiteTransformerForCausalLM

    cfg = LiteTransformerConfig(vocab_size=VOCAB, d_model=d, n_head=heads, decoder_layers=layers,
                                max_position_embeddings=positions, dropout=dropout, **kw)
    return LiteTransformerForCausalLM(cfg)


def _macs_per_token(model, T: int) -> float:
    from slimkit.measure import count_macs

    x = torch.randint(0, VOCAB, (1, T))
    model.eval()
    return count_macs(model, input_ids=x, use_cache=False).total / T


def _params(model) -> int:
    from slimkit.measure import count_params

    return count_params(model)


def _width_for(target: float, measure, lo: int, hi: int, step: int) -> int:
    """Smallest width (multiple of ``step``) in [lo, hi] whose ``measure(d)`` is closest to ``target``."""
    best, best_err = lo, float("inf")
    for d in range(lo, hi + 1, step):
        err = abs(measure(d) - target)
        if err < best_err:
            best, best_err = d, err
    return best


# -- lsra-cost ------------------------------------------------------------------------------------
def run_cost(ctx) -> dict:
    from slimkit.measure import count_macs
    from slimkit_nlp.lsra.modeling import LiteTransformerConfig, LiteTransformerLayer

    d, L, H = (128, 2, 4) if ctx.quick else (256, 6, 4)
    lens = (30, 128) if ctx.quick else (30, 512)
    positions = max(lens)
    base = _gpt2(d, L, H, positions)
    base_params = _params(base)
    # Lite widths: same shape, equal parameters (LSRA attention heads keep head dim d/H), equal Mult-Adds
    lite_same = _lite(d, L, H // 2, positions)

    # heads do not change parameters or Mult-Adds (only how channels are grouped): keep H // 2 for
    # the LSRA attention half and H for GPT-2, and search the width in steps of 16
    def lite_params(w):
        return _params(_lite(w, L, H // 2, positions))

    d_eq_params = _width_for(base_params, lite_params, d, 3 * d, 16)
    lite_eq = _lite(d_eq_params, L, H // 2, positions)
    lite_same_macs = _macs_per_token(lite_same, lens[0])

    def gpt_macs(w):
        return _macs_per_token(_gpt2(w, L, H, positions), lens[0])

    d_gpt_eq_macs = _width_for(lite_same_macs, gpt_macs, 32, d, 16)
    gpt_eq_macs = _gpt2(d_gpt_eq_macs, L, H, positions)
    models = {
        f"transformer d={d}": base,
        f"lite d={d} (same shape)": lite_same,
        f"lite d={d_eq_params} (equal params)": lite_eq,
        f"transformer d={d_gpt_eq_macs} (equal Mult-Adds)": gpt_eq_macs,
    }
    rows = {}
    for name, m in ctx.progress(models.items(), total=len(models), desc="models"):
        m.eval()
        row = {"params": _params(m), "width": m.config.hidden_size}
        for T in lens:
            row[f"macs_per_token_len{T}"] = _macs_per_token(m, T)
            x = torch.randint(0, VOCAB, (1, T))
            with torch.no_grad():
                lat = ctx.latency(lambda m=m, x=x: m(input_ids=x, use_cache=False))
            row[f"latency_ms_len{T}"] = lat.median_ms
        rows[name] = row

    # one LSRA layer vs one GPT-2 block, same width, tokens = lens[0]
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    gcfg = GPT2Config(n_embd=d, n_head=H, n_positions=positions, attn_pdrop=0, resid_pdrop=0)
    gcfg._attn_implementation = "sdpa"
    block = GPT2Block(gcfg).eval()
    lcfg = LiteTransformerConfig(d_model=d, n_head=H // 2, decoder_layers=L, dropout=0.0)
    layer = LiteTransformerLayer(lcfg, L - 1, causal=True).eval()  # a K=31 layer (the largest kernel)
    blocks = {}
    for T in lens:
        x = torch.randn(1, T, d)
        rb = count_macs(block, x)
        rl = count_macs(layer, x)
        blocks[f"len{T}"] = {
            "transformer_block_macs_per_token": rb.total / T, "lsra_layer_macs_per_token": rl.total / T,
            "lsra_layer_by_type": {k: v / T for k, v in rl.by_type.items()},
            "ratio": rb.total / rl.total}
    blocks["transformer_block_params"] = _params(block)
    blocks["lsra_layer_params"] = _params(layer)
    blocks["kernel_size"] = layer.lsra.conv.kernel_size

    t30 = f"macs_per_token_len{lens[0]}"
    names = list(models)
    ratio_eq_params = rows[names[0]][t30] / rows[names[2]][t30]
    ratio_same = rows[names[0]][t30] / rows[names[1]][t30]
    goals = [
        __import__("slimkit").goal(f"Mult-Adds ratio Transformer/Lite at equal params, len {lens[0]}",
                                   ratio_eq_params, 2.0),
        __import__("slimkit").goal(f"Mult-Adds ratio Transformer/Lite at same width+depth, len {lens[0]}",
                                   ratio_same, 2.0),
    ]
    return {
        "setting": {"vocab": VOCAB, "layers": L, "transformer_width": d, "transformer_heads": H,
                    "transformer_ffn": 4 * d, "lite_ffn": "d (flattened)", "lite_kernel_sizes": lite_same.config.kernel_sizes,
                    "lengths": list(lens), "threads": ctx.threads},
        "models": rows,
        "block": blocks,
        "ratios": {"equal_params": ratio_eq_params, "same_shape": ratio_same,
                   "equal_params_len_long": rows[names[0]][f"macs_per_token_len{lens[1]}"]
                   / rows[names[2]][f"macs_per_token_len{lens[1]}"],
                   "same_shape_len_long": rows[names[0]][f"macs_per_token_len{lens[1]}"]
                   / rows[names[1]][f"macs_per_token_len{lens[1]}"]},
        "note": ("Mult-Adds of dense layers are proportional to their parameters, so at equal parameters "
                 "the Lite Transformer does about as many Mult-Adds per token as the Transformer; the savings "
                 "(flattened FFN, half-width attention, cheap convolution) appear at equal width/depth, and as "
                 "quality at equal Mult-Adds (lsra-quality). The paper compares at equal Mult-Adds."),
        "goals": goals,
    }


def plot_cost(result: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["models"]
    lens = result["setting"]["lengths"]
    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    x = range(len(names))
    for i, T in enumerate(lens):
        axes[0].bar([k + (i - 0.5) * 0.4 for k in x], [rows[n][f"macs_per_token_len{T}"] / 1e6 for n in names],
                    0.4, label=f"len {T}")
        axes[1].bar([k + (i - 0.5) * 0.4 for k in x], [rows[n][f"latency_ms_len{T}"] for n in names], 0.4,
                    label=f"len {T}")
    axes[0].set_ylabel("Mult-Adds per token (M)")
    axes[1].set_ylabel("median forward latency (ms)")
    axes[2].bar(x, [rows[n]["params"] / 1e6 for n in names], 0.5, color="gray")
    axes[2].set_ylabel("parameters (M)")
    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels([n.replace(" (", "\n(") for n in names], fontsize=7)
    axes[0].legend()
    axes[1].legend()
    fig.suptitle("lsra-cost: Lite Transformer (LSRA) vs GPT-2-style Transformer")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# -- lsra-quality -------------------------------------------------------------------------------
def run_quality(ctx) -> dict:
    import slimkit
    from slimkit_nlp.data import load_text
    from slimkit_nlp.train import train_causal_lm

    budget = 8.0 if ctx.quick else 90.0  # CPU seconds of training per model
    block, batch, lr = 128, 16, 2e-3
    L = 4
    pairs = [(128, 4, 224, 4)] if ctx.quick else [(128, 4, 224, 4), (192, 6, 320, 5)]
    train_text = load_text("train")
    val_text = load_text("validation")
    eval_tokens = 8192 if ctx.quick else 65536
    runs = []
    specs = []
    for gd, gh, ld, lh in pairs:
        specs.append(("transformer", gd, gh))
        specs.append(("lite", ld, lh))
    for kind, d, h in ctx.progress(specs, total=len(specs), desc="train"):
        torch.manual_seed(ctx.seed)
        model = _gpt2(d, L, h, positions=block) if kind == "transformer" else _lite(d, L, h, positions=block)
        macs = _macs_per_token(model, 30)
        macs_block = _macs_per_token(model, block)
        m = train_causal_lm(model, train_text, val_text, block_size=block, batch_size=batch, time_budget_s=budget,
                            lr=lr, warmup_steps=30, eval_tokens=eval_tokens, seed=ctx.seed, show_progress=False,
                            clock="cpu")
        runs.append({"model": kind, "width": d, "heads": h, "layers": L, "params": _params(model),
                     "macs_per_token_len30": macs, f"macs_per_token_len{block}": macs_block,
                     "steps": m["steps"], "tokens_seen": m["tokens_seen"], "train_seconds": m["train_seconds"],
                     "final_train_loss": m["final_train_loss"], "eval_loss": m["eval_loss"],
                     "eval_perplexity": m["eval_perplexity"],
                     "eval_bits_per_byte": m["eval_loss"] / math.log(2)})
    goals = []
    for i in range(len(pairs)):
        t, lt = runs[2 * i], runs[2 * i + 1]
        goals.append(slimkit.goal(
            f"perplexity ratio Transformer/Lite at ~{t['macs_per_token_len30'] / 1e6:.2f}M vs "
            f"{lt['macs_per_token_len30'] / 1e6:.2f}M Mult-Adds/token", t["eval_perplexity"] / lt["eval_perplexity"], 1.0))
    return {"setting": {"corpus": "Shakespeare (slimkit_nlp.data, byte level)", "cpu_seconds_per_model": budget,
                        "block_size": block, "batch_size": batch, "lr": lr, "layers": L,
                        "eval_tokens": eval_tokens, "threads": ctx.threads},
            "runs": runs, "goals": goals}


def plot_quality(result: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for kind, marker in (("transformer", "o"), ("lite", "s")):
        pts = sorted((r["macs_per_token_len30"] / 1e6, r["eval_perplexity"]) for r in result["runs"] if r["model"] == kind)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=
                "GPT-2-style Transformer" if kind == "transformer" else "Lite Transformer (LSRA)")
    ax.set_xlabel("Mult-Adds per token at length 30 (M)")
    ax.set_ylabel("validation perplexity (bytes)")
    ax.set_title(f"Shakespeare, {result['setting']['cpu_seconds_per_model']:.0f} CPU seconds of training each")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
