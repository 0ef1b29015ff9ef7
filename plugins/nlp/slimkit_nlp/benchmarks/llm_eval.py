"""Shared evaluation harness for KV-cache compression on a real causal LM.

Every KV-cache method under test is a :class:`Method`: ``prefill(ids)`` processes a prompt and
returns ``(cache, last_logits)``, ``step(ids, cache, position)`` continues from the absolute
position ``position`` (after compression the cache length no longer equals it, so positions are
passed explicitly as ``position_ids``, exactly as kvpress's own pipeline does) and
``kv_bytes(cache)`` says how many bytes the cache holds. The harness measures

* fidelity on real text (:func:`load_prompts`: windows of Shakespeare's held-out plays and of the
  novel Botchan): :func:`continuation_metrics` teacher-forces the true continuation through the
  method's cache and compares with :func:`dense_reference` (top-1 agreement, KL(dense || method),
  perplexity of the true continuation);
* long-range retrieval (:func:`retrieval_prompts`, :func:`retrieval_accuracy`): "word: number"
  lines buried in real filler text, then a question about an early word;
* speed and memory (:func:`time_prefill_and_decode`): prefill seconds, decode tokens/s and KV
  bytes, interleaved across methods, median of the repeats after a warm-up.

Library code must never import this package (it is benchmark-only).
"""
from __future__ import annotations

import os
import random
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from slimkit.errors import ConfigError, MissingExtraError, SlimkitError

from ..compat import cache_kwargs, output_cache

__all__ = [
    "Prompt", "RetrievalPrompt", "Method", "DenseMethod", "KVPressMethod", "load_prompts",
    "retrieval_prompts", "continuation_metrics", "dense_reference", "retrieval_accuracy",
    "time_prefill_and_decode", "fix_threads", "cache_lengths", "cache_nbytes", "encode", "greedy_generate",
]


# --------------------------------------------------------------------------------------- prompts
@dataclass
class Prompt:
    """A window of real text: ``ids`` (1, T) is the prompt, ``continuation`` (1, C) the true next tokens."""

    ids: torch.LongTensor
    continuation: torch.LongTensor
    source: str


@dataclass
class RetrievalPrompt:
    """A key-value retrieval prompt; ``answer`` is the digit string the model should produce.

    ``key`` is the word asked about, ``decode`` turns generated ids into text (the tokenizer's),
    ``stop_ids`` end the greedy answer (the tokenizer's end-of-sequence / end-of-turn ids).
    """

    ids: torch.LongTensor
    answer: str
    key: str = ""
    decode: Callable[[list[int]], str] | None = field(default=None, repr=False)
    stop_ids: tuple[int, ...] = ()


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (HF tokenizers and slimkit's ByteTokenizer)."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        ids = tokenizer.encode(text)
    if isinstance(ids, torch.Tensor):
        ids = ids.flatten().tolist()
    return list(ids)


def _windows(ids: list[int], n: int, length: int, rng: random.Random) -> list[int]:
    """``n`` window starts in ``ids``: non-overlapping when the text is long enough."""
    if n <= 0:
        return []
    if len(ids) < length:
        raise ConfigError(f"the corpus has {len(ids)} tokens, fewer than one window of {length}; "
                          "use fewer prompt_tokens")
    slots = len(ids) // length
    if slots >= n:
        # n distinct slots of a grid with one random offset: spread over the whole text, no overlap
        chosen = sorted(rng.sample(range(slots), n))
        offset = rng.randint(0, len(ids) - slots * length)
        return [offset + s * length for s in chosen]
    return sorted(rng.randint(0, len(ids) - length) for _ in range(n))


def _corpus_texts() -> list[tuple[str, str]]:
    """(name, text) of the two real corpora: Shakespeare's validation plays and Botchan."""
    from ..data import load_botchan, load_plays

    plays = load_plays("validation", "modern")
    return [("shakespeare", "\n\n".join(plays.values())), ("botchan", load_botchan())]


def load_prompts(tokenizer, n: int = 40, prompt_tokens: int = 1000, continuation_tokens: int = 64,
                 seed: int = 0, texts: Sequence[tuple[str, str]] | None = None) -> list[Prompt]:
    """``n`` windows of real text cut at token boundaries: half from Shakespeare's held-out
    (validation) plays, half from the novel Botchan. ``texts`` overrides the corpora with
    ``[(source name, text), ...]`` (tests use it); the windows are shared out evenly among them."""
    if n < 1 or prompt_tokens < 1 or continuation_tokens < 1:
        raise ConfigError("load_prompts needs n, prompt_tokens and continuation_tokens >= 1")
    texts = list(texts) if texts is not None else _corpus_texts()
    rng = random.Random(seed)
    length = prompt_tokens + continuation_tokens
    out: list[Prompt] = []
    for i, (name, text) in enumerate(texts):
        share = n // len(texts) + (1 if i < n % len(texts) else 0)
        ids = encode(tokenizer, text)
        for start in _windows(ids, share, length, rng):
            window = torch.tensor(ids[start:start + length], dtype=torch.long).unsqueeze(0)
            out.append(Prompt(window[:, :prompt_tokens], window[:, prompt_tokens:], f"{name}@{start}"))
    return out


_WORD = re.compile(r"^[a-z]{4,9}$")


def _key_words(text: str, count: int, rng: random.Random) -> list[str]:
    words = sorted({w for w in re.findall(r"[A-Za-z]+", text) if _WORD.match(w)})
    if len(words) < count:
        raise ConfigError(f"the filler text has only {len(words)} distinct words; need {count}")
    return rng.sample(words, count)


def _stop_ids(tokenizer) -> tuple[int, ...]:
    ids = set()
    for attr in ("eos_token_id", "pad_token_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            ids.add(v)
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        try:
            v = tokenizer.convert_tokens_to_ids(tok)
        except Exception:  # noqa: BLE001 - stand-in tokenizers
            continue
        unk = getattr(tokenizer, "unk_token_id", None)
        if isinstance(v, int) and v >= 0 and v != unk:
            ids.add(v)
    return tuple(sorted(ids))


def _chat_ids(tokenizer, user_text: str) -> list[int]:
    """The chat-template ids of one user turn plus the assistant prefix; plain text if no template."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": user_text}],
                                            add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        if isinstance(ids, torch.Tensor):
            ids = ids.flatten().tolist()
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return list(ids)
    return encode(tokenizer, user_text + "\nAnswer: ")


def retrieval_prompts(tokenizer, n: int = 20, pairs: int = 30, filler_tokens: int = 600, seed: int = 0,
                      filler_text: str | None = None) -> list[RetrievalPrompt]:
    """``n`` prompts of ``pairs`` lines "The secret number for WORD is 12345." spread between the lines of
    ~``filler_tokens`` tokens of real text (Botchan, and Shakespeare for odd prompts), then a question about
    a word from the first third of the list (so the answer sits early in the prompt). The prompt ends with
    the start of the answer, "The secret number for WORD is", so the next tokens should be the digits.

    Uses the tokenizer's chat template when it has one, so an Instruct model answers with the digits.
    ``filler_text`` overrides the corpora (tests use it).
    """
    if pairs < 1 or n < 1:
        raise ConfigError("retrieval_prompts needs n >= 1 and pairs >= 1")
    rng = random.Random(seed)
    corpora = [("filler", filler_text)] if filler_text is not None else _corpus_texts()[::-1]
    encoded = [(name, text, encode(tokenizer, text)) for name, text in corpora]
    decode = getattr(tokenizer, "decode", None)
    stops = _stop_ids(tokenizer)
    out = []
    for i in range(n):
        name, text, ids = encoded[i % len(encoded)]
        start = _windows(ids, 1, min(filler_tokens, len(ids)), rng)[0]
        # whole lines of the filler window (its cut first and last lines dropped)
        lines = tokenizer.decode(ids[start:start + filler_tokens]).split("\n")
        lines = [ln.rstrip() for ln in (lines[1:-1] if len(lines) > 2 else lines) if ln.strip()]
        keys = _key_words(text, pairs, rng)
        values = [str(rng.randint(10000, 99999)) for _ in range(pairs)]
        at = {round(j * len(lines) / pairs): [] for j in range(pairs)}
        for j in range(pairs):
            at[round(j * len(lines) / pairs)].append(j)
        body = []
        for li in range(len(lines) + 1):
            body.extend(f"The secret number for {keys[j]} is {values[j]}." for j in at.get(li, []))
            if li < len(lines):
                body.append(lines[li])
        asked = rng.randrange(max(1, pairs // 3))
        user = ("Read the text below. Some lines give a secret number for a word; remember them.\n\n"
                + "\n".join(body)
                + f"\n\nWhat is the secret number for {keys[asked]}? Answer with the 5-digit number only.")
        # the answer's first words end the prompt (as kvpress's answer_prefix), so that the digits come next
        prefix = encode(tokenizer, f"The secret number for {keys[asked]} is")
        prompt_ids = torch.tensor(_chat_ids(tokenizer, user) + prefix, dtype=torch.long).unsqueeze(0)
        out.append(RetrievalPrompt(prompt_ids, values[asked], keys[asked], decode, stops))
    return out


# --------------------------------------------------------------------------------------- methods
def cache_lengths(cache) -> list[int]:
    """Tokens held per layer: the layer's ``get_seq_length()`` (a quantized layer counts its quantized
    tokens too), else ``keys.shape[-2]``; 0 for an empty layer."""
    out = []
    for layer in getattr(cache, "layers", []):
        if hasattr(layer, "get_seq_length"):
            try:
                out.append(int(layer.get_seq_length()))
                continue
            except Exception:  # noqa: BLE001 - an uninitialised layer
                pass
        k = getattr(layer, "keys", None)
        out.append(int(k.shape[-2]) if isinstance(k, torch.Tensor) and k.dim() >= 2 else 0)
    return out


def _nbytes(obj) -> int:
    """Bytes of the tensors in ``obj``: a tensor (a tensor subclass such as quanto's QTensor counts its
    inner tensors), or a tuple / list / dict of them (hqq's (packed, meta) pair)."""
    if isinstance(obj, torch.Tensor):
        if type(obj) is not torch.Tensor and hasattr(obj, "__tensor_flatten__"):
            names, _ = obj.__tensor_flatten__()
            return sum(_nbytes(getattr(obj, n)) for n in names)
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(v) for v in obj)
    return 0


def cache_nbytes(cache) -> int:
    """Bytes of every layer's ``keys`` and ``values`` tensors, plus the quantized ones of transformers'
    ``QuantizedCache`` layers (``_quantized_keys`` / ``_quantized_values``: data, scales and zero points)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values", "_quantized_keys", "_quantized_values"):
            total += _nbytes(getattr(layer, name, None))
    return total


class Method:
    """One KV-cache method under test, on a Hugging Face causal LM.

    Subclasses override :meth:`new_cache`, :meth:`prefill`, :meth:`step` and/or :meth:`kv_bytes`.
    The defaults are the dense method: a ``DynamicCache``, a plain prefill, and continuation with
    explicit ``position_ids`` (so that they stay right after a method shortened the cache).
    """

    name: str = "method"
    kind: str = "custom"
    budget: float | None = None

    def __init__(self, model, name: str | None = None, kind: str | None = None, budget: float | None = None):
        self.model = model
        if name is not None:
            self.name = name
        if kind is not None:
            self.kind = kind
        if budget is not None:
            self.budget = budget

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, budget={self.budget!r})"

    def key_options(self) -> dict | None:
        """The options that set this method's numbers apart from others of its name (None: the name says all)."""
        return None

    @property
    def store_key(self) -> str:
        """The method's part of a ``MeasurementStore`` key: its name, then its ``key_options`` as sorted JSON."""
        import json

        opts = self.key_options()
        return self.name if opts is None else f"{self.name} {json.dumps(opts, sort_keys=True, default=str)}"

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache()

    def _forward(self, ids: torch.Tensor, cache, position_ids: torch.Tensor | None = None, **kw):
        out = self.model(input_ids=ids, position_ids=position_ids, use_cache=True, **cache_kwargs(cache), **kw)
        return out

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor):
        """Process the prompt ``ids`` (1, T); return ``(cache, logits of the last position (1, V))``."""
        cache = self.new_cache()
        out = self._forward(ids, cache, logits_to_keep=1)
        returned = output_cache(out)
        return (returned if returned is not None else cache), out.logits[:, -1].float()

    @torch.no_grad()
    def step(self, ids: torch.Tensor, cache, position: int) -> torch.Tensor:
        """Feed ``ids`` (1, n) whose first token sits at absolute position ``position``; logits (1, n, V)."""
        n = ids.shape[1]
        pos = torch.arange(position, position + n, device=ids.device).unsqueeze(0)
        return self._forward(ids, cache, position_ids=pos).logits.float()

    def kv_bytes(self, cache) -> int:
        """Bytes the cache holds now (default: the keys and values tensors of ``cache.layers``)."""
        return cache_nbytes(cache)


def shared_copy(model, attn_implementation: str | None = None):
    """A copy of ``model`` whose parameters and buffers are the same tensors (so techniques that replace a
    bound forward, or another attention implementation, do not touch the original or double the memory)."""
    import copy

    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    m = copy.deepcopy(model, memo)
    if attn_implementation is not None:
        m.set_attn_implementation(attn_implementation)
    return m


class DenseMethod(Method):
    """The plain model with a full ``DynamicCache`` (the reference everyone is compared with)."""

    name = "dense"
    kind = "dense"
    budget = None


class KVPressMethod(Method):
    """A kvpress press applied during prefill, by class name and KV budget (share of the KV KEPT).

    kvpress's ``compression_ratio`` is the share REMOVED, so ``budget=0.25`` is ``compression_ratio=0.75``.
    Decoding continues as kvpress's pipeline does: explicit ``position_ids`` from the true prompt length.
    ``press_kwargs`` go to the press (e.g. ``n_sink=4`` for StreamingLLMPress, ``window_size`` for SnapKV).
    ObservedAttentionPress needs the model loaded with ``attn_implementation="eager"``.
    """

    kind = "kvpress"

    def __init__(self, model, press: str | Any, budget: float, name: str | None = None, **press_kwargs):
        if not 0.0 < budget <= 1.0:
            raise ConfigError(f"budget is the share of the KV cache kept, in (0, 1]; got {budget}")
        try:
            import kvpress
        except ImportError as exc:
            raise MissingExtraError(
                f"KVPressMethod needs kvpress ({exc}); it runs in the LLM peer virtualenv "
                "(slimkit_nlp.benchmarks.peers.ensure_peer_env) because kvpress 0.5.5 requires transformers<5.3") from exc
        if isinstance(press, str):
            cls = getattr(kvpress, press, None)
            if cls is None or not isinstance(cls, type):
                known = sorted(n for n in dir(kvpress) if n.endswith("Press"))
                raise ConfigError(f"kvpress has no press {press!r}; known presses: {', '.join(known)}")
            press_name = press
            press = cls(compression_ratio=1.0 - budget, **press_kwargs)
        else:
            press_name = type(press).__name__
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if press_name == "ObservedAttentionPress" and impl not in (None, "eager"):
            raise ConfigError(f"ObservedAttentionPress reads the attention weights, which only eager attention "
                              f"returns; load the model with attn_implementation='eager' (it uses {impl!r})")
        self.press = press
        self.press_name = press_name
        super().__init__(model, name=name or f"{press_name}@{budget:g}", budget=budget)

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor):
        with self.press(self.model):
            return super().prefill(ids)


# --------------------------------------------------------------------------------------- metrics
@torch.no_grad()
def dense_reference(model, prompt: Prompt) -> torch.Tensor:
    """Dense logits (C, V), float32, predicting each continuation token: one full forward, no cache."""
    full = torch.cat([prompt.ids, prompt.continuation[:, :-1]], dim=1)
    t = prompt.ids.shape[1]
    out = model(input_ids=full, use_cache=False)
    return out.logits[0, t - 1:].float()


@torch.no_grad()
def method_continuation_logits(method: Method, prompt: Prompt, step_tokens: int = 1):
    """The method's logits (C, V) for the continuation, teacher-forced through its cache; and the cache
    bytes after prefill. ``step_tokens`` tokens go in per ``step`` call (1 = decode token by token)."""
    cache, last = method.prefill(prompt.ids)
    prefill_bytes = method.kv_bytes(cache)
    t = prompt.ids.shape[1]
    cont = prompt.continuation
    pieces = [last.reshape(1, -1)]
    fed = 0
    while fed < cont.shape[1] - 1:
        n = min(step_tokens, cont.shape[1] - 1 - fed)
        logits = method.step(cont[:, fed:fed + n], cache, t + fed)
        pieces.append(logits[0])
        fed += n
    return torch.cat(pieces, dim=0).float(), prefill_bytes, cache


def continuation_metrics(method: Method, prompt: Prompt, reference: torch.Tensor, step_tokens: int = 1) -> dict:
    """Fidelity of ``method`` on one prompt against the dense ``reference`` (from :func:`dense_reference`).

    Returns ``top1`` (share of continuation positions where the argmax agrees with dense), ``kl``
    (mean over positions of KL(dense || method), nats), ``ppl`` and ``dense_ppl`` (perplexity of the
    true continuation under the method / dense), ``nll`` and ``kv_bytes`` (after prefill).
    """
    logits, prefill_bytes, cache = method_continuation_logits(method, prompt, step_tokens)
    ref = reference.float()
    if logits.shape != ref.shape:
        raise SlimkitError(f"{method.name}: continuation logits have shape {tuple(logits.shape)}, "
                           f"the dense reference {tuple(ref.shape)}")
    target = prompt.continuation[0]
    logp = F.log_softmax(logits, dim=-1)
    ref_logp = F.log_softmax(ref, dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).clamp_min(0.0)
    nll = F.nll_loss(logp, target)
    dense_nll = F.nll_loss(ref_logp, target)
    return {
        "top1": float((logits.argmax(-1) == ref.argmax(-1)).float().mean()),
        "kl": float(kl.mean()),
        "nll": float(nll),
        "ppl": float(torch.exp(nll)),
        "dense_ppl": float(torch.exp(dense_nll)),
        "kv_bytes": int(prefill_bytes),
    }


_DIGITS = re.compile(r"\d+")


def _answer_digits(text: str, length: int) -> str:
    runs = _DIGITS.findall(text)
    for run in runs:
        if len(run) == length:
            return run
    return runs[0] if runs else ""


@torch.no_grad()
def greedy_generate(method: Method, ids: torch.Tensor, max_new_tokens: int, stop_ids: Sequence[int] = ()):
    """Greedy decoding through the method's cache; returns ``(new token ids, cache)``."""
    cache, last = method.prefill(ids)
    position = ids.shape[1]
    out: list[int] = []
    token = int(last.argmax(-1).item())
    for i in range(max_new_tokens):
        out.append(token)
        if token in stop_ids or i == max_new_tokens - 1:
            break
        logits = method.step(torch.tensor([[token]], dtype=torch.long, device=ids.device), cache, position)
        position += 1
        token = int(logits[0, -1].argmax(-1).item())
    return out, cache


def retrieval_accuracy(method: Method, rp: RetrievalPrompt, max_new_tokens: int = 12) -> float:
    """Share of the answer's digits the method reproduces, position by position, when decoding greedily.

    The digits are read from the generated text: the first run of digits as long as the answer, else the
    first run of digits (an answer with no digits scores 0).
    """
    new, _ = greedy_generate(method, rp.ids, max_new_tokens, rp.stop_ids)
    new = [t for t in new if t not in rp.stop_ids]
    if rp.decode is None:
        raise SlimkitError("this RetrievalPrompt has no decode function; build it with retrieval_prompts(tokenizer)")
    got = _answer_digits(rp.decode(new), len(rp.answer))
    return sum(a == b for a, b in zip(got, rp.answer)) / len(rp.answer)


# ------------------------------------------------------------------------ what the numbers depend on
#: the code that computes the fidelity and retrieval numbers (prompts, methods, metrics), hashed into the
#: fingerprint of a ``MeasurementStore`` (``sources=MEASURING``); timing and the store itself are not part of it
MEASURING = (Prompt, RetrievalPrompt, encode, _windows, _corpus_texts, load_prompts, _WORD.pattern, _key_words,
             _stop_ids, _chat_ids, retrieval_prompts, cache_lengths, _nbytes, cache_nbytes, Method, shared_copy,
             DenseMethod, KVPressMethod, dense_reference, method_continuation_logits, continuation_metrics,
             _DIGITS.pattern, _answer_digits, greedy_generate, retrieval_accuracy, cache_kwargs, output_cache)


# --------------------------------------------------------------------------------------- timing
def fix_threads(n: int = 1) -> None:
    """Pin torch (and the BLAS libraries of any subprocess) to ``n`` threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only settable before the first parallel work
        pass


def _run_once(method: Method, prompt: Prompt, decode_tokens: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    cache, last = method.prefill(prompt.ids)
    t1 = time.perf_counter()
    position = prompt.ids.shape[1]
    token = last.argmax(-1).reshape(1, 1)
    for _ in range(decode_tokens):
        logits = method.step(token, cache, position)
        position += 1
        token = logits[:, -1].argmax(-1).reshape(1, 1)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, method.kv_bytes(cache)


@torch.no_grad()
def time_prefill_and_decode(methods: Sequence[Method], prompt: Prompt, decode_tokens: int = 128,
                            repeats: int = 3, warmup_tokens: int = 4) -> dict[str, dict]:
    """Prefill seconds, greedy decode tokens/s and final KV bytes of each method on one prompt.

    One warm-up round (``warmup_tokens`` decode steps) per method, then ``repeats`` rounds. A round
    prefills every method (the order rotates every round so no method always runs first), then decodes
    **step by step across the methods**: step ``i`` of every method, in the round's order, before step
    ``i + 1`` of any. A change in the machine's load (another job on a shared machine) then falls on every
    method alike instead of on whichever ran during it. A method's decode time in a round is the sum of its
    step times (the greedy ``argmax`` between steps is not timed); medians over the rounds.
    Returns ``{name: {"prefill_s", "decode_tok_s", "kv_bytes", "prefill_runs", "decode_runs"}}``
    (``decode_runs``: seconds for ``decode_tokens`` steps, per round).
    """
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ConfigError(f"methods need distinct names to be timed together; got {names}")
    for m in methods:
        _run_once(m, prompt, warmup_tokens)
    prefill: dict[str, list[float]] = {m.name: [] for m in methods}
    decode: dict[str, list[float]] = {m.name: [] for m in methods}
    kv: dict[str, int] = {}
    order = list(methods)
    for r in range(repeats):
        rotated = order[r % len(order):] + order[:r % len(order)]
        runs = [_Decoding(m, prompt) for m in rotated]           # prefills, timed one after another
        for _ in range(decode_tokens):
            for run in runs:
                run.step()
        for run in runs:
            prefill[run.method.name].append(run.prefill_s)
            decode[run.method.name].append(run.decode_s)
            kv[run.method.name] = run.method.kv_bytes(run.cache)
        del runs
    return {m.name: {"prefill_s": statistics.median(prefill[m.name]),
                     "decode_tok_s": decode_tokens / statistics.median(decode[m.name]) if decode_tokens else 0.0,
                     "kv_bytes": kv[m.name],
                     "prefill_runs": prefill[m.name], "decode_runs": decode[m.name]} for m in methods}


class _Decoding:
    """One method's greedy decode of one prompt, advanced a step at a time: prefill on creation (timed in
    ``prefill_s``), then ``step()`` adds each step's seconds to ``decode_s``."""

    def __init__(self, method: Method, prompt: Prompt):
        self.method = method
        t0 = time.perf_counter()
        self.cache, last = method.prefill(prompt.ids)
        self.prefill_s = time.perf_counter() - t0
        self.decode_s = 0.0
        self.position = prompt.ids.shape[1]
        self.token = last.argmax(-1).reshape(1, 1)

    def step(self) -> None:
        t0 = time.perf_counter()
        logits = self.method.step(self.token, self.cache, self.position)
        self.decode_s += time.perf_counter() - t0
        self.position += 1
        self.token = logits[:, -1].argmax(-1).reshape(1, 1)


# -- resumable measurements ------------------------------------------------------------------------
def prompt_key(ids: torch.Tensor) -> str:
    """A short fingerprint of a prompt's token ids (results stored per prompt content, not per index)."""
    import hashlib

    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


#: compiled sources inside a technique's package that a ``MeasurementStore`` fingerprints with its Python files
NATIVE_SUFFIXES = (".c", ".h", ".cc", ".cpp")


def code_fingerprint(source: str) -> str:
    """What a piece of Python source computes, as text: its syntax tree without docstrings (comments and layout are
    not in the tree), so editing documentation keeps a ``MeasurementStore``'s results and editing code does not."""
    import ast
    import textwrap

    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


class MeasurementStore:
    """Per-(prompt, method) results of a long benchmark, kept on disk so an interrupted run resumes.

    The store is one JSON file under ``~/.cache/slimkit/bench-progress/`` named by a fingerprint of
    everything that changes the numbers: ``settings``, plus the code that computes them, given as
    ``source_dirs`` (folders or single files, hashed whole: a technique's package) and ``sources``
    (functions and classes: the measuring parts of a harness, so that a change to its timing, goals or plots
    keeps the stored results), each hashed as its ``code_fingerprint`` (documentation edits keep the results
    too). It is written atomically after every new result. A rerun with the same settings and code skips what
    is already measured; any change of settings or code starts a fresh file. Key results by ``prompt_key`` so
    that runs with other prompt counts share what overlaps, and by ``Method.store_key`` so that each method's
    options are part of its key.
    """

    def __init__(self, name: str, settings: dict, source_dirs: Sequence[str] = (), sources: Sequence[Any] = ()):
        import hashlib
        import inspect
        import json
        from pathlib import Path

        h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        for d in source_dirs:
            files = [Path(d)] if Path(d).is_file() else sorted(
                f for f in Path(d).rglob("*") if f.suffix in NATIVE_SUFFIXES + (".py",))
            for f in files:   # Python by its syntax tree; C sources (e.g. pq's kernels) as written
                h.update((code_fingerprint(f.read_text()) if f.suffix == ".py" else f.read_text()).encode())
        for obj in sources:
            h.update((obj if isinstance(obj, str) else code_fingerprint(inspect.getsource(obj))).encode())
        root = Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit")) / "bench-progress"
        self.path = root / f"{name}-{h.hexdigest()[:16]}.json"
        self.data: dict[str, Any] = {}
        if self.path.exists():
            from slimkit.io import FileFormatError, read_json

            try:
                self.data = dict(read_json(self.path).get("results", {}))
            except (FileFormatError, AttributeError):
                self.data = {}        # a damaged progress file only costs the re-measurement
        self.settings = settings

    def __len__(self) -> int:
        return len(self.data)

    def measure(self, key: str, fn: Callable[[], Any]) -> Any:
        """The stored result for ``key``, else ``fn()`` (stored before returning)."""
        if key in self.data:
            return self.data[key]
        value = fn()
        self.data[key] = value
        from slimkit.io import atomic_write_json

        atomic_write_json(self.path, {"settings": self.settings, "results": self.data})
        return value
