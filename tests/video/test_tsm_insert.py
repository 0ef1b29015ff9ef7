"""Inserting TSM into HF ResNet / MobileNetV2 (tiny configs) and custom models via target_modules."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit
from slimkit_video import temporal_shift
from slimkit_video.tsm import TemporalPool, TemporalShift, TSMConfig


def _resnet(layer_type="basic", depths=(1, 2, 1, 1), cls="ResNetModel"):
    import transformers
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=list(depths),
                                    layer_type=layer_type, num_labels=3)
    return getattr(transformers, cls)(cfg).eval()


def _mobilenet(cls="MobileNetV2ForImageClassification"):
    import transformers
    cfg = transformers.MobileNetV2Config(depth_multiplier=0.35, image_size=32, num_labels=3)
    model = getattr(transformers, cls)(cfg).eval()
    with torch.no_grad():  # HF's random init makes activations vanish (~1e-26); use He init
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
    return model


def _shifts(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, TemporalShift)}


def _depends_on_other_frames(model, n_segment=4):
    """Does frame 1's output change when only frame 0 changes?"""
    x = torch.randn(n_segment, 3, 32, 32)
    y = x.clone()
    y[0] += 1.0
    with torch.no_grad():
        a = model(x)[0] if not hasattr(model(x), "logits") else model(x).logits
        b = model(y)[0] if not hasattr(model(y), "logits") else model(y).logits
    return not torch.allclose(a[1], b[1])


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_resnet_blockres_shifts_only_the_residual_branch(layer_type):
    base = _resnet(layer_type)
    model = slimkit.apply(copy.deepcopy(base), "tsm", n_segment=4)
    shifts = _shifts(model)
    assert sorted(shifts) == [f"encoder.stages.{s}.layers.{i}.layer.0" for s, i in
                              [(0, 0), (1, 0), (1, 1), (2, 0), (3, 0)]]
    assert all(m.n_segment == 4 and m.shift_div == 8 and m.direction == "both" for m in shifts.values())
    assert isinstance(model.slimkit_configs[-1], TSMConfig)
    # block output == branch(shift(x)) + shortcut(x): the identity path is not shifted
    block, orig = model.encoder.stages[1].layers[1], base.encoder.stages[1].layers[1]
    x = torch.randn(8, 16, 5, 5)
    with torch.no_grad():
        want = orig.activation(orig.layer(temporal_shift(x, 4)) + orig.shortcut(x))
        assert torch.allclose(block(x), want, atol=1e-6)
    assert _depends_on_other_frames(model) and not _depends_on_other_frames(base)
    assert slimkit.measure.count_params(model) == slimkit.measure.count_params(base)


def test_resnet_block_place_shifts_identity_too():
    base = _resnet()
    model = slimkit.apply(copy.deepcopy(base), "tsm", n_segment=4, place="block", shift_div=4)
    shifts = _shifts(model)
    assert sorted(shifts) == [f"encoder.stages.{s}.layers.{i}" for s, i in [(0, 0), (1, 0), (1, 1), (2, 0), (3, 0)]]
    x = torch.randn(8, 16, 5, 5)
    with torch.no_grad():
        assert torch.allclose(model.encoder.stages[1].layers[1](x),
                              base.encoder.stages[1].layers[1](temporal_shift(x, 4, 4)), atol=1e-6)


def test_resnet101_shape_shifts_every_second_block():
    model = slimkit.apply(_resnet("bottleneck", depths=(2, 1, 23, 1)), "tsm", n_segment=2)
    stage2 = [n for n in _shifts(model) if n.startswith("encoder.stages.2.")]
    assert len(stage2) == 12 and "encoder.stages.2.layers.1.layer.0" not in stage2


def test_resnet_for_classification_with_temporal_pool():
    model = slimkit.apply(_resnet(cls="ResNetForImageClassification"), "tsm", n_segment=8, temporal_pool=True)
    assert isinstance(model.resnet.encoder.stages[1], TemporalPool)
    segs = {n.split(".")[3]: m.n_segment for n, m in _shifts(model).items()}
    assert segs == {"0": 8, "1": 4, "2": 4, "3": 4}
    with torch.no_grad():
        out = model(torch.randn(2 * 8, 3, 32, 32)).logits
    assert out.shape == (2 * 4, 3)  # T halved after the first stage


@pytest.mark.parametrize("cls", ["MobileNetV2Model", "MobileNetV2ForImageClassification"])
def test_mobilenet_v2_residual_blocks_only(cls):
    base = _mobilenet(cls)
    model = slimkit.apply(copy.deepcopy(base), "tsm", n_segment=4, direction="past")
    shifts = _shifts(model)
    prefix = "mobilenet_v2." if cls.endswith("Classification") else ""
    residual = [i for i, b in enumerate((base.mobilenet_v2 if prefix else base).layer) if b.use_residual]
    assert len(residual) == 10  # as the paper's online MobileNetV2: 10 shifted blocks
    assert sorted(shifts) == sorted(f"{prefix}layer.{i}.expand_1x1" for i in residual)
    assert all(m.direction == "past" for m in shifts.values())
    assert _depends_on_other_frames(model)
    # causal: the first frame's output ignores later frames
    x = torch.randn(4, 3, 32, 32)
    y = x.clone()
    y[3] += 1
    with torch.no_grad():
        ox, oy = model(x), model(y)
    ox = ox.logits if hasattr(ox, "logits") else ox.pooler_output
    oy = oy.logits if hasattr(oy, "logits") else oy.pooler_output
    assert torch.allclose(ox[:3], oy[:3], atol=1e-6) and not torch.allclose(ox[3], oy[3])


def test_mobilenet_v2_block_place():
    model = slimkit.apply(_mobilenet(), "tsm", n_segment=4, place="block")
    assert all(isinstance(model.mobilenet_v2.layer[i], TemporalShift)
               for i in (1, 3, 4, 6, 7, 8, 10, 11, 13, 14))
    assert not isinstance(model.mobilenet_v2.layer[0], TemporalShift)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("targets", [["body.0", "body.2"], r"body\.[02]"])
def test_custom_model_target_modules(targets):
    base = Tiny().eval()
    model = slimkit.apply(copy.deepcopy(base), "tsm", n_segment=2, target_modules=targets)
    names = sorted(_shifts(model))
    assert names == ["body.0", "body.2"]
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        h = base.stem(x)
        h = base.body[0](temporal_shift(h, 2))
        h = base.body[2](temporal_shift(base.body[1](h), 2))
        assert torch.allclose(model(x), base.head(h.mean((2, 3))), atol=1e-6)


def test_errors():
    with pytest.raises(slimkit.UnsupportedModelError, match="target_modules") as e:
        slimkit.apply(Tiny(), "tsm")
    assert "ResNetModel" in str(e.value) and "MobileNetV2Model" in str(e.value)
    with pytest.raises(slimkit.ConfigError, match="matches no module"):
        slimkit.apply(Tiny(), "tsm", target_modules=r"nothing\..*")
    with pytest.raises(slimkit.ConfigError, match="'body.9'"):
        slimkit.apply(Tiny(), "tsm", target_modules=["body.9"])
    with pytest.raises(slimkit.ConfigError, match="unknown option 'segments'"):
        slimkit.apply(Tiny(), "tsm", segments=8)
    with pytest.raises(slimkit.ConfigError, match="'block'"):
        slimkit.apply(Tiny(), "tsm", place="everywhere")
    with pytest.raises(slimkit.ConfigError, match="n_segment"):
        slimkit.apply(Tiny(), "tsm", n_segment=0)
    model = slimkit.apply(_resnet(), "tsm", n_segment=4)
    with pytest.raises(slimkit.ShapeError, match="not divisible by n_segment=4"):
        model(torch.randn(6, 3, 32, 32))
    with pytest.raises(slimkit.ConfigError, match="already has temporal shifts"):
        slimkit.apply(model, "tsm")


def test_config_round_trip(tmp_path):
    cfg = slimkit.make_config("tsm", n_segment=16, direction="past", target_modules=["a.b"], place="block")
    cfg.save_pretrained(tmp_path)
    back = slimkit.load_config(tmp_path)
    assert back == cfg and isinstance(back, TSMConfig)
    assert slimkit.load_config(cfg.to_dict()) == cfg


def test_save_from_pretrained_round_trip(tmp_path):
    model = slimkit.apply(_mobilenet(), "tsm", n_segment=4, temporal_pool=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    slimkit.save_pretrained(model, tmp_path)
    restored = slimkit.from_pretrained(_mobilenet(), tmp_path)
    assert sorted(_shifts(restored)) == sorted(_shifts(model))
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored(x).logits, model(x).logits)


def test_inplace_inference_matches_copying_path_on_hf_models(monkeypatch):
    import slimkit_video.tsm.modules as modules

    monkeypatch.setattr(modules, "INPLACE_MIN_NUMEL", 0)  # tiny models: force the in-place path
    for base in (_resnet("bottleneck"), _mobilenet()):
        model = slimkit.apply(base, "tsm", n_segment=4).eval()
        assert all(m.inplace for m in _shifts(model).values())  # HF families: inference shifts in place
        x = torch.randn(8, 3, 32, 32)
        x0 = x.clone()
        with torch.inference_mode():
            fast = model(x)
        slow = model(x)  # grad enabled: copying path
        fast = fast.logits if hasattr(fast, "logits") else fast.last_hidden_state
        slow = slow.logits if hasattr(slow, "logits") else slow.last_hidden_state
        assert torch.equal(fast, slow.detach()) and torch.equal(x, x0)
    custom = slimkit.apply(Tiny(), "tsm", n_segment=2, target_modules=["body.0"])
    assert not custom.body[0].inplace  # unknown modules might modify their input: always copy


def test_onnx_export_matches_pytorch(tmp_path, monkeypatch):
    import numpy as np
    import onnxruntime as ort

    import slimkit_video.tsm.modules as modules
    from slimkit_video import VideoClassifier

    monkeypatch.setattr(modules, "INPLACE_MIN_NUMEL", 0)  # the in-place path must switch itself off
    clf = slimkit.apply(VideoClassifier(_resnet(), n_segment=4, num_classes=2), "tsm", n_segment=4).eval()
    x = torch.randn(1, 4, 3, 32, 32)
    torch.onnx.export(clf, (x,), str(tmp_path / "tsm.onnx"), dynamo=False)
    sess = ort.InferenceSession(str(tmp_path / "tsm.onnx"))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = clf(x).numpy()
    assert np.abs(got - want).max() < 1e-4
