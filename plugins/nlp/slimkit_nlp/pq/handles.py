"""``PackedKV``: what a packed cache layer hands to the attention instead of key/value tensors.

A handle is ``[B, H, T, D]`` in shape only; the ``slimkit_pq`` attention reads the packed planes
from ``handle.layer`` (a ``PQLayer`` or ``GroupedPQLayer``). Both layer kinds create handles, so the
class lives here, below both (no import circle between ``cache`` and ``grouped``).
"""
from __future__ import annotations

import torch

from slimkit.errors import SlimkitError

_ALLOWED = {torch.Tensor.size, torch.Tensor.dim, torch.Tensor.__repr__, torch.Tensor.__format__,
            torch.Tensor.shape.__get__, torch.Tensor.dtype.__get__, torch.Tensor.device.__get__,
            torch.Tensor.ndim.__get__, torch.Tensor.is_floating_point, torch.Tensor.requires_grad.__get__}


class PackedKV(torch.Tensor):
    """Stand-in for the keys or values of one cache layer, ``[B, H, T, D]`` in shape only.

    It holds no data (one shared element, expanded): the ``slimkit_pq`` attention reads
    the packed planes from ``.layer``. Other operations on value handles see the dequantized
    values; on key handles they raise an error instead of computing silently with wrong numbers.
    """

    @staticmethod
    def __new__(cls, layer, kind: str, shape, dtype, device):
        base = torch.zeros((), dtype=dtype, device=device).expand(*shape)
        t = torch.Tensor._make_subclass(cls, base)
        t.layer, t.kind = layer, kind
        return t

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ALLOWED:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if func in (torch.Tensor.gather, torch.gather) and isinstance(args[0], PackedKV):
            # token selection after the cache layer itself was pruned with ``select_tokens``
            # (how spatten evicts): the handle simply describes the layer's current content
            this, dim = args[0], (args[1] if len(args) > 1 else kwargs.get("dim"))
            index = args[2] if len(args) > 2 else kwargs.get("index")
            if dim in (2, -2) and index.shape[2] == this.layer.length and tuple(index.shape[:2]) == tuple(
                    this.shape[:2]):
                with torch._C.DisableTorchFunctionSubclass():
                    shape = tuple(index.shape)
                return PackedKV(this.layer, this.kind, shape, this.dtype, this.device)
        from torch.utils._pytree import tree_flatten, tree_map

        handles = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, PackedKV)]
        if handles and all(h.kind == "values" for h in handles):
            # values are read whole at value_bits anyway: other readers (e.g. spatten's local value
            # pruning) get the dequantized values
            def real(a):
                return a.layer.dequantized_values(a.dtype) if isinstance(a, PackedKV) else a
            args, kwargs = tree_map(real, (args, kwargs))
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        raise SlimkitError(
            f"the cached keys of a slimkit PQCache are packed MSB/LSB planes that only the 'slimkit_pq' "
            f"attention reads (got {getattr(func, '__name__', func)}); use attn_implementation "
            f"'slimkit_pq' (slimkit.apply(model, 'progressive-quant')) or pass a DynamicCache instead")
