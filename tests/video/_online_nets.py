"""Tiny networks and weight randomisation shared by the online tests."""
from __future__ import annotations

import torch
from torch import nn


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights (fan-in scaled, so outputs depend on the input, logits of order 1) and
    random BN statistics (so eval mode is not the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                fan_in = m.weight[0].numel()
                gain = 0.5 if isinstance(m, nn.Linear) else 1.0
                m.weight.normal_(0, (gain / fan_in) ** 0.5, generator=g)
                if m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1, generator=g)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    return model


def tiny_mobilenet(num_labels: int = 5):
    import transformers
    cfg = transformers.MobileNetV2Config(depth_multiplier=0.35, image_size=32, num_labels=num_labels)
    return transformers.MobileNetV2ForImageClassification(cfg).eval()


def tiny_resnet(layer_type: str = "basic", num_labels: int = 5):
    import transformers
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 2, 1],
                                    layer_type=layer_type, num_labels=num_labels)
    return transformers.ResNetForImageClassification(cfg).eval()
