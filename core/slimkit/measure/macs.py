"""Mult-Adds (multiply-accumulates) and parameter counting for ``nn.Module``.

Forward hooks attribute work to the innermost running module; a torch
function mode counts the operations themselves: linear, conv1d/2d/3d (and
transposed), matmul/bmm/mm/addmm/baddbmm, einsum and scaled-dot-product
attention, so attention matmuls written as plain tensor code are counted too.
Plugins teach the counter about their own modules with ``register_macs_counter``
(or the ``register_macs_counters`` hook); inside such a module nothing else is counted.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_CUSTOM: dict[type, Callable[[nn.Module, tuple, Any], int]] = {}


def register_macs_counter(module_type: type, fn: Callable[[nn.Module, tuple, Any], int]) -> None:
    """Count ``module_type`` with ``fn(module, inputs, output) -> Mult-Adds`` (one call)."""
    _CUSTOM[module_type] = fn


def _custom_counters() -> dict:
    from ..host import HOST

    table = HOST.collect("register_macs_counters", key=lambda kv: kv[0], make=lambda t, f: (t, f))
    merged = {t: f for t, f in table.values()}
    merged.update(_CUSTOM)
    return merged


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (shared tensors counted once)."""
    from torch.nn.parameter import UninitializedParameter

    seen, total = set(), 0
    for p in model.parameters():
        if isinstance(p, UninitializedParameter):  # lazy modules before their first call
            continue
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _shape(x) -> tuple:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else ()


def _arg(args, kwargs, i, name):
    if len(args) > i:
        return args[i]
    return kwargs.get(name)


def _op_macs(name: str, args, kwargs, out) -> int:
    if name == "linear":
        x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
        return (x.numel() // max(w.shape[-1], 1)) * w.numel()
    if name in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
        if name.startswith("conv_t"):
            # every input element is multiplied by (out_channels/groups * kernel) weights
            return x.numel() * w.shape[1] * math.prod(w.shape[2:])
        return out.numel() * w.shape[1] * math.prod(w.shape[2:])
    if name in ("matmul", "__matmul__", "bmm", "mm"):
        a = _arg(args, kwargs, 0, "input")
        return out.numel() * (a.shape[-1] if a.dim() > 1 else a.shape[0])
    if name in ("addmm", "baddbmm", "addbmm"):
        a = _arg(args, kwargs, 1, "mat1" if name == "addmm" else "batch1")
        return out.numel() * a.shape[-1]
    if name == "scaled_dot_product_attention":
        q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
        batch = q.numel() // (q.shape[-1] * q.shape[-2])
        return batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    if name == "einsum":
        eq = args[0] if args else kwargs.get("equation")
        ops = args[1:] if len(args) > 1 else kwargs.get("operands", ())
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = ops[0]
        if len(ops) != 2:
            return 0
        lhs = eq.replace(" ", "").split("->")[0].split(",")
        sizes = {}
        for sub, t in zip(lhs, ops):
            sub = sub.replace("...", "")
            for ch, n in zip(sub[::-1], t.shape[::-1]):
                sizes[ch] = n
        batch_extra = math.prod(ops[0].shape[: ops[0].dim() - len(lhs[0].replace("...", ""))])
        return math.prod(sizes.values()) * batch_extra
    return 0


_COUNTED = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
            "conv_transpose3d", "matmul", "__matmul__", "bmm", "mm", "addmm", "baddbmm",
            "addbmm", "scaled_dot_product_attention", "einsum"}


@dataclass
class MacsReport:
    """Mult-Adds of one forward: ``total``, per module name and per module type, and parameters."""

    total: int
    params: int
    by_module: dict = field(default_factory=dict)
    by_type: dict = field(default_factory=dict)

    @property
    def gmacs(self) -> float:
        return self.total / 1e9

    def to_dict(self) -> dict:
        return {"total_macs": self.total, "params": self.params,
                "by_type": dict(self.by_type), "by_module": dict(self.by_module)}


class _Counter(TorchFunctionMode):
    def __init__(self, state):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if self.state["opaque"] == 0 and name in _COUNTED:
            try:
                macs = int(_op_macs(name, args, kwargs, out))
            except Exception:  # unusual signature: count nothing rather than fail the model
                macs = 0
            owner = self.state["stack"][-1] if self.state["stack"] else ("", "")
            self.state["by_module"][owner[0]] += macs
            self.state["by_type"][owner[1]] += macs
        return out


def count_macs(model: nn.Module, *args: Any, **kwargs: Any) -> MacsReport:
    """Run ``model(*args, **kwargs)`` once without gradients and count its Mult-Adds."""
    custom = _custom_counters()
    state: dict[str, Any] = {"stack": [], "opaque": 0, "by_module": defaultdict(int), "by_type": defaultdict(int)}
    handles = []

    for qname, mod in model.named_modules():
        counter = next((f for t, f in custom.items() if isinstance(mod, t)), None)

        def pre(m, a, qname=qname, counter=counter):
            state["stack"].append((qname, type(m).__name__))
            if counter is not None:
                state["opaque"] += 1

        def post(m, a, out, qname=qname, counter=counter):
            state["stack"].pop()
            if counter is not None:
                state["opaque"] -= 1
                if state["opaque"] == 0:
                    macs = int(counter(m, a, out))
                    state["by_module"][qname] += macs
                    state["by_type"][type(m).__name__] += macs

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        with torch.no_grad(), _Counter(state):
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    by_module = {k: v for k, v in state["by_module"].items() if v}
    by_type = {k: v for k, v in state["by_type"].items() if v}
    return MacsReport(total=sum(by_module.values()), params=count_params(model),
                      by_module=by_module, by_type=by_type)
