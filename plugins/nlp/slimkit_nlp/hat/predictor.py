"""Latency predictor: an MLP on HAT's architecture features, plus a FLOPs-based baseline.

Features (``SubConfig.features``) are divided by the space maxima; the target is latency
in ms divided by the training mean. MLP ``n -> hidden x layers -> 1`` with ReLU, Adam, MSE
(HAT: 10 -> 400 x 4 -> 1). ``LatencyPredictor.save(path)`` writes one ``.pt`` file holding
the weights, the normalisation and the space; ``LatencyPredictor.load(path)`` restores it.

The predictor is a ``torch.nn.Module`` whose state dict holds the MLP (``net.*``) and the
normalisation (``feature_scale``: the divisor of each feature, ``latency_scale``: ms per output
unit), so ``slimkit.save_pretrained`` / ``from_pretrained`` keep both (HAT's released predictors,
brought in by ``slimkit convert hat-predictor``, use their own constants, not the space maxima).
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from torch import nn

from slimkit.errors import ConfigError

from .space import HatSpace, SubConfig


def _space_scale(space: HatSpace) -> list[float]:
    dec = [max(space.decoder_embed_choices), max(space.decoder_layer_choices), max(space.decoder_ffn_choices),
           max(space.decoder_head_choices)]
    if not space.is_encdec:
        return [float(x) for x in dec]
    enc = [max(space.encoder_embed_choices), max(space.encoder_layer_choices), max(space.encoder_ffn_choices),
           max(space.encoder_head_choices)]
    return [float(x) for x in enc + dec + [max(space.ende_head_choices), max(space.ende_span_choices)]]


class LatencyPredictor(nn.Module):
    """MLP latency predictor for one design space. ``predict(sub or [subs]) -> ms``.

    ``scale`` (list, one divisor per feature; default the space maxima) and ``y_mean`` (ms per output
    unit; set by ``fit``) are stored as the float64 buffers ``feature_scale`` and ``latency_scale``.
    """

    def __init__(self, space: HatSpace, hidden: int = 400, layers: int = 4, scale: list | None = None,
                 y_mean: float = 1.0):
        super().__init__()
        self.space = space
        self.hidden, self.layers = hidden, layers
        scale = list(scale) if scale is not None else _space_scale(space)
        n = len(scale)
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(n if i == 0 else hidden, hidden), nn.ReLU()]
        mods.append(nn.Linear(hidden if layers else n, 1))
        self.net = nn.Sequential(*mods)
        self.register_buffer("feature_scale", torch.tensor(scale, dtype=torch.float64))
        self.register_buffer("latency_scale", torch.tensor([float(y_mean)], dtype=torch.float64))

    @property
    def scale(self) -> list[float]:
        """The divisor of each feature (HAT: ``feature_norm``)."""
        return self.feature_scale.tolist()

    @scale.setter
    def scale(self, value) -> None:
        if len(value) != self.feature_scale.numel():
            raise ConfigError(f"the latency predictor takes {self.feature_scale.numel()} features, so it needs "
                              f"{self.feature_scale.numel()} feature scales, got {len(value)}; pass one per feature")
        with torch.no_grad():
            self.feature_scale.copy_(torch.tensor(list(value), dtype=torch.float64))

    @property
    def y_mean(self) -> float:
        """Milliseconds per unit of the MLP's output (HAT: ``lat_norm``)."""
        return float(self.latency_scale[0])

    @y_mean.setter
    def y_mean(self, value: float) -> None:
        with torch.no_grad():
            self.latency_scale.fill_(float(value))

    def _x(self, subs: list[SubConfig]) -> torch.Tensor:
        return torch.tensor([[f / s for f, s in zip(sub.features(), self.scale)] for sub in subs],
                            dtype=torch.float32)

    def fit(self, subs: list[SubConfig], latencies: list[float], epochs: int = 1000, lr: float = 1e-3,
            weight_decay: float = 0.0, seed: int = 0) -> "LatencyPredictor":
        """Full-batch Adam on MSE of normalised latency."""
        if len(subs) < 2:
            raise ConfigError("the latency predictor needs at least 2 measured configurations; measure more with `slimkit hat measure`")
        torch.manual_seed(seed)
        for m in self.net:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        x = self._x(subs)
        self.y_mean = float(sum(latencies) / len(latencies))
        y = torch.tensor(latencies, dtype=torch.float32)[:, None] / self.y_mean
        opt = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        self.net.train()
        for _ in range(epochs):
            opt.zero_grad()
            loss = nn.functional.mse_loss(self.net(x), y)
            loss.backward()
            opt.step()
            sched.step()
        self.net.eval()
        return self

    @torch.no_grad()
    def predict(self, subs):
        single = isinstance(subs, SubConfig)
        subs = [subs] if single else list(subs)
        out = (self.net(self._x(subs))[:, 0] * self.y_mean).tolist()
        return out[0] if single else out

    def save(self, path: str | Path) -> Path:
        import io

        from slimkit.io import atomic_write_bytes

        buf = io.BytesIO()    # loaded back with weights_only=True: tensors and plain values only
        torch.save({"format": "slimkit-hat-predictor", "version": 1, "space": self.space.to_dict(),
                    "hidden": self.hidden, "layers": self.layers, "y_mean": self.y_mean, "scale": self.scale,
                    "state_dict": self.net.state_dict()}, buf)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "LatencyPredictor":
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"no latency predictor at {str(p)!r}; train one with `slimkit hat fit-predictor`")
        try:
            data = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # not a torch file at all
            data = None
        if not isinstance(data, dict) or data.get("format") != "slimkit-hat-predictor":
            raise ConfigError(f"{str(p)!r} is not a slimkit HAT latency predictor; train one with `slimkit hat fit-predictor`")
        pred = cls(HatSpace.from_dict(data["space"]), data["hidden"], data["layers"], scale=data.get("scale"),
                   y_mean=data["y_mean"])
        pred.net.load_state_dict(data["state_dict"])
        return pred.eval()


class FlopsLinearFit:
    """Baseline: latency = a * MACs + b (least squares) on the analytic Mult-Adds of a run."""

    def __init__(self, space: HatSpace, src_len: int, steps: int):
        self.space, self.src_len, self.steps = space, src_len, steps
        self.a, self.b = 0.0, 0.0

    def _macs(self, subs):
        from .latency import analytic_macs
        return [analytic_macs(self.space, s, self.src_len, self.steps) for s in subs]

    def fit(self, subs, latencies) -> "FlopsLinearFit":
        x = self._macs(subs)
        mx, my = sum(x) / len(x), sum(latencies) / len(latencies)
        var = sum((a - mx) ** 2 for a in x) or 1.0
        self.a = sum((a - mx) * (b - my) for a, b in zip(x, latencies)) / var
        self.b = my - self.a * mx
        return self

    def predict(self, subs):
        return [self.a * m + self.b for m in self._macs(subs)]


# ------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------
def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall tau-b between two lists (O(n^2), fine for a few thousand points)."""
    n = len(a)
    conc = disc = ties_a = ties_b = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))
    return (conc - disc) / denom if denom else 0.0


def regression_report(pred: list[float], true: list[float]) -> dict:
    """RMSE (ms), MAPE (%) and Kendall tau of predictions against measurements."""
    n = len(true)
    rmse = math.sqrt(sum((p - t) ** 2 for p, t in zip(pred, true)) / n)
    mape = 100.0 * sum(abs(p - t) / abs(t) for p, t in zip(pred, true)) / n
    return {"rmse_ms": rmse, "mape_pct": mape, "kendall_tau": kendall_tau(pred, true), "n": n}


def split_rows(rows: list[dict], holdout: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    k = max(1, int(round(len(rows) * holdout)))
    held = set(idx[:k])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def fit_and_evaluate(space: HatSpace, rows: list[dict], src_len: int, steps: int, holdout: float = 0.2,
                     seed: int = 0, epochs: int = 1000, hidden: int = 400, layers: int = 4):
    """Train the MLP and the FLOPs fit on the training split; report both on the held-out split.

    Returns ``(predictor, report)`` with ``report = {"mlp": {...}, "flops_linear": {...}}``."""
    train, test = split_rows(rows, holdout, seed)
    subs, lat = [r["sub"] for r in train], [r["latency_ms"] for r in train]
    pred = LatencyPredictor(space, hidden, layers).fit(subs, lat, epochs=epochs, seed=seed)
    flops = FlopsLinearFit(space, src_len, steps).fit(subs, lat)
    tsubs, tlat = [r["sub"] for r in test], [r["latency_ms"] for r in test]
    report = {"n_train": len(train), "n_test": len(test),
              "mlp": regression_report(pred.predict(tsubs), tlat),
              "flops_linear": regression_report(flops.predict(tsubs), tlat)}
    return pred, report
