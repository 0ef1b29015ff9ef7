"""Feed (N, T, C, H, W) clips (the layout of slimkit_video's datasets and 2D video classifiers) to a
3D network that consumes (N, C, T, H, W)."""
import torch
from torch import nn


class ClipsToNCTHW(nn.Module):
    """Wrap a 3D CNN: ``forward((N, T, C, H, W)) = net((N, C, T, H, W))``; the net is ``.net``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.dim() != 5:
            from slimkit.errors import ShapeError
            raise ShapeError(f"expected clips of shape (N, T, C, H, W), got {tuple(clips.shape)}")
        return self.net(clips.transpose(1, 2))
