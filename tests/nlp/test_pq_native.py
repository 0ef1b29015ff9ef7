"""progressive-quant's fused decode kernels (``pq/native.c``): built here with the system compiler, equal to the
PyTorch path they replace, and a clear fallback when they cannot be built."""
import shutil
import stat
import warnings

import pytest
import torch

import slimkit
from slimkit_nlp.compat import cache_kwargs
from slimkit_nlp.pq import PQCache, ProgressiveQuantConfig, native
from slimkit_nlp.pq.attention import attend_grouped, attend_grouped_reference, use_native

from .test_pq_grouped import _layer, llama, queries_and_mask

HAS_CC = shutil.which("cc") is not None


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """An empty kernel cache folder and no library loaded yet (restored afterwards)."""
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    native.reset()
    yield tmp_path / "native"
    native.reset()


def _use_compiler(monkeypatch, path, script: str) -> None:
    """Make ``path`` an executable shell script and point ``CC`` at it."""
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(path))


def _torch_path(monkeypatch):
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.reset()


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine")
def test_the_kernels_build_once_and_load_from_the_cache(fresh_native):
    assert native.kernels() is not None and native.unavailable_reason() == ""
    built = list(fresh_native.glob("pq_native-*"))
    assert len(built) == 1 and not list(fresh_native.glob("*.tmp"))
    mtime = built[0].stat().st_mtime_ns
    native.reset()
    assert native.kernels() is not None
    assert built[0].stat().st_mtime_ns == mtime        # loaded, not built again


OPTS = [
    dict(), dict(threshold=0.5, kl_threshold=1e-4), dict(threshold=0.0), dict(criterion="max_prob", threshold=0.3),
    dict(msb_bits=4, lsb_bits=4, value_bits=8, residual_length=3),
    dict(msb_bits=2, lsb_bits=0, value_bits=2, value_group=4, value_rotation=False),
    dict(msb_bits=1, lsb_bits=1, value_bits=1, value_group=8),
    dict(msb_bits=8, lsb_bits=8, value_bits=8, threshold=0.5, kl_threshold=1e-4),   # 16-bit joined key codes
    dict(grid="msb", threshold=0.5, kl_threshold=0.0, residual_length=0),
]


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine")
@pytest.mark.parametrize("opts", OPTS)
@pytest.mark.parametrize("lq", [1, 5])
def test_kernels_equal_the_pytorch_path_and_the_reference(opts, lq, monkeypatch, fresh_native):
    cfg = ProgressiveQuantConfig(**{"key_group": 8, "value_group": 8, **opts})
    layer, _, _ = _layer(cfg, 53)
    q, mask = queries_and_mask(layer, lq, seed=2, padding=3)   # padding: zero probabilities the kernel skips
    assert use_native(q.reshape(2, 2, 2 * lq, 16))    # this call does run the kernels
    p, out, rec, read = attend_grouped(cfg, layer, q, mask, 0.25)
    _torch_path(monkeypatch)
    assert not use_native(q.reshape(2, 2, 2 * lq, 16))
    p_t, out_t, rec_t, read_t = attend_grouped(cfg, layer, q, mask, 0.25)
    p_ref, out_ref, rec_ref = attend_grouped_reference(cfg, layer, q, mask, 0.25)
    assert (rec, read) == (rec_t, read_t) and rec == rec_ref
    torch.testing.assert_close(p, p_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, out_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine")
def test_generation_with_the_kernels_equals_generation_without(monkeypatch, fresh_native):
    model = slimkit.apply(llama(head_dim=16, layers=2), "progressive-quant", key_group=8, value_group=8)
    ids = torch.randint(0, 60, (2, 37), generator=torch.Generator().manual_seed(3))

    def greedy():
        cache = PQCache(model)
        logits, tokens = [], ids
        with torch.no_grad():
            for _ in range(20):
                out = model(tokens, **cache_kwargs(cache), use_cache=True)
                logits.append(out.logits[:, -1])
                tokens = out.logits[:, -1:].argmax(-1)
        return torch.stack(logits, 1)

    with_kernels = greedy()
    assert native.kernels() is not None
    _torch_path(monkeypatch)
    without = greedy()
    torch.testing.assert_close(with_kernels, without, atol=1e-5, rtol=1e-5)


def test_without_a_compiler_one_warning_names_the_fix_and_results_stay(monkeypatch, fresh_native):
    cfg = ProgressiveQuantConfig(key_group=8, value_group=8)
    layer, _, _ = _layer(cfg, 29)
    q = torch.randn(2, 4, 1, 16, generator=torch.Generator().manual_seed(4))
    _torch_path(monkeypatch)
    expected = attend_grouped(cfg, layer, q, None, 0.25)[1]
    monkeypatch.delenv(native.ENV_SWITCH)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    native.reset()
    with pytest.warns(RuntimeWarning, match=r"no C compiler was found \(/nonexistent/cc\).*point CC at it"):
        assert native.kernels() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # said once, not on every call
        out = attend_grouped(cfg, layer, q, None, 0.25)[1]
    torch.testing.assert_close(out, expected)


def test_a_failed_build_leaves_no_library_and_says_so(monkeypatch, fresh_native, tmp_path):
    # writes half a library, then fails, like a compiler killed mid-way
    _use_compiler(monkeypatch, tmp_path / "broken-cc",
                  'if [ "$1" = "--version" ]; then echo broken 1.0; exit 0; fi\n'
                  'while [ "$1" != "-o" ]; do shift; done; echo partial > "$2"; echo "fatal: out of memory" >&2; exit 1\n')
    with pytest.warns(RuntimeWarning, match="building native.c with .*broken-cc failed.*out of memory"):
        assert native.kernels() is None
    assert not list(fresh_native.glob("*"))           # neither the partial file nor a library


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine")
def test_a_compiler_without_march_native_builds_without_it(monkeypatch, fresh_native, tmp_path):
    _use_compiler(monkeypatch, tmp_path / "plain-cc",
                  'for a in "$@"; do if [ "$a" = "-march=native" ]; then '
                  'echo "unsupported option -march=native" >&2; exit 1; fi; done\nexec cc "$@"\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.kernels() is not None


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine")
def test_a_damaged_library_in_the_cache_is_built_again(fresh_native):
    target = native._library_path(shutil.which("cc"))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a shared library")       # e.g. a disk that filled up under an older slimkit
    assert native.kernels() is not None
    assert target.read_bytes()[:4] == b"\x7fELF"


def test_the_kernels_check_what_they_are_given():
    if native.kernels() is None:
        pytest.skip(native.unavailable_reason())
    q = torch.randn(1, 2, 3, 16)
    msb = torch.zeros(1, 2, 4, 16, dtype=torch.uint8)
    s = torch.ones(1, 2, 2, 16)
    with pytest.raises(ValueError, match="scale: expected torch.float32"):
        native.key_scores(q, msb, 2, None, 0, s.half(), s, 8)
    with pytest.raises(ValueError, match=r"msb plane: expected torch.uint8"):
        native.key_scores(q, msb.int(), 2, None, 0, s, s, 8)
