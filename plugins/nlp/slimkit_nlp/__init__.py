"""slimkit NLP plugin: SpAtten pruning and progressive quantization, Lite Transformer (LSRA), HAT.

Install with ``pip install -e '.[nlp]'`` from a slimkit checkout (see the README's Install section).

Importing ``slimkit_nlp`` (or ``slimkit``, which loads the plugin) makes slimkit's model types known to
Hugging Face's ``Auto*`` classes, without remote code:

    import slimkit_nlp
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("runs/lite/final")     # a Lite Transformer or a HAT export

The import itself stays light (no torch, no transformers): the models are registered the moment
transformers' Auto classes are imported (``transformers.models.auto``), or at once when they already are.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
import warnings

MODEL_MODULES = ("slimkit_nlp.lsra.modeling", "slimkit_nlp.hat.modeling")   # each registers on import
AUTO_MODULE = "transformers.models.auto"

_lock = threading.RLock()
_registered = False


def register_auto_classes() -> None:
    """Register the Lite Transformer (``lite_transformer``) and HAT exports (``slimkit_hat``) with
    ``AutoConfig``, ``AutoModel``, ``AutoModelForCausalLM`` and ``AutoModelForSeq2SeqLM`` (idempotent)."""
    global _registered
    with _lock:
        if _registered:
            return
        _registered = True
        from .compat import TransformersTooOldError

        for name in MODEL_MODULES:
            try:
                importlib.import_module(name)
            except TransformersTooOldError:   # that model needs a newer transformers; it says so when imported
                continue


def _register_quietly() -> None:
    """:func:`register_auto_classes` for the import hook: a failure warns instead of breaking transformers."""
    global _registered
    try:
        register_auto_classes()
    except Exception as e:  # never break the user's `import transformers`
        _registered = False
        warnings.warn(f"slimkit_nlp could not register its models with transformers' Auto classes "
                      f"({type(e).__name__}: {e}); call slimkit_nlp.register_auto_classes() to see why",
                      RuntimeWarning, stacklevel=2)


class _CountingLoader(importlib.abc.Loader):
    """Wraps a transformers module's loader so the registrar knows when transformers is mid-import."""

    def __init__(self, loader, registrar: "_AutoClassRegistrar"):
        self._loader, self._registrar = loader, registrar

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._registrar.depth += 1
        try:
            self._loader.exec_module(module)
        finally:
            self._registrar.depth -= 1
        self._registrar.register_if_ready()

    def __getattr__(self, name):  # get_resource_reader, get_source, is_package, ... of the real loader
        return getattr(self._loader, name)


class _AutoClassRegistrar(importlib.abc.MetaPathFinder):
    """Registers slimkit's models once transformers' Auto classes are imported and no transformers
    module is half-imported any more (transformers imports its Auto package from inside
    ``modeling_utils``, where importing a model would be circular); then it steps aside."""

    def __init__(self):
        self.depth = 0

    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers" and not fullname.startswith("transformers."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _CountingLoader(spec.loader, self)
                return spec
        return None

    def register_if_ready(self) -> None:
        if self.depth == 0 and AUTO_MODULE in sys.modules:
            self.remove()
            _register_quietly()

    def remove(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


def _register_when_transformers_auto_is_imported() -> None:
    """Register now if transformers' Auto classes are already imported, else as soon as they are."""
    if AUTO_MODULE in sys.modules:
        _register_quietly()
    elif not any(isinstance(f, _AutoClassRegistrar) for f in sys.meta_path):
        sys.meta_path.insert(0, _AutoClassRegistrar())


_register_when_transformers_auto_is_imported()

__all__ = ["register_auto_classes"]
