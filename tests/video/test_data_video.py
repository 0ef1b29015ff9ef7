"""decord dataset on real mp4 files: TSN sampling, normalisation, folder and HF datasets paths, bad files."""
from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch

from slimkit import SourceError
from slimkit_video.data import VideoDataset, normalization_for, segment_indices


def test_segment_indices():
    assert segment_indices(80, 8, train=False) == [5, 15, 25, 35, 45, 55, 65, 75]
    rng = random.Random(0)
    for _ in range(20):
        idx = segment_indices(80, 8, train=True, rng=rng)
        assert all(10 * k <= i < 10 * (k + 1) for k, i in enumerate(idx))
    assert segment_indices(3, 6, train=False) == [0, 0, 1, 1, 2, 2]  # short videos repeat frames


def test_reads_real_mp4_with_normalisation(video_dir):
    import decord

    path = str(video_dir / "carphone_pristine.mp4")
    ds = VideoDataset([(path, 1)], num_segments=4, size=(40, 56), train=False)
    clip, label = ds[0]
    assert label == 1 and clip.shape == (4, 3, 40, 56) and clip.dtype == torch.float32
    vr = decord.VideoReader(path, width=56, height=40)
    want = vr.get_batch(segment_indices(len(vr), 4, False)).asnumpy()  # 120 frames -> 15, 45, 75, 105
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expect = (torch.from_numpy(want).permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(clip, expect, atol=1e-5)
    assert not torch.allclose(clip[0], clip[3])  # different frames


def test_train_sampling_is_random_eval_is_fixed(video_dir):
    items = [(str(video_dir / "bikes.mp4"), 0)]
    train = VideoDataset(items, num_segments=4, size=32, train=True, seed=0)
    assert not torch.equal(train[0][0], train[0][0])
    ev = VideoDataset(items, num_segments=4, size=32, train=False)
    assert torch.equal(ev[0][0], ev[0][0])


def test_folder_per_class_and_hf_datasets(video_dir, tmp_path):
    for cls, names in {"cars": ["carphone_pristine.mp4"], "outdoor": ["bikes.mp4", "bigbuckbunny.mp4"]}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            shutil.copy(video_dir / n, tmp_path / cls / n)
    ds = VideoDataset.from_folder(tmp_path, num_segments=2, size=24, train=False)
    assert ds.classes == ["cars", "outdoor"] and [label for _, label in ds.items] == [0, 1, 1]
    assert ds[2][0].shape == (2, 3, 24, 24)

    import datasets
    hf = datasets.Dataset.from_dict(
        {"video": [p for p, _ in ds.items], "label": [1, 0, 0]},
        features=datasets.Features({"video": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=["a", "b"])}))
    hds = VideoDataset.from_hf(hf, num_segments=2, size=24, train=False)
    assert hds.classes == ["a", "b"] and hds[0][1] == 1
    assert torch.equal(hds[0][0], ds[0][0])


def test_mobilenet_normalisation():
    import transformers
    m = transformers.MobileNetV2Model(transformers.MobileNetV2Config(depth_multiplier=0.35, image_size=32))
    assert normalization_for(m) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert normalization_for(torch.nn.Linear(1, 1))[0] == (0.485, 0.456, 0.406)


def test_bad_files_name_the_file(video_dir, tmp_path):
    good = str(video_dir / "carphone_distorted.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(SourceError, match=r"empty\.mp4.*empty.*skip_corrupt=True"):
        VideoDataset([(good, 0), (str(empty), 1)], num_segments=2, size=16)
    with pytest.raises(SourceError, match=r"missing\.mp4.*does not exist"):
        VideoDataset([(str(tmp_path / "missing.mp4"), 1)], num_segments=2, size=16)
    ds = VideoDataset([(str(corrupt), 1), (good, 0)], num_segments=2, size=16)
    with pytest.raises(SourceError, match=r"corrupt\.mp4.*decoding failed"):
        ds[0]
    with pytest.warns(UserWarning, match=r"corrupt\.mp4"):
        ds = VideoDataset([(str(corrupt), 1), (good, 0), (str(empty), 1)], num_segments=2, size=16,
                          skip_corrupt=True)
        clip, label = ds[0]  # skipped to the next readable video
    assert label == 0 and clip.shape == (2, 3, 16, 16)
    assert ds.check() == [str(corrupt), str(empty)]
