"""The temporal shift: move a fraction of the channels one frame along time.

``x`` holds ``N`` clips of ``T = n_segment`` frames each, flattened to ``(N*T, C, H, W)``
(frame-major inside each clip, as ``clips.flatten(0, 1)`` gives for ``(N, T, C, H, W)``).
With ``fold = C // shift_div``:

- ``direction="both"`` (offline, the paper's shift): channels ``[0, fold)`` take frame ``t+1``,
  channels ``[fold, 2*fold)`` take frame ``t-1``; the rest are unchanged; the ends are zero.
- ``direction="past"`` (causal, for online use): channels ``[0, fold)`` take frame ``t-1``
  (zeros at ``t=0``); the rest are unchanged; no future frame is ever read.

The output is a new tensor (the input is never modified), built with one allocation
and slice copies (for tensors of ``SMALL_NUMEL`` elements or more no full zero fill, only the
two end slices are zeroed), so the shift costs one read and one write of the activation. Gradients flow through autograd's
slice-copy rules, i.e. the backward is exactly the opposite shift.
"""
from __future__ import annotations

import torch

from slimkit.errors import ConfigError, ShapeError

DIRECTIONS = ("both", "past")
# below this many elements a zero-filled output (fewer ops) beats an uninitialised one (measured on CPU)
SMALL_NUMEL = 80_000


def _check(x: torch.Tensor, n_segment: int, shift_div: int, direction: str) -> None:
    if (type(n_segment) is int and type(shift_div) is int and n_segment >= 1 and shift_div >= 2
            and (direction == "both" or direction == "past") and x.dim() >= 2 and x.shape[0] % n_segment == 0):
        return  # the common case, checked cheaply (this runs in every shifted block)
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be 'both' or 'past', got {direction!r}")
    if not isinstance(n_segment, int) or n_segment < 1:
        raise ConfigError(f"n_segment must be a positive int, got {n_segment!r}")
    if not isinstance(shift_div, int) or shift_div < 2:
        raise ConfigError(f"shift_div must be an int >= 2, got {shift_div!r}")
    if x.dim() < 2:
        raise ShapeError(f"temporal_shift expects (N*T, C, ...) input, got shape {tuple(x.shape)}")
    if x.shape[0] % n_segment != 0:
        raise ShapeError(
            f"batch {x.shape[0]} is not divisible by n_segment={n_segment}; feed whole clips "
            f"as (N*{n_segment}, C, H, W) or set n_segment to the clip length")


def temporal_shift(x: torch.Tensor, n_segment: int, shift_div: int = 8,
                   direction: str = "both") -> torch.Tensor:
    """Shift ``C // shift_div`` channels of ``x`` (``(N*T, C, ...)``, ``T = n_segment``) along time.

    See the module docstring for the exact semantics. Returns a new tensor of ``x``'s shape.
    """
    _check(x, n_segment, shift_div, direction)
    nt, c = x.shape[0], x.shape[1]
    fold = c // shift_div
    t = n_segment
    v = x.reshape(nt // t, t, *x.shape[1:])
    # small tensors: a zero fill is nearly free and saves two ops; large: never write twice
    small = x.numel() < SMALL_NUMEL
    out = torch.zeros_like(v) if small else torch.empty_like(v)
    # the unchanged bulk first (one long sequential copy), the moving channels, then the ends
    if direction == "both":
        out[:, :, 2 * fold:] = v[:, :, 2 * fold:]
        out[:, :-1, :fold] = v[:, 1:, :fold]                      # take the next frame
        out[:, 1:, fold:2 * fold] = v[:, :-1, fold:2 * fold]      # take the previous frame
        if not small:
            out[:, -1:, :fold] = 0
            out[:, :1, fold:2 * fold] = 0
    else:
        out[:, :, fold:] = v[:, :, fold:]
        out[:, 1:, :fold] = v[:, :-1, :fold]                      # take the previous frame
        if not small:
            out[:, :1, :fold] = 0
    return out.view(x.shape)


def reference_shift(x: torch.Tensor, n_segment: int, shift_div: int = 8,
                    direction: str = "both") -> torch.Tensor:
    """The plain zeros-and-slice shift of the TSM reference code (for tests and benchmarks)."""
    nt, c = x.shape[0], x.shape[1]
    v = x.reshape(nt // n_segment, n_segment, *x.shape[1:])
    fold = c // shift_div
    out = torch.zeros_like(v)
    if direction == "both":
        out[:, :-1, :fold] = v[:, 1:, :fold]
        out[:, 1:, fold:2 * fold] = v[:, :-1, fold:2 * fold]
        out[:, :, 2 * fold:] = v[:, :, 2 * fold:]
    else:
        out[:, 1:, :fold] = v[:, :-1, :fold]
        out[:, :, fold:] = v[:, :, fold:]
    return out.view(x.shape)


# -- in-place shift for inference ----------------------------------------------------------------
# Materialising the shifted tensor reads and writes the whole activation although only
# 2*fold of C channels move. For inference (no autograd), ``TemporalShift(inplace=True)``
# instead moves just those channels inside ``x`` frame by frame, runs the wrapped module,
# then moves them back (saving the one frame per group that the shift overwrites), so ``x``
# is bit-exactly restored and the data moved is about half of a full copy. It is only used
# when gradients are off and the wrapped module does not modify its input in place, and for
# tensors of at least INPLACE_MIN_NUMEL elements: it issues ~4*T small copies, whose fixed cost
# (~0.15 ms) loses to one copy below about 0.7M elements (measured on CPU).

INPLACE_MIN_NUMEL = 1 << 20

def _moves(direction: str, fold: int):
    """(channel slice, step) per moving group: step +1 = takes frame t+1, -1 = takes frame t-1."""
    if direction == "both":
        return ((slice(0, fold), +1), (slice(fold, 2 * fold), -1))
    return ((slice(0, fold), -1),)


def shift_inplace_(x: torch.Tensor, n_segment: int, shift_div: int = 8, direction: str = "both"):
    """Shift ``x`` in place (same result as ``temporal_shift``); returns a token for ``unshift_inplace_``."""
    _check(x, n_segment, shift_div, direction)
    t = n_segment
    v = x.view(x.shape[0] // t, t, *x.shape[1:])
    fold = x.shape[1] // shift_div
    saved = []
    for ch, step in _moves(direction, fold):
        if step > 0:  # frame t <- frame t+1, ascending t; frame 0's data is overwritten: keep it
            saved.append(v[:, 0, ch].clone())
            for i in range(t - 1):
                v[:, i, ch].copy_(v[:, i + 1, ch])
            v[:, t - 1, ch].zero_()
        else:  # frame t <- frame t-1, descending t; the last frame's data is overwritten
            saved.append(v[:, t - 1, ch].clone())
            for i in range(t - 1, 0, -1):
                v[:, i, ch].copy_(v[:, i - 1, ch])
            v[:, 0, ch].zero_()
    return (n_segment, direction, fold, saved)


def unshift_inplace_(x: torch.Tensor, token) -> torch.Tensor:
    """Undo ``shift_inplace_`` exactly (bit for bit); returns ``x``."""
    t, direction, fold, saved = token
    v = x.view(x.shape[0] // t, t, *x.shape[1:])
    for (ch, step), keep in zip(_moves(direction, fold), saved):
        if step > 0:
            for i in range(t - 1, 0, -1):
                v[:, i, ch].copy_(v[:, i - 1, ch])
            v[:, 0, ch].copy_(keep)
        else:
            for i in range(t - 1):
                v[:, i, ch].copy_(v[:, i + 1, ch])
            v[:, t - 1, ch].copy_(keep)
    return x
