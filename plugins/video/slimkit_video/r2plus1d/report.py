"""The conversion report: what ``r2plus1d`` did to each Conv3d, and what it left alone."""
from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class LayerReport:
    """One replaced convolution.

    rank: the intermediate width M actually built (all groups); full_rank: where the split is exact;
    clamped: the requested M exceeded full_rank and was cut to it; rel_error: ||A - A_M||_F / ||A||_F of
    the kernel matrix (None for random init); energy_kept: sum of kept s^2 over all s^2 (None for random).
    """

    name: str
    kernel: tuple
    in_channels: int
    out_channels: int
    groups: int
    stride: tuple
    requested: str
    rank: int
    full_rank: int
    clamped: bool
    params_before: int
    params_after: int
    init: str
    rel_error: Optional[float] = None
    energy_kept: Optional[float] = None
    note: str = ""


@dataclass
class ConversionReport:
    """Per layer: chosen M, parameters before/after, relative reconstruction error; plus skipped convs."""

    variant: str
    init: str
    rank: str
    mid_activation: bool
    layers: list = field(default_factory=list)
    skipped: list = field(default_factory=list)   # (name, kernel, reason)
    notes: list = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0
    layout: str = "per-conv"
    solver: str = "gram"

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self.layers)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.layers)

    @property
    def exact_operator(self) -> bool:
        """True when each block computes the truncated-SVD kernel (r2plus1d, p3d-a, p3d-c with init='svd'
        and no mid activation; layout='torchvision' in eval mode, through its +/- pairs)."""
        if self.init != "svd" or self.variant == "p3d-b":
            return False
        return self.layout == "torchvision" or not self.mid_activation

    def layer(self, name: str) -> LayerReport:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"variant": self.variant, "init": self.init, "rank": self.rank,
                "mid_activation": self.mid_activation, "layout": self.layout, "solver": self.solver,
                "exact_operator": self.exact_operator,
                "params_before": self.params_before, "params_after": self.params_after,
                "model_params_before": self.model_params_before, "model_params_after": self.model_params_after,
                "layers": [asdict(r) for r in self.layers],
                "skipped": [{"name": n, "kernel": k, "reason": why} for n, k, why in self.skipped],
                "notes": list(self.notes)}

    def __str__(self) -> str:
        head = (f"r2plus1d conversion: variant={self.variant} init={self.init} rank={self.rank} "
                f"mid_activation={self.mid_activation} layout={self.layout} solver={self.solver}")
        rows = [head, f"{'layer':32s} {'kernel':9s} {'in':>5s} {'out':>5s} {'M':>5s} {'full':>5s} "
                      f"{'params':>9s} {'->':>9s} {'rel.err':>8s}"]
        for r in self.layers:
            err = "-" if r.rel_error is None else f"{r.rel_error:.4f}"
            k = "x".join(map(str, r.kernel))
            rows.append(f"{r.name[:32]:32s} {k:9s} {r.in_channels:5d} {r.out_channels:5d} {r.rank:5d}"
                        f"{'*' if r.clamped else ' '}{r.full_rank:5d} {r.params_before:9d} {r.params_after:9d} {err:>8s}")
        rows.append(f"{len(self.layers)} converted: {self.params_before} -> {self.params_after} parameters; "
                    f"model {self.model_params_before} -> {self.model_params_after}")
        if any(r.clamped for r in self.layers):
            rows.append("* requested M above full rank min(o*t, i*kh*kw): clamped to full rank")
        for n, k, why in self.skipped:
            rows.append(f"left alone: {n} (kernel {'x'.join(map(str, k))}): {why}")
        rows.extend(f"note: {n}" for n in self.notes)
        return "\n".join(rows)
