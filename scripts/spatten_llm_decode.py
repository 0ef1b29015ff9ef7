"""spatten-llm's decode comparison alone, with the benchmark's own methods and timing
(``llm_eval.time_prefill_and_decode``, step by step across the methods): dense, every kvpress press and the
spatten quality setting (``observed`` per KV head) at 50% and 25% KV, 1,000 + 128 tokens on prompt 0,
``ROUNDS`` rounds (default 3, as the benchmark). Run it in the LLM peer venv (kvpress needs transformers<5.3):

    ~/.cache/slimkit/venvs/llm-peers/bin/python scripts/spatten_llm_decode.py [ROUNDS]

Measured (1 thread, a machine shared with other jobs): 50% KV: spatten 6.74 tok/s, the fastest press
(ExpectedAttention) 6.20: 1.09x (1.06-1.09x per round); 25% KV: 6.99 vs 6.72 (ExpectedAttention): 1.04x
(1.01-1.04x per round); dense 5.07. Writes ``/tmp/spatten_llm_decode.json``."""
import json
import sys

import torch

from slimkit_nlp.benchmarks import spatten_llm as S
from slimkit_nlp.benchmarks.llm_eval import fix_threads, load_prompts, time_prefill_and_decode
from slimkit_nlp.models import load_smollm2

fix_threads(1)
model, tok = load_smollm2(attn_implementation="eager", dtype=torch.float32)
prompts = load_prompts(tok, n=1, prompt_tokens=S.PROMPT_TOKENS, continuation_tokens=S.CONTINUATION_TOKENS, seed=0)
settings = [s for s in S.SPATTEN_SETTINGS if s[0] == "spatten observed per-head"]
methods = S.build_methods(model, settings=settings)
t = time_prefill_and_decode(methods, prompts[0], decode_tokens=S.DECODE_TOKENS, repeats=int(sys.argv[1]) if len(sys.argv) > 1 else 3)
for b in ("0.5", "0.25"):
    ours = t[f"spatten observed per-head @{b}"]
    presses = {k: v for k, v in t.items() if k.startswith("kvpress") and k.endswith("@" + b)}
    best = max(presses, key=lambda k: presses[k]["decode_tok_s"])
    print(b, "spatten", round(ours["decode_tok_s"], 2), "best press", best, round(presses[best]["decode_tok_s"], 2),
          "ratio", round(ours["decode_tok_s"] / presses[best]["decode_tok_s"], 3),
          "per round vs best", [round(p / o, 3) for o, p in zip(ours["decode_runs"], presses[best]["decode_runs"])])
print("dense", round(t["dense"]["decode_tok_s"], 2))
json.dump({k: {kk: vv for kk, vv in v.items()} for k, v in t.items()}, open("/tmp/spatten_llm_decode.json", "w"), indent=1)
