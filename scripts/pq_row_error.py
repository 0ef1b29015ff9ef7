"""Where does the MSB-only error of progressive quantization sit? (the measurement behind
``criterion="expected_kl"``)

On the shipped Shakespeare GPT-2 and 16 validation blocks of 256 bytes, every attention row's
KL(exact || MSB-only) is measured, then the share of the total that each recompute test would
catch at equal recompute rates: the paper's (lowest largest-probability first), the expected-KL
estimate (``slimkit_nlp.pq.attention.expected_msb_kl``) and an oracle.

    python scripts/pq_row_error.py [--msb 6] [--lsb 4]
"""
from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--msb", type=int, default=6)
    ap.add_argument("--lsb", type=int, default=4)
    args = ap.parse_args()
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    from slimkit_nlp.assets import load_shakespeare_gpt2
    from slimkit_nlp.data import ByteTokenizer, load_text
    from slimkit_nlp.pq.attention import expected_msb_kl
    from slimkit_nlp.pq.quant import dequantize_msb, quantize, split_planes

    msb, lsb = args.msb, args.lsb
    rows = []

    def softmax(q, k, s, mask):
        x = q @ k.transpose(-1, -2) * s
        return (x + mask[..., : k.shape[-2]] if mask is not None else x).softmax(-1)

    def msb_only(x):
        c, sc, z = quantize(x, msb + lsb, lsb)
        return dequantize_msb(split_planes(c, lsb)[0], lsb, sc, z), sc

    def probe(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        s = scaling or query.shape[-1] ** -0.5
        q, k = query.float(), key.float()
        p = softmax(q, k, s, attention_mask)
        (qm, qs), (km, ks) = msb_only(q), msb_only(k)
        pm = softmax(qm, km, s, attention_mask)
        kl = (p * (p.clamp_min(1e-30).log() - pm.clamp_min(1e-30).log())).sum(-1)
        est = expected_msb_kl(pm, qm, ks, s, lsb, qs, km)
        rows.append((kl.flatten(), pm.amax(-1).flatten(), est.flatten()))
        return (p @ value.float()).transpose(1, 2).contiguous(), p

    AttentionInterface.register("pq_row_error", probe)
    AttentionMaskInterface.register("pq_row_error", eager_mask)
    model = load_shakespeare_gpt2().float().eval()
    model.set_attn_implementation("pq_row_error")
    ids = torch.tensor(ByteTokenizer().encode(load_text("validation")))
    stride = (len(ids) - 257) // 16
    with torch.no_grad():
        model(torch.stack([ids[i * stride: i * stride + 256] for i in range(16)]))
    kl, maxp, est = (torch.cat(x) for x in zip(*rows))
    total = float(kl.sum())
    print(f"{kl.numel()} attention rows, {msb}+{lsb} bits, total KL {total:.2f} nats")
    print("recomputed | share of the KL caught: oracle | max-prob test | expected-KL test")
    for frac in (0.1, 0.2, 0.25, 0.4):
        n = int(frac * kl.numel())
        caught = [float(kl[idx].sum()) / total for idx in
                  (kl.topk(n).indices, (-maxp).topk(n).indices, est.topk(n).indices)]
        print(f"{frac:10.0%} | {caught[0]:6.3f} | {caught[1]:13.3f} | {caught[2]:16.3f}")


if __name__ == "__main__":
    main()
