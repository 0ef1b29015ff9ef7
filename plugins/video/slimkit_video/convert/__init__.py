"""Bring your weights (video): checkpoint converters for ``slimkit convert``.

* ``torchvision-r3d``: torchvision's ``r3d_18`` (and its training-script checkpoints) -> slimkit's ``r3d-18``.
* ``torchvision-r2plus1d``: torchvision's ``r2plus1d_18`` -> slimkit's ``r2plus1d-18`` with
  ``mid_width="per-block"`` (the same network: one width per block, stem 45, BatchNorm + ReLU between).
* ``tsm-repo``: checkpoints of github.com/mit-han-lab/temporal-shift-module (TSN/TSM on ResNet-50/101,
  any torchvision ResNet, MobileNetV2, offline and the online demo's one-directional MobileNetV2) ->
  a ``VideoClassifier`` around the Hugging Face backbone with the ``tsm`` technique applied.

Each converter lives in its own module and is imported when a conversion runs (``registration``).
"""
