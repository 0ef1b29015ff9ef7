"""``VideoClassifier``: a 2D image backbone applied to every frame, averaged over time (TSN consensus).

    clf = VideoClassifier(backbone, n_segment=8, num_classes=10)   # TSN baseline
    clf = slimkit.apply(clf, "tsm", n_segment=8)                   # TSM: same weights, shifted channels
    logits = clf(clips)                                            # clips (N, T, C, H, W) -> (N, K)
    logits, per_frame = clf(clips, return_per_frame=True)          # per_frame (N, T', K)
    rows = clf.frame_logits(frames)                                # frames (B, C, H, W) -> (B, K)

The backbone sees ``(N*T, C, H, W)`` frames (clip-major, as TSM expects) and may return
logits ``(N*T, K)``, an HF output with ``.logits``, an HF base-model output with
``.pooler_output`` / ``.last_hidden_state`` or a feature map ``(N*T, D, h, w)``; features go
through a linear head (``num_classes`` needed). ``T' = T`` unless the backbone pools over time
(TSM ``temporal_pool``: ``T' = ceil(T/2)``). With ``clip_input=True`` the backbone gets
``(N, C, T, H, W)`` clips instead (3D/(2+1)D networks) and must return ``(N, K)`` or ``(N, T', K)``.

Apply TSM to the classifier (names then start with ``backbone.``) so that
``slimkit.save_pretrained(clf, dir)`` / ``slimkit.from_pretrained(VideoClassifier(...), dir)``
round-trip. A TSM config applied to the backbone beforehand is carried over (names rewritten).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from slimkit.errors import ConfigError, ShapeError

APPLIED_ATTR = "slimkit_configs"


def _feature_dim(backbone: nn.Module) -> Optional[int]:
    cfg = getattr(backbone, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind == "resnet":
        return int(cfg.hidden_sizes[-1])
    if kind == "mobilenet_v2":
        from transformers.models.mobilenet_v2.modeling_mobilenet_v2 import apply_depth_multiplier
        if cfg.finegrained_output and cfg.depth_multiplier < 1.0:
            return 1280
        return int(apply_depth_multiplier(cfg, 1280))
    return None


def _prefixed(config, prefix: str):
    """A TSM config with ``target_modules`` moved under ``prefix`` (a name like ``backbone``)."""
    tm = getattr(config, "target_modules", None)
    if tm is None:
        return config
    if isinstance(tm, str):
        return config.replace(target_modules=rf"{prefix}\.(?:{tm})")
    return config.replace(target_modules=[f"{prefix}.{n}" for n in tm])


def _carried(config, n_segment: int):
    """A backbone's TSM config as the classifier's: names under ``backbone``, ``n_segment`` explicit."""
    config = _prefixed(config, "backbone")
    if getattr(config, "n_segment", 0) is None:
        config = config.replace(n_segment=n_segment)
    return config


def _check_options(n_segment: int, num_classes: Optional[int], dropout: float) -> None:
    """Refuse classifier settings that mean nothing or would silently break training."""
    if n_segment < 1:
        raise ConfigError(f"n_segment must be >= 1 (frames per clip), got {n_segment}")
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"num_classes={num_classes} must be at least 1 (or None when the backbone "
                          f"returns the logits)")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout={dropout!r} must lie in [0, 1) (0 turns it off; 1 would zero every feature "
                          f"in training); pass e.g. 0.5")


class VideoClassifier(nn.Module):
    """TSN-style video classifier around a frame backbone (see the module docstring).

    Args:
        backbone: image model, ``(N*T, C, H, W)`` -> logits or features.
        n_segment: frames per clip ``T`` (must match the clips and any TSM inside).
        num_classes: adds a linear head on the backbone's features (``None``: the backbone's
            output are the logits).
        feature_dim: feature size for the head (inferred for HF ResNet/MobileNetV2 or by a dry run).
        dropout: dropout before the head.
        clip_input: give the backbone ``(N, C, T, H, W)`` clips instead of frames.
    """

    def __init__(self, backbone: nn.Module, n_segment: int = 8, num_classes: Optional[int] = None,
                 feature_dim: Optional[int] = None, dropout: float = 0.0, clip_input: bool = False):
        super().__init__()
        _check_options(n_segment, num_classes, dropout)
        self.backbone = backbone
        self.n_segment = int(n_segment)
        self.clip_input = bool(clip_input)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head: nn.Module = nn.Identity()
        if num_classes is not None:
            dim = feature_dim or _feature_dim(backbone) or self._probe_dim()
            self.head = nn.Linear(dim, int(num_classes))
        self.num_classes = num_classes
        self._check_shift_segments()
        applied = [c for c in getattr(backbone, APPLIED_ATTR, []) or [] if c.technique == "tsm"]
        if applied:
            object.__setattr__(self, APPLIED_ATTR, [_carried(c, self.n_segment) for c in applied])

    def _probe_dim(self) -> int:
        was = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            x = torch.zeros(1, self.n_segment, 3, 64, 64)
            feats = self._features(self._run_backbone(x))
        self.backbone.train(was)
        return int(feats.shape[-1])

    def _backbone_segments(self) -> set:
        """Clip lengths the backbone's TSM modules expect: the temporal pool's, else the shifts'."""
        from .tsm.modules import TemporalPool, TemporalShift

        pools = {m.n_segment for m in self.backbone.modules() if isinstance(m, TemporalPool)}
        if pools:
            return pools  # the shifts after the pool see fewer frames
        return {m.n_segment for m in self.backbone.modules() if isinstance(m, TemporalShift)}

    def _check_shift_segments(self) -> None:
        segs = self._backbone_segments()
        if segs and segs != {self.n_segment}:
            raise ConfigError(
                f"the backbone's temporal shifts use n_segment={sorted(segs)[0]} but the classifier "
                f"has n_segment={self.n_segment}; use the same number of frames per clip for both")

    # -- forward -----------------------------------------------------------------------
    def _run_backbone(self, x: torch.Tensor) -> Any:
        n, t = x.shape[:2]
        if self.clip_input:
            return self.backbone(x.transpose(1, 2))
        return self.backbone(x.reshape(n * t, *x.shape[2:]))

    @staticmethod
    def _features(out: Any) -> torch.Tensor:
        """The tensor in a backbone's output, feature maps ``(B, D, h, w)`` averaged to ``(B, D)``."""
        if hasattr(out, "logits") and out.logits is not None:
            out = out.logits
        elif hasattr(out, "pooler_output") and out.pooler_output is not None:
            out = out.pooler_output
        elif hasattr(out, "last_hidden_state"):
            out = out.last_hidden_state
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if out.dim() == 4:  # (B, D, h, w) feature map -> global average pool
            out = out.mean((2, 3))
        elif out.dim() > 4:
            raise ShapeError(f"backbone output has shape {tuple(out.shape)}; expected (B, K) or (B, D, h, w)")
        return out

    def _classify(self, features: torch.Tensor) -> torch.Tensor:
        """Dropout and the head on features ``(..., D)`` -> outputs ``(..., K)``."""
        return self.head(self.dropout(features))

    def frame_logits(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-frame outputs ``(B', K)`` of frames ``(B, C, H, W)``: the backbone, its pooled features, the head.

        The classifier passes the ``N*T`` frames of ``N`` clips, clip-major, in one batch (a TSM
        backbone shifts channels between the frames of a clip; a temporal pool halves them,
        ``B' = N * ceil(T/2)``); an online stream (``slimkit_video.to_online``) passes one frame of
        each of ``B`` streams (``B' = B``). With ``clip_input`` every frame goes to the backbone as
        a one-frame clip ``(B, C, 1, H, W)``.
        """
        if self.clip_input:
            out = self._features(self.backbone(frames.unsqueeze(2)))
            if out.dim() == 3:  # (B, 1, K) per-frame outputs of one-frame clips
                out = out.squeeze(1)
        else:
            out = self._features(self.backbone(frames))
        return self._classify(out)

    def _clip_per_frame(self, clips: torch.Tensor) -> torch.Tensor:
        """``clip_input``: the backbone on clips ``(N, T, C, H, W)`` -> per-frame outputs ``(N, T', K)``."""
        n = clips.shape[0]
        out = self._features(self._run_backbone(clips))
        if out.dim() == 2 and out.shape[0] == n:
            return self._classify(out[:, None])
        if out.shape[0] % n != 0:
            raise ShapeError(f"backbone returned {out.shape[0]} rows for {n} clips")
        return self._classify(out.reshape(n, out.shape[0] // n, *out.shape[1:]))

    def _frames_per_frame(self, clips: torch.Tensor) -> torch.Tensor:
        """A frame backbone on clips ``(N, T, C, H, W)`` -> per-frame outputs ``(N, T', K)`` (:meth:`frame_logits`)."""
        n, t = clips.shape[:2]
        rows = self.frame_logits(clips.reshape(n * t, *clips.shape[2:]))
        if rows.shape[0] % n != 0:
            raise ShapeError(f"backbone returned {rows.shape[0]} rows for {n} clips")
        return rows.reshape(n, rows.shape[0] // n, *rows.shape[1:])

    def forward(self, clips: torch.Tensor, return_per_frame: bool = False):
        """``clips`` ``(N, T, C, H, W)`` -> logits ``(N, K)`` (and per-frame ``(N, T', K)`` if asked)."""
        if clips.dim() != 5:
            raise ShapeError(f"VideoClassifier expects clips of shape (N, T, C, H, W), got {tuple(clips.shape)}")
        t = clips.shape[1]
        if t != self.n_segment:
            raise ShapeError(f"clips have T={t} frames but the classifier was built for n_segment="
                             f"{self.n_segment}; sample {self.n_segment} frames per clip")
        per_frame = self._clip_per_frame(clips) if self.clip_input else self._frames_per_frame(clips)
        logits = per_frame.mean(1)  # TSN consensus: average over time
        return (logits, per_frame) if return_per_frame else logits


def tiny_resnet(num_classes: Optional[int] = None, widths=(16, 32, 64, 64), depths=(1, 1, 1, 1)) -> nn.Module:
    """A small HF ``ResNetModel`` (basic blocks) for CPU experiments; features ``widths[-1]``."""
    from transformers import ResNetConfig, ResNetModel

    cfg = ResNetConfig(embedding_size=widths[0], hidden_sizes=list(widths), depths=list(depths),
                       layer_type="basic", num_labels=num_classes or 2)
    return ResNetModel(cfg)


BACKBONES = ("tiny-resnet", "resnet18", "resnet50", "mobilenet_v2")


def build_backbone(name: str, **kwargs) -> nn.Module:
    """An HF image backbone (random init) by name, or loaded from a local HF folder path.

    ``tiny-resnet`` (CPU experiments), ``resnet18``, ``resnet50``, ``mobilenet_v2``; a path loads
    ``AutoModel.from_pretrained(path)`` (the base model; the classifier adds its own head).
    """
    import os

    import transformers

    if name == "tiny-resnet":
        return tiny_resnet(**kwargs)
    if name == "resnet18":
        return transformers.ResNetModel(transformers.ResNetConfig(
            layer_type="basic", hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2]))
    if name == "resnet50":
        return transformers.ResNetModel(transformers.ResNetConfig())
    if name == "mobilenet_v2":
        return transformers.MobileNetV2Model(transformers.MobileNetV2Config())
    if os.path.isdir(name):
        model = transformers.AutoModel.from_pretrained(name)
        return model
    from slimkit.errors import one_of
    raise ConfigError(f"unknown backbone {name!r}; use {one_of(BACKBONES)} or a local Hugging Face model folder")
