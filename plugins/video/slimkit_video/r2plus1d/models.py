"""R3D-18-style and R(2+1)D-18 video ResNets (Tran et al. 2018), built from scratch.

Input (N, C, T, H, W) clips, output (N, num_classes) logits. Stem: t x 7 x 7 conv, stride (1, 2, 2);
four stages of BasicBlocks at widths w, 2w, 4w, 8w, stages 2-4 downsampling by 2 in time and space;
global average pooling; linear head. In R(2+1)D every t x 3 x 3 conv (and the stem) is a
``Conv2Plus1D`` with BatchNorm+ReLU in between and its own parameter-matched width M per
convolution (``mid_width="per-conv"``), or torchvision's one M per block reused for both convs and a
hand-set stem width 45 (``mid_width="per-block"``), which falls short of the 3D parameter count.
"""
from typing import Literal

import torch
from torch import nn

from slimkit.errors import ConfigError

from .modules import Conv2Plus1D
from .svd import matched_rank

STAGES = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 26: (2, 3, 4, 3), 34: (3, 4, 6, 3)}


def _conv(kind: str, cin: int, cout: int, stride: int, mid: int | None) -> nn.Module:
    if kind == "3d":
        return nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
    return Conv2Plus1D(cin, cout, mid or matched_rank(cin, cout, 3, 3, 3), 3, stride, 1, bias=False,
                       mid_activation=True)


class BasicBlock3D(nn.Module):
    """conv-BN-ReLU-conv-BN plus identity (or 1x1x1 conv + BN when shape changes), ReLU."""

    def __init__(self, kind: str, cin: int, cout: int, stride: int, mid_width: str):
        super().__init__()
        block_mid = matched_rank(cin, cout, 3, 3, 3) if mid_width == "per-block" else None
        self.conv1 = _conv(kind, cin, cout, stride, block_mid)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = _conv(kind, cout, cout, 1, block_mid)
        self.bn2 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def check_dropout(dropout: float) -> None:
    """Refuse a dropout probability outside [0, 1): below 0 means nothing, 1 zeroes every feature."""
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout={dropout!r} must lie in [0, 1) (0 turns it off; 1 would zero every feature "
                          f"in training); pass e.g. 0.5")


class VideoResNet(nn.Module):
    """(N, C, T, H, W) -> (N, num_classes). ``kind`` is ``"3d"`` (R3D) or ``"2+1d"`` (R(2+1)D)."""

    def __init__(self, kind: Literal["3d", "2+1d"] = "3d", depth: int = 18, width: int = 64,
                 num_classes: int = 400, in_channels: int = 3, clip_len: int = 8,
                 mid_width: Literal["per-conv", "per-block"] = "per-conv", dropout: float = 0.0):
        super().__init__()
        if depth not in STAGES:
            raise ConfigError(f"depth={depth} is not available; choose one of {sorted(STAGES)}")
        if kind not in ("3d", "2+1d"):
            raise ConfigError(f"kind={kind!r} must be '3d' or '2+1d'")
        if mid_width not in ("per-conv", "per-block"):
            raise ConfigError(f"mid_width={mid_width!r} must be 'per-conv' or 'per-block'")
        sizes = dict(width=width, num_classes=num_classes, in_channels=in_channels, clip_len=clip_len)
        bad = next((k for k, v in sizes.items() if not isinstance(v, int) or v < 1), None)
        if bad is not None:
            raise ConfigError(f"{bad}={sizes[bad]!r} must be a positive integer; width, num_classes, in_channels "
                              f"and clip_len all count something")
        check_dropout(dropout)
        self.kind, self.depth, self.width, self.clip_len = kind, depth, width, clip_len
        self.num_classes, self.in_channels = num_classes, in_channels
        if kind == "3d":
            stem_conv = nn.Conv3d(in_channels, width, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False)
        else:
            stem_mid = (max(1, 45 * width // 64) if mid_width == "per-block"
                        else matched_rank(in_channels, width, 3, 7, 7))
            stem_conv = Conv2Plus1D(in_channels, width, stem_mid, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False,
                                    mid_activation=True)
        self.stem = nn.Sequential(stem_conv, nn.BatchNorm3d(width), nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, n in enumerate(STAGES[depth]):
            cout = width * 2 ** i
            blocks = [BasicBlock3D(kind, cin if j == 0 else cout, cout, (2 if i > 0 and j == 0 else 1), mid_width)
                      for j in range(n)]
            layers.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def example_input(self, batch: int = 1, size: int = 112) -> torch.Tensor:
        return torch.randn(batch, self.in_channels, self.clip_len, size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            from slimkit.errors import ShapeError
            raise ShapeError(f"expected clips of shape (N, {self.in_channels}, T, H, W), got {tuple(x.shape)}; "
                             f"permute (N, T, C, H, W) clips with x.transpose(1, 2)")
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(self.pool(x).flatten(1)))


def r3d_18(depth: int = 18, width: int = 64, num_classes: int = 400, in_channels: int = 3, clip_len: int = 8,
           dropout: float = 0.0) -> VideoResNet:
    """R3D-18-style network (3 x 3 x 3 convs; stem 3 x 7 x 7)."""
    return VideoResNet("3d", depth, width, num_classes, in_channels, clip_len, dropout=dropout)


def r2plus1d_18(depth: int = 18, width: int = 64, num_classes: int = 400, in_channels: int = 3, clip_len: int = 8,
                mid_width: Literal["per-conv", "per-block"] = "per-conv", dropout: float = 0.0) -> VideoResNet:
    """R(2+1)D-18 network, parameter-matched width per conv (or torchvision's per block)."""
    return VideoResNet("2+1d", depth, width, num_classes, in_channels, clip_len, mid_width, dropout)


def conv_weight_count(model: nn.Module) -> int:
    """Parameters held by Conv3d weights (the quantity torchvision's and the paper's counts compare)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv3d))
