"""tsm-repo: fixture checkpoints with the TSM repository's key names, shapes and fields (``module.base_model.``
torchvision ResNet / MobileNetV2 keys, ``.net`` inside shifted layers, ``new_fc``, optimizer state, the online
demo's bare MobileNetV2), written here from the published layouts; converted, and checked against a functional
forward pass of the same layout with the repository's shift (README: zeros and slices)."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

import slimkit
from slimkit.convert import ConversionError, load_converted
from slimkit_video.convert.tsm_repo import name_options

BN_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))


# -- the published layouts ---------------------------------------------------------------------------
def _bn(shapes: dict, prefix: str, c: int) -> None:
    shapes.update({f"{prefix}.{p}": ((c,) if p != "num_batches_tracked" else ()) for p in BN_PARTS})


def resnet_shapes(bottleneck: bool, depths, width: int, num_classes: int) -> dict:
    """torchvision ResNet (v1.5) keys -> shapes, ``fc`` included."""
    shapes = {"conv1.weight": (width, 3, 7, 7)}
    _bn(shapes, "bn1", width)
    exp, inplanes = (4 if bottleneck else 1), width
    for s, n in enumerate(depths):
        planes = width * 2 ** s
        for b in range(n):
            cin, p = (inplanes if b == 0 else planes * exp), f"layer{s + 1}.{b}"
            convs = ([(planes, cin, 1), (planes, planes, 3), (planes * exp, planes, 1)] if bottleneck
                     else [(planes, cin, 3), (planes, planes, 3)])
            for k, (o, i, ks) in enumerate(convs, 1):
                shapes[f"{p}.conv{k}.weight"] = (o, i, ks, ks)
                _bn(shapes, f"{p}.bn{k}", o)
            if b == 0 and (s > 0 or inplanes != planes * exp):
                shapes[f"{p}.downsample.0.weight"] = (planes * exp, cin, 1, 1)
                _bn(shapes, f"{p}.downsample.1", planes * exp)
        inplanes = planes * exp
    shapes.update({"fc.weight": (num_classes, inplanes), "fc.bias": (num_classes,)})
    return shapes


def mobilenet_v2_shapes(num_classes: int) -> dict:
    """The repository's MobileNetV2 (``archs/mobilenet_v2.py``, width 1.0) keys -> shapes."""
    shapes = {"features.0.0.weight": (32, 3, 3, 3)}
    _bn(shapes, "features.0.1", 32)
    idx, cin = 1, 32
    for t, c, n, _ in MBV2_SETTINGS:
        for _ in range(n):
            hidden, p = cin * t, f"features.{idx}.conv"
            layers = ([(hidden, 1, 3), (c, hidden, 1)] if t == 1
                      else [(hidden, cin, 1), (hidden, 1, 3), (c, hidden, 1)])
            for j, (o, i, ks) in enumerate(layers):
                shapes[f"{p}.{3 * j}.weight"] = (o, i, ks, ks)
                _bn(shapes, f"{p}.{3 * j + 1}", o)
            idx, cin = idx + 1, c
    shapes[f"features.{idx}.0.weight"] = (1280, cin, 1, 1)
    _bn(shapes, f"features.{idx}.1", 1280)
    shapes.update({"classifier.weight": (num_classes, 1280), "classifier.bias": (num_classes,)})
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
            out[k] = torch.rand(shape, generator=g) * 0.5 + 0.5
        else:
            fan = 1
            for d in shape[1:]:
                fan *= d
            out[k] = torch.randn(shape, generator=g) * (1.0 / fan) ** 0.5
    return out


# -- the repository's checkpoints ------------------------------------------------------------------------
def wrapped(key: str, family: str, place: str | None, tpool: bool, n_round: int) -> str:
    """The key as the repository's TSN saves it: ``.net`` inside TemporalShift / TemporalPool wrappers."""
    parts = key.split(".")
    if family == "resnet" and parts[0].startswith("layer") and len(parts) > 2:
        block = int(parts[1])
        if place == "blockres" and parts[2] == "conv1" and block % n_round == 0:
            parts.insert(3, "net")
        elif place == "block":
            parts.insert(2, "net")
        if tpool and parts[0] == "layer2":
            parts.insert(1, "net")
    if family == "mobilenet_v2" and place and parts[0] == "features" and parts[2:4] == ["conv", "0"]:
        if int(parts[1]) in MBV2_RESIDUAL:
            parts.insert(4, "net")
    return ".".join(parts)


MBV2_RESIDUAL = {3, 5, 6, 8, 9, 10, 12, 13, 15, 16}


def tsn_checkpoint(plain: dict, family: str, place: str | None, tpool: bool = False, head: str = "new_fc",
                   arch: str = "resnet50") -> dict:
    """``{"epoch", "arch", "state_dict", "optimizer", "best_prec1"}`` as ``main.py`` saves it (DataParallel keys)."""
    stage3 = sum(1 for k in plain if k.startswith("layer3.") and k.endswith(".conv1.weight"))
    n_round = 2 if family == "resnet" and stage3 >= 23 else 1
    classifier = "fc" if family == "resnet" else "classifier"
    sd = {}
    for k, v in plain.items():
        if k.startswith(classifier + "."):
            leaf = k.split(".")[1]
            sd[f"module.new_fc.{leaf}" if head == "new_fc" else f"module.base_model.{k}"] = v
        else:
            sd["module.base_model." + wrapped(k, family, place, tpool, n_round)] = v
    momentum = {i: {"momentum_buffer": torch.zeros_like(v, dtype=torch.float32)}
                for i, v in enumerate(t for k, t in plain.items() if not k.endswith(("running_mean", "running_var",
                                                                                     "num_batches_tracked")))}
    return {"epoch": 50, "arch": arch, "state_dict": sd, "best_prec1": 71.2,
            "optimizer": {"state": momentum, "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": list(momentum)}]}}


# -- the repository's forward pass, functionally ------------------------------------------------------------
def shift(x: torch.Tensor, n_segment: int, fold_div: int, direction: str = "both") -> torch.Tensor:
    """``ops/temporal_shift.py`` (and, for ``past``, the online demo's buffer swap), on (N*T, C, H, W)."""
    nt, c, h, w = x.shape
    x = x.view(nt // n_segment, n_segment, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(x)
    if direction == "both":
        out[:, :-1, :fold] = x[:, 1:, :fold]
        out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]
        out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
    else:
        out[:, 1:, :fold] = x[:, :-1, :fold]
        out[:, :, fold:] = x[:, :, fold:]
    return out.view(nt, c, h, w)


def _bnf(sd, p, x):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, 1e-5)


def resnet_forward(sd: dict, x: torch.Tensor, t: int, bottleneck: bool, depths, place, shift_div,
                   tpool) -> torch.Tensor:
    """TSN(base_model=torchvision ResNet) with make_temporal_shift / make_temporal_pool; clips (N, T, C, H, W)."""
    n = x.shape[0]
    x = x.reshape(n * t, *x.shape[2:])
    x = F.max_pool2d(F.relu(_bnf(sd, "bn1", F.conv2d(x, sd["conv1.weight"], stride=2, padding=3))), 3, 2, 1)
    n_round = 2 if depths[2] >= 23 else 1
    seg = t
    for s, nb in enumerate(depths):
        if tpool and s == 1:
            v = x.view(n, seg, *x.shape[1:]).transpose(1, 2)
            v = F.max_pool3d(v, (3, 1, 1), (2, 1, 1), (1, 0, 0))
            x = v.transpose(1, 2).reshape(-1, *x.shape[1:])
            seg = t // 2
        for b in range(nb):
            p, stride = f"layer{s + 1}.{b}", (2 if s > 0 and b == 0 else 1)
            inp = shift(x, seg, shift_div) if place == "block" else x
            y = shift(inp, seg, shift_div) if place == "blockres" and b % n_round == 0 else inp
            convs = [(1, 0), (stride, 1), (1, 0)] if bottleneck else [(stride, 1), (1, 1)]
            for k, (st, pad) in enumerate(convs, 1):
                y = _bnf(sd, f"{p}.bn{k}", F.conv2d(y, sd[f"{p}.conv{k}.weight"], stride=st, padding=pad))
                y = F.relu(y) if k < len(convs) else y
            res = (_bnf(sd, f"{p}.downsample.1", F.conv2d(inp, sd[f"{p}.downsample.0.weight"], stride=stride))
                   if f"{p}.downsample.0.weight" in sd else inp)
            x = F.relu(y + res)
    feats = x.mean((2, 3))
    logits = F.linear(feats, sd["fc.weight"], sd["fc.bias"])
    return logits.view(n, -1, logits.shape[-1]).mean(1)


def mobilenet_v2_frames(sd: dict, x: torch.Tensor, shifted) -> torch.Tensor:
    """The repository's MobileNetV2 on frames (N*T, 3, H, W) -> logits (N*T, K); ``shifted(x)`` is applied to
    the input of each residual block's first conv."""
    x = F.relu6(_bnf(sd, "features.0.1", F.conv2d(x, sd["features.0.0.weight"], stride=2, padding=1)))
    idx, cin = 1, 32
    for t, c, n, s in MBV2_SETTINGS:
        for i in range(n):
            stride, p = (s if i == 0 else 1), f"features.{idx}.conv"
            res = stride == 1 and cin == c
            y = x
            if t == 1:
                seq = [(0, stride, 1, cin * t, True), (3, 1, 0, 1, False)]
            else:
                y = shifted(y) if res else y
                seq = [(0, 1, 0, 1, True), (3, stride, 1, cin * t, True), (6, 1, 0, 1, False)]
            for j, st, pad, groups, act in seq:
                y = _bnf(sd, f"{p}.{j + 1}", F.conv2d(y, sd[f"{p}.{j}.weight"], stride=st, padding=pad, groups=groups))
                y = F.relu6(y) if act else y
            x = x + y if res else y
            idx, cin = idx + 1, c
    x = F.relu6(_bnf(sd, f"features.{idx}.1", F.conv2d(x, sd[f"features.{idx}.0.weight"])))
    return F.linear(x.mean(3).mean(2), sd["classifier.weight"], sd["classifier.bias"])


def close(out: torch.Tensor, ref: torch.Tensor) -> bool:
    return (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


# -- tests --------------------------------------------------------------------------------------------
R50 = dict(bottleneck=True, depths=(3, 4, 6, 3), width=16)


@pytest.mark.parametrize("place,tpool", [("blockres", False), ("block", True)])
def test_resnet50_tsm_checkpoints_convert_completely_and_compute_the_same(place, tpool, tmp_path):
    plain = random_state(resnet_shapes(R50["bottleneck"], R50["depths"], R50["width"], 7))
    name = f"TSM_kinetics_RGB_resnet50_shift8_{place}{'_tpool' if tpool else ''}_avg_segment4_e50.pth"
    torch.save(tsn_checkpoint(plain, "resnet", place, tpool), tmp_path / name)
    report = slimkit.convert("tsm-repo", tmp_path / name, tmp_path / "out", quiet=True)
    weights = [k for k in report.mapped]
    assert len(weights) == len(plain) and not report.initialised
    assert all(k.startswith("state_dict.module.") for k in weights)
    assert all(why.startswith("training state") for why in report.unused.values())
    assert len(report.unused) == len([k for k in plain if k.endswith(("weight", "bias"))])   # momentum buffers
    assert report.fields == {"epoch": 50, "arch": "resnet50", "best_prec1": 71.2}
    opts = report.details["options"]
    assert (opts["place"], opts["temporal_pool"], opts["shift_div"], opts["n_segment"]) == (place, tpool, 8, 4)
    assert report.mapped["state_dict.module.new_fc.weight"] == ["head.weight"]
    model = load_converted(tmp_path / "out").eval()
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        ref = resnet_forward(plain, x, 4, True, R50["depths"], place, 8, tpool)
        assert close(model(x), ref)


def test_resnet101_shifts_every_second_block_and_tsn_heads_in_fc(tmp_path):
    depths = (3, 4, 23, 3)
    plain = random_state(resnet_shapes(True, depths, 8, 3), seed=1)
    name = "TSM_something_RGB_resnet101_shift4_blockres_avg_segment3_e45.pth"
    torch.save(tsn_checkpoint(plain, "resnet", "blockres", arch="resnet101"), tmp_path / name)
    report = slimkit.convert("tsm-repo", tmp_path / name, tmp_path / "out", quiet=True, n_segment=2)
    assert report.details["options"]["shift_div"] == 4 and report.details["options"]["n_segment"] == 2
    assert "n_segment=2 as given" in report.notes[1:] and "shift_div=4 from the file name" in report.notes
    shifted = [k for k in report.mapped if ".conv1.net." in k and ".layer3." in k]
    assert len(shifted) == 12                                     # blocks 0, 2, ..., 22 of 23
    model = load_converted(tmp_path / "out").eval()
    x = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        assert close(model(x), resnet_forward(plain, x, 2, True, depths, "blockres", 4, False))
    # a TSN (no shift) ResNet-18 trained with dropout 0 keeps its head in base_model.fc
    basic = random_state(resnet_shapes(False, (2, 2, 2, 2), 8, 4), seed=2)
    name = "TSM_kinetics_RGB_resnet18_avg_segment5_e50.pth"
    torch.save(tsn_checkpoint(basic, "resnet", None, head="fc", arch="resnet18"), tmp_path / name)
    report = slimkit.convert("tsm-repo", tmp_path / name, tmp_path / "tsn", quiet=True)
    assert report.mapped["state_dict.module.base_model.fc.weight"] == ["head.weight"]
    assert report.details["options"]["shift"] is False and report.details["options"]["n_segment"] == 5
    model = load_converted(tmp_path / "tsn").eval()
    x = torch.randn(2, 5, 3, 32, 32)
    with torch.no_grad():
        assert close(model(x), resnet_forward(basic, x, 5, False, (2, 2, 2, 2), None, 8, False))


def test_mobilenet_v2_tsm_checkpoint(tmp_path):
    plain = random_state(mobilenet_v2_shapes(6), seed=3)
    name = "TSM_kinetics_RGB_mobilenetv2_shift8_blockres_avg_segment4_e100_dense.pth"
    torch.save(tsn_checkpoint(plain, "mobilenet_v2", "blockres", arch="mobilenetv2"), tmp_path / name)
    report = slimkit.convert("tsm-repo", tmp_path / name, tmp_path / "out", quiet=True)
    assert len(report.mapped) == len(plain) and not report.initialised
    assert len([k for k in report.mapped if ".conv.0.net." in k]) == 10
    model = load_converted(tmp_path / "out").eval()
    x = torch.randn(1, 4, 3, 64, 64)
    with torch.no_grad():
        ref = mobilenet_v2_frames(plain, x.reshape(4, 3, 64, 64), lambda y: shift(y, 4, 8)).view(1, 4, -1).mean(1)
        assert close(model(x), ref)


def test_online_demo_checkpoint_runs_online_frame_by_frame(tmp_path):
    from slimkit_video import to_online

    plain = random_state(mobilenet_v2_shapes(27), seed=4)
    path = tmp_path / "mobilenetv2_jester_online.pth.tar"
    torch.save(plain, path)
    report = slimkit.convert("tsm-repo", path, tmp_path / "out", quiet=True, n_segment=3)
    opts = report.details["options"]
    assert (opts["direction"], opts["shift_div"], opts["place"]) == ("past", 8, "blockres")
    assert set(report.mapped) == set(plain) and not report.unused
    model = load_converted(tmp_path / "out").eval()
    stream = to_online(model)
    frames = torch.randn(3, 1, 3, 64, 64)
    with torch.no_grad():
        # the demo: each residual block swaps its first C // 8 channels for the previous frame's
        ref = mobilenet_v2_frames(plain, frames.reshape(3, 3, 64, 64), lambda y: shift(y, 3, 8, "past"))
        _, per_frame = model(frames.transpose(0, 1), return_per_frame=True)
        for t in range(3):
            step = stream.step(frames[t])
            assert close(step, ref[t:t + 1]) and close(per_frame[:, t], ref[t:t + 1])


def test_options_that_contradict_the_checkpoint_and_unsupported_checkpoints_are_refused(tmp_path):
    plain = random_state(resnet_shapes(False, (1, 1, 1, 1), 16, 3))
    name = "TSM_kinetics_RGB_resnet18_shift8_blockres_avg_segment4_e50.pth"
    torch.save(tsn_checkpoint(plain, "resnet", "blockres", arch="resnet18"), tmp_path / name)
    with pytest.raises(slimkit.ConfigError, match="place='block' contradicts the checkpoint"):
        slimkit.convert("tsm-repo", tmp_path / name, tmp_path / "a", quiet=True, place="block")
    with pytest.raises(slimkit.ConfigError, match="temporal_pool=True contradicts"):
        slimkit.convert("tsm-repo", tmp_path / name, tmp_path / "a", quiet=True, temporal_pool=True)
    ckpt = tsn_checkpoint(plain, "resnet", "blockres")
    ckpt["state_dict"]["module.base_model.layer2.0.nl.g.weight"] = torch.zeros(4, 4, 1, 1, 1)
    torch.save(ckpt, tmp_path / "nl.pth")
    with pytest.raises(ConversionError, match="non-local"):
        slimkit.convert("tsm-repo", tmp_path / "nl.pth", tmp_path / "b", quiet=True)
    torch.save(tsn_checkpoint(plain, "resnet", "blockres"), tmp_path / "TSM_kinetics_RGBDiff_resnet18_avg.pth")
    with pytest.raises(ConversionError, match="RGBDiff"):
        slimkit.convert("tsm-repo", tmp_path / "TSM_kinetics_RGBDiff_resnet18_avg.pth", tmp_path / "c", quiet=True)
    torch.save({"state_dict": {"module.base_model.inception_3a_1x1.weight": torch.zeros(2, 2, 1, 1),
                               "module.new_fc.weight": torch.zeros(3, 2), "module.new_fc.bias": torch.zeros(3)}},
               tmp_path / "bni.pth")
    with pytest.raises(ConversionError, match="BNInception"):
        slimkit.convert("tsm-repo", tmp_path / "bni.pth", tmp_path / "d", quiet=True)
    unsafe = tsn_checkpoint(plain, "resnet", "blockres")
    unsafe["args"] = argparse.Namespace(arch="resnet18")
    torch.save(unsafe, tmp_path / "unsafe.pth")
    with pytest.raises(ConversionError, match="needs arbitrary code to load"):
        slimkit.convert("tsm-repo", tmp_path / "unsafe.pth", tmp_path / "e", quiet=True)
    assert not any((tmp_path / d).exists() for d in "abcde")


def test_a_shift_placement_slimkit_cannot_build_is_refused(tmp_path):
    """ResNet-101 checkpoints shift every second block; one shifting every block does not match the rule."""
    plain = random_state(resnet_shapes(True, (1, 1, 23, 1), 8, 3))
    ckpt = tsn_checkpoint(plain, "resnet", "blockres")
    sd = ckpt["state_dict"]
    for k in [k for k in sd if ".layer3.1.conv1.weight" in k]:
        sd[k.replace(".conv1.weight", ".conv1.net.weight")] = sd.pop(k)
    torch.save(ckpt, tmp_path / "TSM_x_RGB_resnet101_shift8_blockres_avg_segment4_e1.pth")
    with pytest.raises(ConversionError, match="shifted differently from the checkpoint.*layer3.1.conv1.weight"):
        slimkit.convert("tsm-repo", tmp_path / "TSM_x_RGB_resnet101_shift8_blockres_avg_segment4_e1.pth",
                        tmp_path / "out", quiet=True)


def test_file_name_conventions():
    assert name_options("TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_dense_nl.pth") == {
        "shift_div": 8, "place": "blockres", "n_segment": 8, "modality": "RGB", "arch": "resnet50"}
    assert name_options("TSM_kinetics_Flow_resnet50_shift4_block_tpool_avg_segment16_e50.pth") == {
        "shift_div": 4, "place": "block", "n_segment": 16, "temporal_pool": True, "modality": "Flow",
        "arch": "resnet50"}
    assert name_options("mobilenetv2_jester_online.pth.tar") == {"direction": "past"}
