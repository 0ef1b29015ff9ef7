"""The LLM KV-cache evaluation harness, on a tiny random Llama and a byte tokenizer."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from slimkit.errors import ConfigError
from slimkit_nlp.benchmarks import llm_eval as ev
from slimkit_nlp.benchmarks import peers
from slimkit_nlp.compat import cache_kwargs
from slimkit_nlp.data import ByteTokenizer

TEXT_A = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
          "it was the age of foolishness, it was the epoch of belief. ") * 12
TEXT_B = ("Whether I shall turn out to be the hero of my own life, or whether that station "
          "will be held by anybody else, these pages must show. ") * 12


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the default init, so that logits are not near-uniform
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    m.config._attn_implementation = "eager"
    return m


@pytest.fixture(scope="module")
def prompt():
    return ev.load_prompts(ByteTokenizer(), n=2, prompt_tokens=120, continuation_tokens=12,
                           texts=[("a", TEXT_A), ("b", TEXT_B)])[0]


class HalfMethod(ev.Method):
    """Drops every other cached token after prefill (keeps the last one)."""

    kind = "test-drop"
    budget = 0.5

    def prefill(self, ids):
        cache, last = super().prefill(ids)
        for layer in cache.layers:
            t = layer.keys.shape[-2]
            keep = torch.arange(t - 1, -1, -2).flip(0)
            layer.keys = layer.keys[:, :, keep]
            layer.values = layer.values[:, :, keep]
        return cache, last


def test_load_prompts_windows():
    tok = ByteTokenizer()
    ps = ev.load_prompts(tok, n=5, prompt_tokens=100, continuation_tokens=10, seed=3,
                         texts=[("a", TEXT_A), ("b", TEXT_B)])
    assert len(ps) == 5 and [p.source.split("@")[0] for p in ps] == ["a", "a", "a", "b", "b"]
    for p in ps:
        assert p.ids.shape == (1, 100) and p.continuation.shape == (1, 10) and p.ids.dtype == torch.long
        text = TEXT_A if p.source.startswith("a") else TEXT_B
        start = int(p.source.split("@")[1])
        assert tok.decode(torch.cat([p.ids, p.continuation], 1)[0].tolist()) == text[start:start + 110]
    a_starts = sorted(int(p.source.split("@")[1]) for p in ps if p.source.startswith("a"))
    assert all(b - a >= 110 for a, b in zip(a_starts, a_starts[1:]))  # no overlap
    again = ev.load_prompts(tok, n=5, prompt_tokens=100, continuation_tokens=10, seed=3,
                            texts=[("a", TEXT_A), ("b", TEXT_B)])
    assert [p.source for p in again] == [p.source for p in ps]
    with pytest.raises(ConfigError):
        ev.load_prompts(tok, n=2, prompt_tokens=10_000, texts=[("a", TEXT_A)])


def test_dense_matches_its_reference(model, prompt):
    ref = ev.dense_reference(model, prompt)
    assert ref.shape == (12, 300)
    r = ev.continuation_metrics(ev.DenseMethod(model), prompt, ref)
    assert r["top1"] == 1.0 and r["kl"] < 1e-6 and abs(r["ppl"] - r["dense_ppl"]) < 1e-3 * r["ppl"]
    # 2 layers x (keys + values) x 2 KV heads x 120 tokens x 16 dims x 4 bytes
    assert r["kv_bytes"] == 2 * 2 * 2 * 120 * 16 * 4
    chunked = ev.continuation_metrics(ev.DenseMethod(model), prompt, ref, step_tokens=5)
    assert chunked["top1"] == 1.0 and chunked["kl"] < 1e-6


def test_dropping_half_the_cache_changes_predictions(model, prompt):
    ref = ev.dense_reference(model, prompt)
    half = HalfMethod(model, name="half")
    r = ev.continuation_metrics(half, prompt, ref)
    assert r["top1"] < 1.0 and r["kl"] > 1e-4
    assert r["kv_bytes"] == 2 * 2 * 2 * 60 * 16 * 4
    cache, _ = half.prefill(prompt.ids)
    assert ev.cache_lengths(cache) == [60, 60] and half.kv_bytes(cache) == r["kv_bytes"]


def test_step_uses_the_absolute_position_after_truncation(model, prompt):
    half = HalfMethod(model)
    ids = prompt.continuation[:, :4]
    t = prompt.ids.shape[1]
    cache, _ = half.prefill(prompt.ids)
    got = half.step(ids, cache, t)
    manual_cache, _ = half.prefill(prompt.ids)
    with torch.no_grad():
        manual = model(input_ids=ids, position_ids=torch.arange(t, t + 4).unsqueeze(0), use_cache=True,
                       **cache_kwargs(manual_cache)).logits
        wrong_cache, _ = half.prefill(prompt.ids)
        wrong = model(input_ids=ids, use_cache=True, **cache_kwargs(wrong_cache)).logits  # positions from cache length
    assert torch.allclose(got, manual, atol=1e-5)
    assert not torch.allclose(got, wrong, atol=1e-3)
    assert ev.cache_lengths(cache) == [64, 64]


class ScriptedMethod(ev.Method):
    """Emits a fixed token sequence (whatever the prompt), to test answer parsing."""

    def __init__(self, tokens, vocab=300):
        super().__init__(model=None, name="scripted")
        self.tokens, self.vocab, self.i = tokens, vocab, 0

    def _logits(self):
        out = torch.zeros(1, self.vocab)
        out[0, self.tokens[min(self.i, len(self.tokens) - 1)]] = 1.0
        self.i += 1
        return out

    def prefill(self, ids):
        self.i = 0
        return object(), self._logits()

    def step(self, ids, cache, position):
        return self._logits().unsqueeze(1)

    def kv_bytes(self, cache):
        return 0


def test_retrieval_prompts_and_accuracy():
    tok = ByteTokenizer()
    rps = ev.retrieval_prompts(tok, n=3, pairs=6, filler_tokens=200, seed=1, filler_text=TEXT_A + TEXT_B)
    assert len(rps) == 3
    for rp in rps:
        text = tok.decode(rp.ids[0].tolist())
        assert len(rp.answer) == 5 and rp.answer.isdigit()
        assert f"The secret number for {rp.key} is {rp.answer}." in text and text.count("The secret number") == 6 + 1  # 6 lines + the answer prefix
        assert text.endswith(f"Answer: The secret number for {rp.key} is") and f"secret number for {rp.key}?" in text
    rp = rps[0]
    assert ev.retrieval_accuracy(ScriptedMethod(tok.encode(" " + rp.answer + "\n")), rp) == 1.0
    wrong = rp.answer[:4] + str((int(rp.answer[4]) + 1) % 10)
    assert ev.retrieval_accuracy(ScriptedMethod(tok.encode("It is " + wrong)), rp) == pytest.approx(0.8)
    assert ev.retrieval_accuracy(ScriptedMethod(tok.encode("no idea")), rp) == 0.0


def test_timing_interleaves_methods(model, prompt):
    methods = [ev.DenseMethod(model), HalfMethod(model, name="half")]
    r = ev.time_prefill_and_decode(methods, prompt, decode_tokens=3, repeats=2)
    assert set(r) == {"dense", "half"}
    for v in r.values():
        assert v["prefill_s"] > 0 and v["decode_tok_s"] > 0 and len(v["decode_runs"]) == 2
    # after 3 decode steps: dense holds 120 + 3 tokens, half 60 + 3
    assert r["dense"]["kv_bytes"] == 2 * 2 * 2 * 123 * 16 * 4 and r["half"]["kv_bytes"] == 2 * 2 * 2 * 63 * 16 * 4
    with pytest.raises(ConfigError, match="distinct names"):
        ev.time_prefill_and_decode([ev.DenseMethod(model), ev.DenseMethod(model)], prompt, decode_tokens=1)


def test_timing_decodes_step_by_step_across_methods_without_mixing_their_caches(model, prompt):
    calls = []

    def logged(base, name):
        class Logged(base):
            def prefill(self, ids):
                calls.append(("prefill", self.name))
                return super().prefill(ids)

            def step(self, ids, cache, position):
                calls.append((position, self.name, int(ids)))
                return super().step(ids, cache, position)
        return Logged(model, name=name)

    methods = [logged(ev.DenseMethod, "dense"), logged(HalfMethod, "half")]
    ev.time_prefill_and_decode(methods, prompt, decode_tokens=4, repeats=2, warmup_tokens=1)
    timed = calls[2 + 2:]                                      # after the warm-up (prefill + 1 step each)
    first_round = timed[:2 + 2 * 4]
    assert [c[1] for c in first_round] == ["dense", "half"] * 5   # both prefill, then step i of each in turn
    assert [c[0] for c in first_round[2:]] == [120, 120, 121, 121, 122, 122, 123, 123]
    second_round = timed[10:]
    assert [c[1] for c in second_round] == ["half", "dense"] * 5  # the order rotates
    # each method's greedy tokens are its own: the same as decoding it alone
    for m in methods:
        calls.clear()
        ev._run_once(m, prompt, 4)
        alone = [c[2] for c in calls if c[0] != "prefill"]
        assert alone == [c[2] for c in first_round if c[0] != "prefill" and c[1] == m.name]


def test_fix_threads():
    old = torch.get_num_threads()
    ev.fix_threads(1)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(old)


def test_peer_env_check_in_this_interpreter():
    from importlib.metadata import version

    ready = peers.peer_env_ready()
    assert isinstance(ready, bool)
    if peers._version_tuple(version("transformers")) >= (5, 3):
        assert not ready and "requires transformers<5.3" in peers.why_peer()
    assert (peers.repo_root() / "pyproject.toml").is_file()
    assert peers.peer_env_dir().name == "llm-peers"


@pytest.mark.skipif(importlib.util.find_spec("kvpress") is None,
                    reason="kvpress is not importable here (it needs transformers<5.3: it lives in the LLM peer venv)")
def test_kvpress_streaming_llm_keeps_half(model, prompt):
    m = ev.KVPressMethod(model, "StreamingLLMPress", 0.5)
    assert m.kind == "kvpress" and m.budget == 0.5 and m.press.compression_ratio == pytest.approx(0.5)
    cache, last = m.prefill(prompt.ids)
    assert ev.cache_lengths(cache) == [60, 60]
    dense_cache, _ = ev.DenseMethod(model).prefill(prompt.ids)
    assert m.kv_bytes(cache) == ev.cache_nbytes(dense_cache) // 2
    ref = ev.dense_reference(model, prompt)
    r = ev.continuation_metrics(m, prompt, ref)
    assert 0.0 <= r["top1"] <= 1.0 and r["kl"] >= 0.0
    with pytest.raises(ConfigError, match="no press"):
        ev.KVPressMethod(model, "NoSuchPress", 0.5)


@pytest.mark.parametrize("backend,module", [("quanto", "optimum.quanto"), ("hqq", "hqq")])
def test_quantized_cache_bytes_and_lengths(model, prompt, backend, module):
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.skip(f"{module} is not installed here (it lives in the LLM peer venv)")
    from transformers import QuantizedCache

    class Quantized(ev.Method):
        kind = "quantized-cache"

        def new_cache(self):
            return QuantizedCache(backend=backend, config=self.model.config, nbits=4, residual_length=16)

    m = Quantized(model, name=backend)
    cache, _ = m.prefill(prompt.ids)
    assert ev.cache_lengths(cache) == [120, 120]
    dense_cache, _ = ev.DenseMethod(model).prefill(prompt.ids)
    assert 0 < m.kv_bytes(cache) < ev.cache_nbytes(dense_cache) / 2
    r = ev.continuation_metrics(m, prompt, ev.dense_reference(model, prompt))
    assert r["kl"] >= 0.0 and r["kv_bytes"] == m.kv_bytes(m.prefill(prompt.ids)[0])


def test_spatten_method_through_the_harness(model, prompt):
    """The bench's SpattenMethod: keep 1.0 equals dense exactly; at a 50% budget (full prefill, 2 layers)
    the cache holds half the prompt and predictions move; the model it wraps is left untouched."""
    from slimkit_nlp.benchmarks.spatten_llm import SpattenMethod

    ref = ev.dense_reference(model, prompt)
    same = ev.continuation_metrics(SpattenMethod(model, 1.0, {}, name="keep1"), prompt, ref, step_tokens=4)
    assert same["top1"] == 1.0 and same["kl"] < 1e-6
    half = SpattenMethod(model, 0.5, {"policy": "window_group", "prefill_pruning": False, "observe_queries": 8},
                         name="half")
    r = ev.continuation_metrics(half, prompt, ref, step_tokens=4)
    dense_bytes = ev.continuation_metrics(ev.DenseMethod(model), prompt, ref)["kv_bytes"]
    assert abs(r["kv_bytes"] / dense_bytes - 0.5) < 0.02
    assert r["kl"] > 1e-4
    assert not hasattr(model.model, "_spatten_runtime")               # weights shared, the model not patched
    assert half.model.model.embed_tokens.weight is model.model.embed_tokens.weight


def test_measurement_store_resumes_and_separates_settings(tmp_path, monkeypatch):
    """An interrupted long benchmark keeps what it measured: a rerun with the same settings reads it back,
    other settings start a fresh file."""
    from slimkit_nlp.benchmarks.llm_eval import MeasurementStore

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    calls = []

    def work():
        calls.append(1)
        return {"top1": 0.5}

    a = MeasurementStore("toy", {"prompts": 2})
    assert a.measure("continuation/0/dense", work) == {"top1": 0.5}
    again = MeasurementStore("toy", {"prompts": 2})                  # a new process, same settings
    assert again.measure("continuation/0/dense", work) == {"top1": 0.5} and len(calls) == 1
    other = MeasurementStore("toy", {"prompts": 3})
    assert other.path != a.path and other.measure("continuation/0/dense", work) and len(calls) == 2
    a.path.write_text("{broken")                                      # a damaged file costs a re-measurement only
    assert MeasurementStore("toy", {"prompts": 2}).measure("continuation/0/dense", work) and len(calls) == 3


def test_measurement_store_fingerprints_single_source_files_and_prompt_content(tmp_path, monkeypatch):
    """A store keyed on one source file starts afresh when that file changes, not when another does; prompts
    are keyed by their token ids, so the same window gets the same key whatever its index in a run."""
    import torch

    from slimkit_nlp.benchmarks.llm_eval import MeasurementStore, prompt_key

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "cache"))
    harness, technique = tmp_path / "harness.py", tmp_path / "technique.py"
    harness.write_text("x = 1\n")
    technique.write_text("y = 1\n")
    first = MeasurementStore("toy", {}, source_dirs=[harness])
    technique.write_text("y = 2\n")
    assert MeasurementStore("toy", {}, source_dirs=[harness]).path == first.path
    harness.write_text("x = 2\n")
    assert MeasurementStore("toy", {}, source_dirs=[harness]).path != first.path
    ids = torch.arange(10).unsqueeze(0)
    assert prompt_key(ids) == prompt_key(ids.clone()) != prompt_key(ids + 1)
    # a package folder: its C kernels count as well as its Python (pq's native.c changes the numbers too)
    package = tmp_path / "package"
    package.mkdir()
    (package / "mod.py").write_text("z = 1\n")
    (package / "kernel.c").write_text("int f(void) { return 1; }\n")
    (package / "README.md").write_text("notes\n")
    before = MeasurementStore("toy", {}, source_dirs=[package]).path
    (package / "README.md").write_text("other notes\n")
    assert MeasurementStore("toy", {}, source_dirs=[package]).path == before
    (package / "kernel.c").write_text("int f(void) { return 2; }\n")
    assert MeasurementStore("toy", {}, source_dirs=[package]).path != before


def test_measurement_store_hashes_the_measuring_code_not_the_file_around_it(tmp_path, monkeypatch):
    """``sources``: functions hashed by their own text, so editing the timing or plots of a benchmark keeps its
    stored results while editing the function that measures starts a fresh store."""
    import importlib.util

    from slimkit_nlp.benchmarks.llm_eval import MEASURING, MeasurementStore

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "cache"))

    def load(measured: str, timing: str):
        path = tmp_path / f"bench_{abs(hash((measured, timing)))}.py"
        path.write_text(f"def measured():\n    return {measured}\n\n\ndef timing():\n    return {timing}\n")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    first = MeasurementStore("toy", {}, sources=[load("1", "1").measured]).path
    assert MeasurementStore("toy", {}, sources=[load("1", "2").measured]).path == first      # timing edited
    assert MeasurementStore("toy", {}, sources=[load("2", "1").measured]).path != first      # measuring edited
    assert MeasurementStore("toy", {}, sources=["a pattern"]).path != MeasurementStore("toy", {}, sources=["b"]).path
    assert MeasurementStore("toy", {}, sources=MEASURING).path.exists() is False             # every entry hashes


def test_store_keys_carry_each_settings_options():
    """Two settings of one technique under the same label but other options never share a stored result."""
    from slimkit_nlp.benchmarks.llm_eval import DenseMethod
    from slimkit_nlp.benchmarks.spatten_llm import SpattenMethod

    def spatten(options):
        m = object.__new__(SpattenMethod)
        m.name, m.options = "spatten @0.5", options
        return m

    a, b = spatten({"policy": "observed"}), spatten({"policy": "observed_values"})
    assert a.store_key != b.store_key and a.store_key.startswith("spatten @0.5 ")
    assert spatten({"kv_heads": "separate", "policy": "observed"}).store_key == \
        spatten({"policy": "observed", "kv_heads": "separate"}).store_key                  # order-free
    assert DenseMethod(None, name="dense").store_key == "dense"


def test_code_fingerprint_ignores_documentation_only():
    from slimkit_nlp.benchmarks.llm_eval import code_fingerprint

    base = code_fingerprint('def f(x):\n    """Adds one."""\n    return x + 1\n')
    assert code_fingerprint('def f(x):\n    """Adds 1 to x."""\n    # a comment\n    return x + 1  # here\n') == base
    assert code_fingerprint('def f(x):\n    return x + 1\n') == base
    assert code_fingerprint('def f(x):\n    """Adds one."""\n    return x + 2\n') != base
    assert code_fingerprint('    def f(x):\n        return x + 1\n') == base            # a method's indented source
