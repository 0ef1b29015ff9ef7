"""r2plus1d conversion: matched widths, the report, refusals, config, builders and P3D variants."""
import warnings

import pytest
import torch
from torch import nn

import slimkit
from slimkit_video.r2plus1d import (
    Conv2Plus1D,
    P3DParallel,
    P3DResidual,
    R2Plus1DConfig,
    apply_r2plus1d,
    conversion_report,
    matched_rank,
)
from slimkit_video.r2plus1d.models import conv_weight_count


def formula(cin, cout, t, kh, kw):
    return (t * kh * kw * cin * cout) // (kh * kw * cin + t * cout)


@pytest.mark.parametrize("cin,cout,t,k", [(64, 64, 3, 3), (64, 128, 3, 3), (3, 64, 3, 7), (17, 5, 5, 3), (256, 512, 3, 3)])
def test_matched_rank_follows_the_formula_and_keeps_the_parameter_count(cin, cout, t, k):
    m = matched_rank(cin, cout, t, k, k)
    assert m == int(t * k * k * cin * cout / (k * k * cin + t * cout))
    assert m == formula(cin, cout, t, k, k) and m < min(cout * t, cin * k * k)
    conv = nn.Conv3d(cin, cout, (t, k, k), padding=(t // 2, k // 2, k // 2), bias=False)
    block = apply_r2plus1d(conv, R2Plus1DConfig(rank="match", init="random"))
    assert block.mid_channels == m
    after = sum(p.numel() for p in block.parameters())
    assert after == m * cin * k * k + cout * m * t
    before = cout * cin * t * k * k
    assert after <= before and before - after < k * k * cin + t * cout   # floor loses less than one unit of M


def test_matched_widths_are_per_conv_in_a_converted_network():
    model = slimkit.build_model("r3d-18", depth=18, width=8, num_classes=4)
    before = sum(p.numel() for p in model.parameters())
    slimkit.apply(model, "r2plus1d")
    rep = conversion_report(model)
    by = {r.name: r for r in rep.layers}
    # first block of stage 2: conv1 8->16 and conv2 16->16 get different M (torchvision would reuse one)
    assert by["layer2.0.conv1"].rank == formula(8, 16, 3, 3, 3)
    assert by["layer2.0.conv2"].rank == formula(16, 16, 3, 3, 3) != by["layer2.0.conv1"].rank
    assert by["stem.0"].rank == formula(3, 8, 3, 7, 7)
    assert abs(rep.model_params_after / before - 1) < 0.01
    # torchvision-style per-block widths fall short of the 3D count; per-conv ones do not
    r3d = conv_weight_count(slimkit.build_model("r3d-18", width=16))
    per_conv = conv_weight_count(slimkit.build_model("r2plus1d-18", width=16))
    per_block = conv_weight_count(slimkit.build_model("r2plus1d-18", width=16, mid_width="per-block"))
    assert abs(per_conv / r3d - 1) < 0.01 < abs(per_block / r3d - 1)


def test_report_lists_each_layer_and_what_was_left_alone():
    model = nn.Sequential(nn.Conv3d(3, 16, (3, 5, 5), padding=(1, 2, 2)), nn.ReLU(),
                          nn.Conv3d(16, 8, (1, 3, 3), padding=(0, 1, 1)),          # spatial only
                          nn.Conv3d(8, 8, (3, 1, 1), padding=(1, 0, 0)),          # temporal only
                          nn.Conv3d(8, 6, 1),                                     # pointwise
                          nn.Conv3d(6, 6, 3, padding=1))
    slimkit.apply(model, "r2plus1d", rank=40)
    rep = model.r2plus1d_report
    assert [r.name for r in rep.layers] == ["0", "5"]
    assert {n for n, _, _ in rep.skipped} == {"2", "3", "4"}
    assert "temporal kernel 1" in dict((n, w) for n, _, w in rep.skipped)["2"]
    first, last = rep.layers
    assert first.rank == 40 and not first.clamped and first.full_rank == min(16 * 3, 3 * 25)
    assert last.clamped and last.rank == last.full_rank == min(6 * 3, 6 * 9)   # 40 > 18: clamped
    assert last.rel_error < 1e-6 and 0 < first.rel_error < 1
    assert first.params_before == 16 * 3 * 75 + 16 and first.params_after == 40 * 3 * 25 + 16 * 40 * 3 + 16
    text = str(rep)
    assert "clamped" in text and "left alone: 4" in text and "rel.err" in text
    d = rep.to_dict()
    assert d["layers"][0]["rank"] == 40 and d["skipped"][0]["name"] == "2" and d["exact_operator"]
    # energy fraction: the smallest M keeping that much of sum(s^2)
    m2 = nn.Sequential(nn.Conv3d(4, 4, 3, padding=1))
    slimkit.apply(m2, "r2plus1d", rank=0.9)
    row = m2.r2plus1d_report.layers[0]
    assert row.energy_kept >= 0.9 - 1e-9 and row.requested == "energy 0.9"


def test_refuses_models_and_convs_it_cannot_convert():
    with pytest.raises(slimkit.UnsupportedModelError, match="no nn.Conv3d with temporal kernel > 1"):
        slimkit.apply(nn.Sequential(nn.Conv2d(3, 4, 3)), "r2plus1d")
    with pytest.raises(slimkit.UnsupportedModelError, match="spatial kernel 1x1"):
        slimkit.apply(nn.Sequential(nn.Conv3d(3, 4, (3, 1, 1))), "r2plus1d")
    with pytest.raises(slimkit.UnsupportedModelError, match="lazy Conv3d"):
        slimkit.apply(nn.Sequential(nn.LazyConv3d(4, 3)), "r2plus1d")
    with pytest.raises(slimkit.UnsupportedModelError, match="p3d-b.*centred padding"):
        slimkit.apply(nn.Sequential(nn.Conv3d(3, 4, 3, padding=0)), "r2plus1d", variant="p3d-b", init="random")
    with pytest.raises(slimkit.UnsupportedModelError, match="p3d-c.*centred temporal padding"):
        slimkit.apply(nn.Sequential(nn.Conv3d(3, 4, 3, padding=(0, 1, 1))), "r2plus1d", variant="p3d-c")
    with pytest.raises(slimkit.ConfigError, match="energy fraction"):
        slimkit.apply(nn.Conv3d(3, 4, 3), "r2plus1d", rank=1.5)
    with pytest.raises(slimkit.ConfigError, match="at least 1"):
        slimkit.apply(nn.Conv3d(3, 4, 3), "r2plus1d", rank=0)
    with pytest.raises(slimkit.ConfigError, match="mid_activation"):
        slimkit.make_config("r2plus1d", variant="p3d-b", mid_activation=True)
    with pytest.raises(slimkit.ConfigError, match="variant"):
        slimkit.make_config("r2plus1d", variant="p3d-d")


def test_config_round_trip(tmp_path):
    for opts in ({}, {"rank": 0.95, "variant": "p3d-c", "mid_activation": True, "exclude": ["stem.*"]},
                 {"rank": 1.0}, {"rank": 12, "init": "random"}, {"rank": "full"}):
        cfg = slimkit.make_config("r2plus1d", **opts)
        cfg.save_pretrained(tmp_path)
        back = slimkit.load_config(tmp_path)
        assert back == cfg and type(back.rank) is type(cfg.rank)
    assert slimkit.make_config("r2plus1d", rank=1).rank == 1 and isinstance(slimkit.make_config("r2plus1d", rank=1.0).rank, float)


def test_apply_on_builder_model_save_and_restore(tmp_path):
    model = slimkit.build_model("r3d-18", depth=10, width=4, num_classes=3, clip_len=4).eval()
    x = model.example_input(2, 32)
    ref = model(x)
    conv = slimkit.apply(model, "r2plus1d", exclude=["stem.*"]).eval()
    assert isinstance(conv.stem[0], nn.Conv3d) and isinstance(conv.layer1[0].conv1, Conv2Plus1D)
    assert any("excluded" in w for _, _, w in conv.r2plus1d_report.skipped)
    out = conv(x)
    assert out.shape == ref.shape
    slimkit.save_pretrained(conv, tmp_path)
    fresh = slimkit.build_model("r3d-18", depth=10, width=4, num_classes=3, clip_len=4)
    back = slimkit.from_pretrained(fresh, tmp_path).eval()
    assert torch.equal(back(x), out)
    # the built R(2+1)D network trains end to end on (N, C, T, H, W) clips
    r21 = slimkit.build_model("r2plus1d-18", depth=10, width=4, num_classes=3)
    loss = nn.functional.cross_entropy(r21(x), torch.tensor([0, 2]))
    loss.backward()
    assert r21.stem[0].spatial.weight.grad is not None
    with pytest.raises(slimkit.ShapeError, match=r"\(N, 3, T, H, W\)"):
        r21(x.transpose(1, 2))


def test_p3d_variants_construct_and_p3d_b_warns_random_init():
    x = torch.randn(1, 4, 6, 10, 10)
    for variant, cls in (("p3d-a", Conv2Plus1D), ("p3d-b", P3DParallel), ("p3d-c", P3DResidual)):
        conv = nn.Conv3d(4, 6, 3, (2, 2, 2), 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            block = slimkit.apply(conv, "r2plus1d", variant=variant)
        assert isinstance(block, cls) and block(x).shape == conv(x).shape
        warned = [w for w in caught if "cannot be SVD-initialised" in str(w.message)]
        assert bool(warned) == (variant == "p3d-b")
        row = block.r2plus1d_report.layers[0]
        assert row.init == ("random" if variant == "p3d-b" else "svd")
        assert (row.rel_error is None) == (variant == "p3d-b")
    # p3d-a is the r2plus1d operator
    conv = nn.Conv3d(4, 6, 3, 1, 1)
    a = slimkit.apply(conv, "r2plus1d", variant="p3d-a")
    r = slimkit.apply(conv, "r2plus1d")
    assert torch.allclose(a(x), r(x), atol=1e-5)
    # mid BN+ReLU: the SVD is only an init, and the report says so
    m = slimkit.apply(nn.Sequential(nn.Conv3d(4, 6, 3, 1, 1)), "r2plus1d", mid_activation=True)
    assert isinstance(m[0].mid[0], nn.BatchNorm3d) and not m.r2plus1d_report.exact_operator
    assert any("only an initialisation" in n for n in m.r2plus1d_report.notes)


def test_a_conv_shared_under_two_names_is_replaced_everywhere():
    conv = nn.Conv3d(3, 3, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    x = torch.randn(1, 3, 4, 6, 6)
    ref = model(x)
    slimkit.apply(model, "r2plus1d", rank="full")
    assert model[0] is model[2] and isinstance(model[0], Conv2Plus1D)
    assert len(model.r2plus1d_report.layers) == 1 and "shared" in model.r2plus1d_report.layers[0].note
    assert (model(x) - ref).abs().max().item() <= 1e-4


def test_converts_the_3d_backbone_of_a_video_classifier():
    from slimkit_video.classifier import VideoClassifier

    net = slimkit.build_model("r3d-18", depth=10, width=4, num_classes=2, clip_len=4)
    clf = VideoClassifier(net, n_segment=4, clip_input=True).eval()
    clips = torch.randn(2, 4, 3, 32, 32)                     # (N, T, C, H, W), the datasets' layout
    ref = clf(clips)
    slimkit.apply(clf, "r2plus1d", rank="full")
    assert isinstance(clf.backbone.layer1[0].conv1, Conv2Plus1D)
    assert (clf(clips) - ref).abs().max().item() <= 1e-4
