"""The shipped demo model: package data, small, causal, right on generated clips offline and online."""
from __future__ import annotations

from importlib import resources

import torch


def test_shipped_model_is_package_data_and_small():
    d = resources.files("slimkit_video").joinpath("assets", "online_demo")
    names = {p.name for p in d.iterdir()}
    assert {"model.safetensors", "video_classifier.json", "slimkit_applied.json"} <= names
    assert d.joinpath("model.safetensors").stat().st_size < 5 * 2**20


def test_shipped_model_is_causal_and_right_offline_and_online():
    from slimkit_video.online.demo_data import StreamWindows
    from slimkit_video.online.live import load_online_model
    from slimkit_video.tsm.modules import TemporalShift

    model = load_online_model()
    assert model.classes == ["left_to_right", "right_to_left"] and model.buffers > 0
    clf = None
    from slimkit_video.online.live import demo_model_dir
    from slimkit_video.train import load_checkpoint
    with demo_model_dir() as d:
        clf = load_checkpoint(d).eval()
    shifts = [m for m in clf.modules() if isinstance(m, TemporalShift)]
    assert shifts and all(m.direction == "past" for m in shifts)
    data = StreamWindows(12, 8, size=model.size, seed=999, mean=model.mean, std=model.std, strides=(1,))
    right_off = right_on = 0
    for i in range(len(data)):
        clip, label = data[i]
        with torch.no_grad():
            off = clf(clip[None])[0]
        model.stream.reset()
        on = torch.stack([model.stream.step(clip[t]) for t in range(8)]).mean(0)
        assert (on - off).abs().max().item() <= 1e-5
        right_off += int(off.argmax()) == label
        right_on += int(on.argmax()) == label
    assert right_off == right_on >= 0.8 * len(data)
