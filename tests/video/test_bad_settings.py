"""Settings that would make a video technique do nothing, or the wrong thing, are refused with the
reason (one sentence) before the model is changed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.errors import ConfigError
from slimkit_video.classifier import VideoClassifier, tiny_resnet
from slimkit_video.tsm import TemporalShift


def _resnet(widths=(8, 16)):
    return tiny_resnet(widths=widths, depths=(1,) * len(widths)).eval()


def _shifts(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, TemporalShift)}


def _one_sentence(error) -> str:
    msg = str(error.value)
    assert "\n" not in msg and msg.count(". ") == 0
    return msg


# -- TSM ---------------------------------------------------------------------------------------------
def test_shift_div_that_moves_no_channel_is_refused_and_the_model_kept():
    model = _resnet()
    keys = list(model.state_dict())
    with pytest.raises(ConfigError) as e:
        slimkit.apply(model, "tsm", n_segment=4, shift_div=1000)   # plain TSN: 8 // 1000 = 0 everywhere
    msg = _one_sentence(e)
    assert "shift_div=1000 moves no channel in 2 of 2 shifted layers" in msg
    assert "8 input channels" in msg and "use shift_div <= 8" in msg
    assert not _shifts(model) and list(model.state_dict()) == keys     # rolled back: apply again works
    assert len(_shifts(slimkit.apply(model, "tsm", n_segment=4))) == 2


def test_shift_div_that_idles_only_the_narrow_layers_is_refused():
    # stage inputs: 8, 8 and 32 channels; 32 // 16 = 2 would move, 8 // 16 = 0 would not
    with pytest.raises(ConfigError, match=r"moves no channel in 2 of 3 .*'encoder\.stages\.0\..*', has 8 input "
                                          r"channels.*use shift_div <= 8"):
        slimkit.apply(_resnet((8, 32, 32)), "tsm", n_segment=4, shift_div=16)
    model = slimkit.apply(_resnet((8, 32, 32)), "tsm", n_segment=4, shift_div=8)   # the largest that works
    assert {m.shift_div for m in _shifts(model).values()} == {8}


def test_a_shift_on_too_few_channels_is_refused_when_it_runs():
    # the wrapped module has no conv, so the width is only known from the activation
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1))
    model = slimkit.apply(model, "tsm", n_segment=2, target_modules=["1"])
    with pytest.raises(ConfigError, match=r"4 channels, so 4 // 8 = 0 channels would move.*shift_div <= 4"):
        model(torch.randn(2, 3, 5, 5))


def test_meaningless_shift_div_and_clip_lengths():
    with pytest.raises(ConfigError, match="shift_div=1 would move every channel.*use shift_div >= 2"):
        slimkit.make_config("tsm", shift_div=1)
    with pytest.raises(ConfigError, match="n_segment=1 leaves no neighbouring frame"):
        slimkit.make_config("tsm", n_segment=1)                      # direction='both': only zeroes
    assert slimkit.make_config("tsm", n_segment=1, direction="past").n_segment == 1  # = online's first step
    with pytest.raises(ConfigError, match="temporal_pool with n_segment=2 leaves 1 frame"):
        slimkit.make_config("tsm", n_segment=2, temporal_pool=True)
    with pytest.raises(ConfigError, match="place='block' has no effect with target_modules"):
        slimkit.apply(nn.Sequential(nn.Conv2d(3, 8, 1)), "tsm", target_modules=["0"], place="block")


def test_n_segment_must_agree_with_the_classifier():
    clf = VideoClassifier(_resnet(), n_segment=8, num_classes=2)
    with pytest.raises(ConfigError) as e:
        slimkit.apply(clf, "tsm", n_segment=4)
    msg = _one_sentence(e)
    assert "n_segment=4 disagrees with the VideoClassifier's n_segment=8" in msg and "pass n_segment=8" in msg
    assert not _shifts(clf)


def test_no_n_segment_takes_the_classifiers_and_round_trips(tmp_path):
    clf = slimkit.apply(VideoClassifier(_resnet(), n_segment=4, num_classes=2), "tsm").eval()
    assert {m.n_segment for m in _shifts(clf).values()} == {4}
    assert {m.n_segment for m in _shifts(slimkit.apply(_resnet(), "tsm")).values()} == {8}  # bare: the paper's 8
    slimkit.save_pretrained(clf, tmp_path)
    back = slimkit.from_pretrained(VideoClassifier(_resnet(), n_segment=4, num_classes=2), tmp_path).eval()
    x = torch.randn(1, 4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(back(x), clf(x))


def test_classifier_options():
    with pytest.raises(ConfigError, match=r"dropout=1\.0 must lie in \[0, 1\)"):
        VideoClassifier(_resnet(), n_segment=4, num_classes=2, dropout=1.0)
    with pytest.raises(ConfigError, match="num_classes=0 must be at least 1"):
        VideoClassifier(_resnet(), n_segment=4, num_classes=0)


# -- r2plus1d -------------------------------------------------------------------------------------
def _net3d():
    return nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 4, 3, padding=1))


@pytest.mark.parametrize("variant", ["p3d-b", "p3d-c"])
def test_rank_with_a_fixed_width_variant_is_refused(variant):
    model = _net3d()
    with pytest.raises(ConfigError, match=f"rank=16 has no effect with variant '{variant}'"):
        slimkit.apply(model, "r2plus1d", variant=variant, rank=16, init="random")
    assert all(isinstance(m, (nn.Conv3d, nn.ReLU)) for m in model)


def test_exclude_pattern_that_matches_nothing_is_refused():
    model = _net3d()
    with pytest.raises(ConfigError, match=r"exclude pattern 'stem\.\*' matches no Conv3d of Sequential.*'0' or '2'"):
        slimkit.apply(model, "r2plus1d", exclude=["stem.*"])
    assert isinstance(model[0], nn.Conv3d)
    assert isinstance(slimkit.apply(model, "r2plus1d", exclude=["0"])[0], nn.Conv3d)


def test_video_resnet_options():
    with pytest.raises(ConfigError, match=r"dropout=1\.5 must lie in \[0, 1\)"):
        slimkit.build_model("r3d-18", depth=10, width=4, dropout=1.5)
    with pytest.raises(ConfigError, match="clip_len=0 must be a positive integer"):
        slimkit.build_model("r3d-18", depth=10, width=4, clip_len=0)


# -- online conversion and synthetic data ---------------------------------------------------------------
def test_online_settings_that_do_nothing():
    from slimkit_video.online import to_online

    model = slimkit.apply(_resnet(), "tsm", n_segment=4, direction="past")
    with pytest.raises(ConfigError, match="out_time_dim=2 has no effect with layout 'frames'"):
        to_online(model, out_time_dim=2)
    with pytest.raises(ConfigError, match=r"frame_shape must be three positive ints"):
        to_online(model, frame_shape=(3, 0, 32))


def test_synthetic_clips_too_small_to_show_motion():
    from slimkit_video.data import SyntheticTemporalDataset

    with pytest.raises(ConfigError, match="size=8 is too small"):
        SyntheticTemporalDataset(n_per_class=1, num_frames=4, size=8)
    with pytest.raises(ConfigError, match="1 frames per synthetic clip cannot show a direction"):
        SyntheticTemporalDataset(n_per_class=1, num_frames=1, size=32)
