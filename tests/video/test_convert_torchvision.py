"""torchvision-r3d / torchvision-r2plus1d: fixture checkpoints with torchvision's key names and shapes
(written here from the published VideoResNet layout), converted and checked against a functional forward
pass of that layout; full-size parameter counts; layout='torchvision' of the r2plus1d technique."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

import slimkit
from slimkit.convert import ConversionError, load_converted
from slimkit_video.convert.torchvision_video import R2PLUS1D_RULES, R3D_RULES, slimkit_name
from slimkit_video.r2plus1d.svd import kernel_matrices, spectrum

BN_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def midplanes(inplanes: int, planes: int) -> int:
    """torchvision's BasicBlock middle width: one per block, from the block's input and output widths."""
    return (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)


def torchvision_shapes(kind: str, width: int = 64, layers=(2, 2, 2, 2), num_classes: int = 400,
                       in_channels: int = 3, stem_mid: int | None = None) -> dict:
    """Key -> shape of torchvision's ``VideoResNet`` state dict (BasicBlock; ``r3d`` or ``r2plus1d``)."""
    stem_mid = stem_mid if stem_mid is not None else 45 * width // 64
    shapes: dict = {}

    def bn(prefix, c):
        shapes.update({f"{prefix}.{p}": ((c,) if p != "num_batches_tracked" else ()) for p in BN_PARTS})

    if kind == "r3d":
        shapes["stem.0.weight"] = (width, in_channels, 3, 7, 7)
        bn("stem.1", width)
    else:
        shapes["stem.0.weight"] = (stem_mid, in_channels, 1, 7, 7)
        bn("stem.1", stem_mid)
        shapes["stem.3.weight"] = (width, stem_mid, 3, 1, 1)
        bn("stem.4", width)
    inplanes = width
    for s, n in enumerate(layers):
        planes = width * 2 ** s
        for b in range(n):
            cin = inplanes if b == 0 else planes
            mid = midplanes(cin, planes)
            for conv, ci in (("conv1", cin), ("conv2", planes)):
                p = f"layer{s + 1}.{b}.{conv}"
                if kind == "r3d":
                    shapes[f"{p}.0.weight"] = (planes, ci, 3, 3, 3)
                else:
                    shapes[f"{p}.0.0.weight"] = (mid, ci, 1, 3, 3)
                    bn(f"{p}.0.1", mid)
                    shapes[f"{p}.0.3.weight"] = (planes, mid, 3, 1, 1)
                bn(f"{p}.1", planes)
            if b == 0 and (s > 0 or inplanes != planes):
                shapes[f"layer{s + 1}.0.downsample.0.weight"] = (planes, cin, 1, 1, 1)
                bn(f"layer{s + 1}.0.downsample.1", planes)
        inplanes = planes
    shapes["fc.weight"] = (num_classes, inplanes)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def random_state(shapes: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(100)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(("running_mean", ".bias")):
            out[k] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            fan = 1
            for d in shape[1:]:
                fan *= d
            out[k] = torch.randn(shape, generator=g) * (2.0 / fan) ** 0.5
    return out


def reference_forward(sd: dict, x: torch.Tensor, kind: str, layers) -> torch.Tensor:
    """torchvision's VideoResNet forward (eval mode), written from the published layout with torch.nn.functional."""
    def bn(y, p):
        return F.batch_norm(y, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                            False, 0.0, 1e-5)

    def conv(y, p, stride):
        if kind == "r3d":
            return F.conv3d(y, sd[f"{p}.0.weight"], stride=stride, padding=1)
        y = F.relu(bn(F.conv3d(y, sd[f"{p}.0.0.weight"], stride=(1, stride, stride), padding=(0, 1, 1)), f"{p}.0.1"))
        return F.conv3d(y, sd[f"{p}.0.3.weight"], stride=(stride, 1, 1), padding=(1, 0, 0))

    if kind == "r3d":
        x = F.relu(bn(F.conv3d(x, sd["stem.0.weight"], stride=(1, 2, 2), padding=(1, 3, 3)), "stem.1"))
    else:
        x = F.relu(bn(F.conv3d(x, sd["stem.0.weight"], stride=(1, 2, 2), padding=(0, 3, 3)), "stem.1"))
        x = F.relu(bn(F.conv3d(x, sd["stem.3.weight"], padding=(1, 0, 0)), "stem.4"))
    for s, n in enumerate(layers):
        for b in range(n):
            p, stride = f"layer{s + 1}.{b}", (2 if s > 0 and b == 0 else 1)
            out = F.relu(bn(conv(x, f"{p}.conv1", stride), f"{p}.conv1.1"))
            out = bn(conv(out, f"{p}.conv2", 1), f"{p}.conv2.1")
            ds = f"{p}.downsample"
            res = bn(F.conv3d(x, sd[f"{ds}.0.weight"], stride=stride), f"{ds}.1") if f"{ds}.0.weight" in sd else x
            x = F.relu(out + res)
    return F.linear(x.mean((2, 3, 4)), sd["fc.weight"], sd["fc.bias"])


TINY = dict(width=8, layers=(1, 1, 1, 1), num_classes=5)


@pytest.mark.parametrize("kind", ["r3d", "r2plus1d"])
def test_checkpoint_converts_completely_and_computes_the_same(kind, tmp_path):
    sd = random_state(torchvision_shapes(kind, **TINY))
    path = tmp_path / f"{kind}_18.pth"
    torch.save(sd, path)
    report = slimkit.convert(f"torchvision-{kind}", path, tmp_path / "out", quiet=True)
    assert set(report.mapped) == set(sd) and not report.unused and not report.initialised
    assert all(len(t) == 1 for t in report.mapped.values())
    model = load_converted(tmp_path / "out").eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ref = reference_forward(sd, x, kind, TINY["layers"])
        out = model(x)
    assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    assert type(model).__name__ == "VideoResNet" and model.depth == 10 and model.width == 8


def test_training_script_checkpoints_ema_weights_and_their_leftovers(tmp_path):
    shapes = torchvision_shapes("r3d", **TINY)
    sd, ema = random_state(shapes, 0), random_state(shapes, 1)
    ckpt = {"model": sd, "model_ema": {**{f"module.{k}": v for k, v in ema.items()}, "n_averaged": torch.tensor(5)},
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]},
            "lr_scheduler": {"last_epoch": 3}, "epoch": 3, "args": argparse.Namespace(model="r3d_18", lr=0.1)}
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    report = slimkit.convert("torchvision-r3d", path, tmp_path / "out", quiet=True)
    assert set(report.mapped) == {f"model.{k}" for k in sd}
    assert "optimizer.state.0.momentum_buffer" in report.unused and "model_ema.module.fc.weight" in report.unused
    assert "training state" in report.unused["model_ema.n_averaged"] and report.fields["epoch"] == 3
    back = load_converted(tmp_path / "out")
    assert torch.equal(back.fc.weight, sd["fc.weight"])
    slimkit.convert("torchvision-r3d", path, tmp_path / "ema", quiet=True, prefix="model_ema.module.")
    assert torch.equal(load_converted(tmp_path / "ema").fc.weight, ema["fc.weight"])


def test_other_layouts_are_refused_with_the_right_kind(tmp_path):
    r21 = tmp_path / "r21.pth"
    torch.save(random_state(torchvision_shapes("r2plus1d", **TINY)), r21)
    with pytest.raises(ConversionError, match="kind 'torchvision-r2plus1d'"):
        slimkit.convert("torchvision-r3d", r21, tmp_path / "a", quiet=True)
    r3 = tmp_path / "r3.pth"
    sd = random_state(torchvision_shapes("r3d", **TINY))
    torch.save(sd, r3)
    with pytest.raises(ConversionError, match="kind 'torchvision-r3d'"):
        slimkit.convert("torchvision-r2plus1d", r3, tmp_path / "b", quiet=True)
    mc3 = dict(sd)
    mc3["layer2.0.conv1.0.weight"] = mc3["layer2.0.conv1.0.weight"][:, :, :1].contiguous()
    torch.save(mc3, tmp_path / "mc3.pth")
    with pytest.raises(ConversionError, match="mc3_18"):
        slimkit.convert("torchvision-r3d", tmp_path / "mc3.pth", tmp_path / "c", quiet=True)
    odd = random_state(torchvision_shapes("r3d", width=8, layers=(1, 2, 1, 1), num_classes=5))
    torch.save(odd, tmp_path / "odd.pth")
    with pytest.raises(ConversionError, match=r"\(1, 2, 1, 1\) blocks"):
        slimkit.convert("torchvision-r3d", tmp_path / "odd.pth", tmp_path / "d", quiet=True)
    with pytest.raises(ConversionError, match="has no 'nope.stem.0.weight'"):
        slimkit.convert("torchvision-r3d", r3, tmp_path / "e", quiet=True, prefix="nope")


def parameters(shapes: dict) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    total = 0
    for k, shape in shapes.items():
        if not k.endswith(buffers):
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


@pytest.fixture
def no_init(monkeypatch):
    """Full-size models without drawing their random weights (only shapes and counts are checked)."""
    for name in ("kaiming_normal_", "kaiming_uniform_", "normal_", "uniform_", "ones_", "zeros_"):
        monkeypatch.setattr(torch.nn.init, name, lambda t, *a, **k: t)


def test_full_size_layouts_parameter_counts_and_complete_key_maps(no_init):
    """No weights needed: the published r2plus1d_18 layout has 31,505,325 parameters (400 classes), and so
    have slimkit's r2plus1d-18 per-block builder and R3D-18 converted with layout='torchvision'."""
    tv_r21, tv_r3d = torchvision_shapes("r2plus1d"), torchvision_shapes("r3d")
    assert parameters(tv_r21) == 31_505_325 and parameters(tv_r3d) == 33_371_472
    r21 = slimkit.build_model("r2plus1d-18", mid_width="per-block")
    r3d = slimkit.build_model("r3d-18")
    assert sum(p.numel() for p in r21.parameters()) == 31_505_325
    for shapes, model, rules in ((tv_r21, r21, R2PLUS1D_RULES), (tv_r3d, r3d, R3D_RULES)):
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        mapped = {slimkit_name(k, rules): tuple(s) for k, s in shapes.items()}
        assert mapped == own                          # every key maps, onto every tensor, shapes equal
    converted = slimkit.apply(r3d, "r2plus1d", layout="torchvision", init="random")
    assert sum(p.numel() for p in converted.parameters()) == 31_505_325
    assert {k: tuple(v.shape) for k, v in converted.state_dict().items()} == {
        k: tuple(v.shape) for k, v in r21.state_dict().items()}


def test_layout_torchvision_on_a_converted_r3d_is_the_rank_m_half_svd_in_eval(tmp_path):
    sd = random_state(torchvision_shapes("r3d", **TINY))
    torch.save(sd, tmp_path / "r3d.pth")
    slimkit.convert("torchvision-r3d", tmp_path / "r3d.pth", tmp_path / "out", quiet=True)
    r3d = load_converted(tmp_path / "out").eval()
    conv = r3d.layer2[0].conv2
    model = slimkit.apply(r3d, "r2plus1d", layout="torchvision").eval()
    rep = model.r2plus1d_report
    assert rep.layout == "torchvision" and rep.exact_operator and rep.mid_activation
    row = rep.layer("layer2.0.conv2")
    assert row.rank == midplanes(8, 16) == rep.layer("layer2.0.conv1").rank     # one width per block
    assert rep.layer("stem.0").rank == 45 * 8 // 64 and "torchvision" in row.requested
    k = row.rank // 2
    f = spectrum(conv.weight, 1, "exact").factors(k)
    assert abs(row.rel_error - f.rel_error) <= 1e-4 * f.rel_error
    a_k = (f.temporal @ f.spatial)[0]
    w = a_k.reshape(16, 3, 16, 3, 3).permute(0, 2, 1, 3, 4).float()
    x = torch.randn(2, 16, 4, 8, 8)
    with torch.no_grad():
        ref = F.conv3d(x, w, padding=1)
        out = model.layer2[0].conv2(x)
    assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item() + 1e-6
    assert kernel_matrices(w, 1).shape == (1, 48, 144)
