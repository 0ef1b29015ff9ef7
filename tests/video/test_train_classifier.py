"""VideoClassifier: TSN consensus, per-frame outputs, TSM inside, heads, errors, save/restore."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit_video import VideoClassifier
from slimkit_video.classifier import tiny_resnet
from slimkit_video.tsm import TemporalShift


def test_tsn_is_the_average_of_per_frame_logits():
    backbone = tiny_resnet(widths=(8, 8, 16, 16)).eval()
    clf = VideoClassifier(backbone, n_segment=4, num_classes=3).eval()
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        logits, per_frame = clf(clips, return_per_frame=True)
        frame0 = clf.head(backbone(clips[1, 2:3]).pooler_output.flatten(1))  # one frame alone
    assert logits.shape == (2, 3) and per_frame.shape == (2, 4, 3)
    assert torch.allclose(per_frame.mean(1), logits, atol=1e-6)
    assert torch.allclose(per_frame[1, 2], frame0[0], atol=1e-5)
    # TSN ignores order: shuffling frames changes nothing
    with torch.no_grad():
        assert torch.allclose(clf(clips.flip(1)), logits, atol=1e-5)


def test_tsm_classifier_sees_order_and_keeps_parameters():
    clf = VideoClassifier(tiny_resnet(widths=(8, 8, 16, 16)), n_segment=4, num_classes=3)
    n_params = slimkit.measure.count_params(clf)
    clf = slimkit.apply(clf, "tsm", n_segment=4).eval()
    assert slimkit.measure.count_params(clf) == n_params
    assert all(n.startswith("backbone.") for n, m in clf.named_modules() if isinstance(m, TemporalShift))
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(clf(clips.flip(1)), clf(clips), atol=1e-5)


def test_hf_logits_backbone_feature_map_backbone_and_clip_input():
    import transformers
    cfg = transformers.MobileNetV2Config(depth_multiplier=0.35, image_size=32, num_labels=5)
    hf = VideoClassifier(transformers.MobileNetV2ForImageClassification(cfg), n_segment=2)
    assert hf(torch.randn(3, 2, 3, 32, 32)).shape == (3, 5)
    fmap = VideoClassifier(nn.Conv2d(3, 6, 3), n_segment=2, num_classes=4)  # (B, 6, h, w) -> pooled -> head
    assert fmap.head.in_features == 6 and fmap(torch.randn(1, 2, 3, 8, 8)).shape == (1, 4)

    class Clip3D(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(3, 4, 3, padding=1)

        def forward(self, x):  # (N, C, T, H, W) -> (N, 4)
            return self.conv(x).mean((2, 3, 4))
    c3 = VideoClassifier(Clip3D(), n_segment=4, clip_input=True)
    assert c3(torch.randn(2, 4, 3, 8, 8)).shape == (2, 4)


def test_temporal_pool_halves_per_frame_outputs():
    clf = slimkit.apply(VideoClassifier(tiny_resnet(widths=(8, 8, 16, 16)), 8, num_classes=2), "tsm",
                        n_segment=8, temporal_pool=True)
    logits, per_frame = clf(torch.randn(2, 8, 3, 32, 32), return_per_frame=True)
    assert logits.shape == (2, 2) and per_frame.shape == (2, 4, 2)


def test_errors():
    clf = VideoClassifier(tiny_resnet(widths=(8, 8, 16, 16)), n_segment=4, num_classes=2)
    with pytest.raises(slimkit.ShapeError, match=r"\(N, T, C, H, W\)"):
        clf(torch.randn(8, 3, 32, 32))
    with pytest.raises(slimkit.ShapeError, match="T=3 frames.*n_segment=4"):
        clf(torch.randn(1, 3, 3, 32, 32))
    shifted = slimkit.apply(tiny_resnet(widths=(8, 8, 16, 16)), "tsm", n_segment=8)
    with pytest.raises(slimkit.ConfigError, match="n_segment=8.*n_segment=4"):
        VideoClassifier(shifted, n_segment=4, num_classes=2)


def test_config_applied_to_backbone_carries_over(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return self.b(self.a(x))

    backbone = slimkit.apply(Net(), "tsm", n_segment=2, target_modules=["b"])
    clf = VideoClassifier(backbone, n_segment=2, num_classes=2).eval()
    slimkit.save_pretrained(clf, tmp_path)
    restored = slimkit.from_pretrained(VideoClassifier(Net(), n_segment=2, num_classes=2), tmp_path).eval()
    assert isinstance(restored.backbone.b, TemporalShift)
    x = torch.randn(2, 2, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(restored(x), clf(x))
