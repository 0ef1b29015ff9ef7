"""Video data: decord datasets with TSN sampling, and a generated temporal-order dataset."""
from .synthetic import (
                        CLASSES,
                        SyntheticFrames,
                        SyntheticTemporalDataset,
                        render_clip,
                        synthetic_frames,
                        write_synthetic_videos,
)
from .video import VideoDataset, normalization_for, segment_indices

__all__ = ["CLASSES", "SyntheticFrames", "SyntheticTemporalDataset", "render_clip", "synthetic_frames",
           "write_synthetic_videos", "VideoDataset", "normalization_for", "segment_indices"]
