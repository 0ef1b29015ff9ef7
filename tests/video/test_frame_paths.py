"""Training and streaming feed a model the same input for the same frame, and run it through the same
per-frame path (``VideoClassifier.frame_logits``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from slimkit.errors import ShapeError


def _streamed_frames(path: str, size: int, indices: list[int]) -> dict[int, np.ndarray]:
    """The decoded frames at ``indices`` of a ``slimkit stream`` file source, as the live loop reads them."""
    from slimkit_video.sources.openers import FileSource

    with FileSource(path, width=size, height=size) as source:
        frames = [next(source) for _ in range(max(indices) + 1)]
    return {i: frames[i] for i in indices}


def test_training_and_streaming_give_the_same_tensor_for_a_frame(video_dir):
    """A frame of a real mp4: ``VideoDataset`` (training) and ``FileSource`` -> ``OnlineModel.preprocess``
    (streaming, the shipped demo model's size, mean and std) give equal tensors, bit for bit."""
    from slimkit_video.data import VideoDataset, segment_indices
    from slimkit_video.online.live import load_online_model

    model = load_online_model()
    path, t = str(video_dir / "carphone_pristine.mp4"), 4
    clip, _ = VideoDataset([(path, 0)], num_segments=t, size=model.size, train=False,
                           mean=model.mean, std=model.std)[0]
    indices = segment_indices(120, t, train=False)  # the file has 120 frames: 15, 45, 75, 105
    streamed = _streamed_frames(path, model.size, indices)
    for k, i in enumerate(indices):
        frame = model.preprocess(streamed[i])
        assert frame.shape == (3, model.size, model.size) and frame.dtype == torch.float32
        assert torch.equal(frame, clip[k]), f"frame {i}: training and streaming inputs differ"
    assert not torch.equal(clip[0], clip[-1])  # different frames, so the comparison means something


def test_frames_to_tensor_normalises_channels_first():
    from slimkit_video.frames import frames_to_tensor

    frame = np.zeros((2, 3, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 255, 0, 51
    x = frames_to_tensor(frame, (0.5, 0.0, 0.2), (0.5, 1.0, 0.1))
    assert x.shape == (3, 2, 3) and x.is_contiguous()
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    clip = frames_to_tensor(np.stack([frame, frame]), (0.5, 0.0, 0.2), (0.5, 1.0, 0.1))
    assert clip.shape == (2, 3, 2, 3) and torch.equal(clip[1], x)
    with pytest.raises(ShapeError, match="RGB uint8"):
        frames_to_tensor(frame.astype(np.float32), (0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("temporal_pool", [False, True])
def test_frame_logits_is_the_classifiers_per_frame_path(temporal_pool):
    """``forward``'s per-frame outputs are ``frame_logits`` of the clip-major frames, also with TSM pooling."""
    import slimkit
    from slimkit_video.classifier import VideoClassifier, tiny_resnet

    torch.manual_seed(0)
    clf = slimkit.apply(VideoClassifier(tiny_resnet(), n_segment=4, num_classes=3), "tsm", n_segment=4,
                        temporal_pool=temporal_pool).eval()
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        logits, per_frame = clf(clips, return_per_frame=True)
        rows = clf.frame_logits(clips.reshape(8, 3, 32, 32))
    assert per_frame.shape == (2, 2 if temporal_pool else 4, 3)
    assert torch.equal(rows.reshape(per_frame.shape), per_frame)
    assert torch.equal(logits, per_frame.mean(1))
