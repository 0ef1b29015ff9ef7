"""``slimkit.apply(model, "r2plus1d", ...)``: replace 3D convolutions by (2+1)D blocks, data-free.

Every ``nn.Conv3d`` with a temporal kernel t > 1 and a spatial kernel kh*kw > 1 becomes a block of
``modules`` (see the variant); every other Conv3d is left alone and listed in the report. With
``init="svd"`` the block's kernels come from the truncated SVD of the trained kernel (``svd``), so
that, without a mid activation, the block computes the best rank-M approximation of the 3D
convolution (exact at full rank). The report is at ``model.r2plus1d_report``. With
``layout="torchvision"`` the widths follow torchvision's ``r2plus1d_18`` (one per residual block, 45 per
64 channels for the stem) and BatchNorm + ReLU sit between the kernels; the SVD then keeps M // 2
components as +/- channel pairs, which pass the ReLU unchanged (see ``svd.split_kernel_through_relu``).
The SVDs run with ``solver="gram"`` (fast) unless ``solver="exact"`` asks for the reference; a progress
bar shows the layers on a terminal.

Refused before anything is changed (``ConfigError``): an explicit ``rank`` with variant ``p3d-b``
or ``p3d-c`` (their widths are fixed, so the rank would do nothing) and an ``exclude`` pattern
that matches no Conv3d of the model (a typo would silently convert the layers meant to stay 3D).
"""
import fnmatch
import warnings

import torch
from torch import nn

from slimkit.errors import ConfigError, UnsupportedModelError, one_of
from slimkit.measure import count_params

from .config import R2Plus1DConfig
from .modules import BLOCKS, Conv2Plus1D, P3DParallel, P3DResidual, normalise_padding
from .report import ConversionReport, LayerReport
from .svd import full_rank, kernels_from_factors, matched_rank, spectrum, split_kernel_through_relu

REPORT_ATTR = "r2plus1d_report"

P3D_B_NO_SVD = (
    "variant 'p3d-b' (S(x) + T(x)) cannot be SVD-initialised: its kernel is a spatial kernel on the "
    "centre frame plus a temporal kernel on the centre pixel, a sum of two restricted-support kernels, "
    "not a product of a spatial and a temporal factor, so no truncated SVD maps onto it; falling back "
    "to random initialisation for {n} convolution(s) (fine-tune the model, or use variant 'r2plus1d', "
    "'p3d-a' or 'p3d-c' for a data-free conversion)")


def eligible(conv: nn.Conv3d) -> str | None:
    """None when ``conv`` is replaced; otherwise why it is left alone."""
    t, kh, kw = conv.kernel_size
    if t == 1:
        return "temporal kernel 1: already spatial-only"
    if kh * kw == 1:
        return "spatial kernel 1x1: temporal-only or pointwise"
    return None


def _requested_rank(cfg: R2Plus1DConfig, conv: nn.Conv3d, spec, width: tuple[int, str] | None = None
                    ) -> tuple[int, str]:
    """Total requested M and a label for the report (``width``: the layout's choice, when it made one)."""
    if width is not None:
        return width
    t, kh, kw = conv.kernel_size
    if cfg.rank == "match":
        return matched_rank(conv.in_channels, conv.out_channels, t, kh, kw), "match"
    if cfg.rank == "full":
        return full_rank(conv), "full"
    if isinstance(cfg.rank, float):
        return conv.groups * spec.energy_rank(cfg.rank), f"energy {cfg.rank:g}"
    return int(cfg.rank), str(cfg.rank)


def _check_supported(name: str, conv: nn.Conv3d) -> None:
    if isinstance(conv.weight, nn.parameter.UninitializedParameter):
        raise UnsupportedModelError(
            f"{name or 'the model'} is a lazy Conv3d whose weight is not materialised yet; run one forward "
            f"pass with a real clip before applying 'r2plus1d'")
    if conv.weight.dim() != 5:
        raise UnsupportedModelError(
            f"{name or 'the model'} ({type(conv).__name__}) has a weight of shape {tuple(conv.weight.shape)}, "
            f"not (out, in/groups, t, kh, kw); 'r2plus1d' converts plain nn.Conv3d layers only")


def identity_batchnorm_(bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Make ``bn`` the identity in eval mode: scale 1, shift 0, running mean 0, running variance 1 - eps."""
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        bn.num_batches_tracked.zero_()


def convert_conv(name: str, conv: nn.Conv3d, cfg: R2Plus1DConfig, width: tuple[int, str] | None = None
                 ) -> tuple[nn.Module, LayerReport]:
    """The replacement block for one Conv3d and its report row (``width``: M chosen by the layout)."""
    _check_supported(name, conv)
    t, kh, kw = conv.kernel_size
    g, o, i = conv.groups, conv.out_channels, conv.in_channels
    og = o // g
    full = full_rank(conv)
    full_g = full // g
    pad = normalise_padding(conv.padding, conv.kernel_size, conv.dilation)
    common = dict(kernel_size=conv.kernel_size, stride=conv.stride, padding=pad, dilation=conv.dilation,
                  groups=g, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    need_spec = cfg.variant != "p3d-b" and (cfg.init == "svd" or isinstance(cfg.rank, float))
    spec = spectrum(conv.weight, g, cfg.solver) if need_spec else None
    notes, clamped, rel_error, energy, init = [], False, None, None, cfg.init
    mid = cfg.with_mid_activation

    if cfg.variant in ("r2plus1d", "p3d-a"):
        m, label = _requested_rank(cfg, conv, spec, width)
        mg = max(1, m // g)
        if mg * g != m:
            notes.append(f"M={m} rounded to {mg * g}, a multiple of groups={g}")
        if mg > full_g:
            clamped, mg = True, full_g
            notes.append(f"requested M={m} exceeds full rank {full}: clamped")
        block = Conv2Plus1D(i, o, mg * g, mid_activation=mid, **common)
        if spec is not None and cfg.init == "svd":
            if cfg.layout == "torchvision":
                sp, tm, factors = split_kernel_through_relu(conv.weight, g, mg, spec)
                identity_batchnorm_(block.mid[0])
                notes.append(f"{mg // 2} SVD components per group as +/- pairs through the ReLU, identity "
                             f"BatchNorm: the rank-{(mg // 2) * g} approximation in eval mode")
            else:
                factors = spec.factors(mg)
                sp, tm = kernels_from_factors(factors, conv.weight, g)
            rel_error = factors.rel_error
            block.spatial.weight.data.copy_(sp)
            block.temporal.weight.data.copy_(tm)
        rank = mg * g
    elif cfg.variant == "p3d-b":
        label, rank = "n/a", 0
        block = P3DParallel(i, o, **common)
        init = "random"
        notes.append("parallel branches in->out: no intermediate width, rank option not used")
    else:  # p3d-c
        label, rank = "out_channels", o
        block = P3DResidual(i, o, mid_activation=mid, **common)
        notes.append("intermediate width fixed at out_channels (skip path adds S(x)); rank option not used")
        mg = min(og, full_g)
        if spec is not None and cfg.init == "svd":
            factors = spec.factors(mg)
            rel_error = factors.rel_error
            sp, tm = kernels_from_factors(factors, conv.weight, g, pad_to=og)
            idx = torch.arange(o)
            tm[idx, idx % og, block.centre_tap, 0, 0] -= 1.0   # T = T' - identity at the centre tap
            block.spatial.weight.data.copy_(sp)
            block.temporal.weight.data.copy_(tm)
    if init == "svd":
        energy = 1.0 - rel_error ** 2
        if conv.bias is not None:
            block.temporal.bias.data.copy_(conv.bias.detach())
        if mid and cfg.layout != "torchvision":
            notes.append("BatchNorm+ReLU between the convs: SVD is only an initialisation")
    block.to(device=conv.weight.device, dtype=conv.weight.dtype)
    block.train(conv.training)
    row = LayerReport(name=name, kernel=tuple(conv.kernel_size), in_channels=i, out_channels=o, groups=g,
                      stride=tuple(conv.stride), requested=label, rank=rank, full_rank=full, clamped=clamped,
                      params_before=count_params(conv), params_after=count_params(block), init=init,
                      rel_error=rel_error, energy_kept=energy, note="; ".join(notes))
    return block, row


# -- layout="torchvision": one width per residual block ------------------------------------------
#: torchvision's R(2+1)D stem: 45 mid channels for 64 output channels (hand-set, not parameter-matched)
TORCHVISION_STEM = (45, 64)


def block_of(model: nn.Module, name: str) -> str | None:
    """The residual block holding the conv ``name``: its nearest ancestor that is not a plain container
    (``nn.Sequential`` / ``nn.ModuleList``) nor the model itself; ``None`` for a conv outside any block."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        ancestor = ".".join(parts[:cut])
        if not isinstance(model.get_submodule(ancestor), (nn.Sequential, nn.ModuleList)):
            return ancestor
    return None


def torchvision_widths(model: nn.Module, targets: list[tuple[str, nn.Conv3d]]) -> dict[str, tuple[int, str]]:
    """``{conv name: (M, report label)}`` of torchvision's layout: per block the parameter-matched width of
    the block's first conv (torchvision's ``midplanes``), reused by the block's other convs; a conv outside
    any block (the stem) gets 45 per 64 output channels."""
    widths: dict[str, tuple[int, str]] = {}
    first_in_block: dict[str, nn.Conv3d] = {}
    for name, conv in targets:
        block = block_of(model, name) if name else None
        if block is None:
            stem_mid, stem_out = TORCHVISION_STEM
            widths[name] = (max(1, stem_mid * conv.out_channels // stem_out), "torchvision stem")
            continue
        first = first_in_block.setdefault(block, conv)
        widths[name] = (matched_rank(first.in_channels, first.out_channels, *first.kernel_size),
                        f"torchvision block {block}")
    return widths


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


FIXED_WIDTH = {"p3d-b": "its two parallel branches have no intermediate width",
               "p3d-c": "its intermediate width is fixed at out_channels"}


def check_rank_is_used(config: R2Plus1DConfig) -> None:
    """Refuse a rank other than the default for the variants whose width is fixed (it would do nothing)."""
    if config.variant in FIXED_WIDTH and config.rank != "match":
        raise ConfigError(
            f"rank={config.rank!r} has no effect with variant {config.variant!r} ({FIXED_WIDTH[config.variant]}); "
            f"leave rank out, or use variant 'r2plus1d' to choose the width")


def check_exclude_patterns(model: nn.Module, config: R2Plus1DConfig) -> None:
    """Refuse ``exclude`` patterns that match no Conv3d name (they would exclude nothing)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv3d)]
    if not names:
        return  # nothing to convert at all: apply_r2plus1d says so
    for pattern in config.exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigError(
                f"exclude pattern {pattern!r} matches no Conv3d of {type(model).__name__}, so it would exclude "
                f"nothing; match the Conv3d names (fnmatch), which look like {one_of(names[:4])}")


def apply_r2plus1d(model: nn.Module, config: R2Plus1DConfig) -> nn.Module:
    """Replace eligible Conv3d layers in place (a bare Conv3d is returned as its block)."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"'r2plus1d' converts torch nn.Module 3D CNNs, got {type(model).__name__}")
    check_rank_is_used(config)
    check_exclude_patterns(model, config)
    report = ConversionReport(variant=config.variant, init=config.init, rank=str(config.rank),
                              mid_activation=config.with_mid_activation, layout=config.layout,
                              solver=config.solver)
    inside_blocks = {f"{n}." for n, m in model.named_modules() if isinstance(m, BLOCKS)}
    targets = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv3d) or any(name.startswith(p) for p in inside_blocks):
            continue
        why = eligible(m)
        pattern = next((p for p in config.exclude if fnmatch.fnmatchcase(name, p)), None)
        if why is None and pattern is not None:
            why = f"excluded by pattern {pattern!r}"
        if why is None:
            _check_supported(name, m)
            targets.append((name, m))
        else:
            report.skipped.append((name, tuple(m.kernel_size), why))
    if not targets:
        found = "; ".join(f"{n or type(model).__name__}: {w}" for n, _, w in report.skipped) or "no nn.Conv3d at all"
        raise UnsupportedModelError(
            f"found no nn.Conv3d with temporal kernel > 1 and spatial kernel > 1 in {type(model).__name__} "
            f"({found}); 'r2plus1d' converts 3D CNNs such as slimkit's 'r3d-18'")
    report.model_params_before = count_params(model)
    if config.variant == "p3d-b" and config.init == "svd":
        warnings.warn(P3D_B_NO_SVD.format(n=len(targets)), UserWarning, stacklevel=3)
    aliases: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, nn.Conv3d):
            aliases.setdefault(id(m), []).append(name)
    widths = torchvision_widths(model, targets) if config.layout == "torchvision" else {}
    from slimkit.progress import bar

    progress = bar(targets, total=len(targets), desc="r2plus1d", unit="conv")
    for name, conv in progress:
        progress.set_postfix_str(f"{name or 'conv'} {tuple(conv.weight.shape)}", refresh=False)
        block, row = convert_conv(name, conv, config, widths.get(name))
        others = [n for n in aliases.get(id(conv), [name]) if n != name]
        if others:  # one conv reachable under several names: all get the same block
            row.note = "; ".join(filter(None, [row.note, f"shared module, also replaced at {', '.join(others)}"]))
        report.layers.append(row)
        if name == "":
            model = block
            continue
        for n in [name, *others]:
            _set_child(model, n, block)
    report.model_params_after = count_params(model)
    if config.variant == "p3d-a":
        report.notes.append("p3d-a is the serial composition T(S(x)), the same operator as r2plus1d")
    if config.variant == "p3d-b":
        report.notes.append("p3d-b cannot be SVD-initialised (sum of restricted-support kernels): random init")
    if config.variant == "p3d-c" and config.init == "svd":
        report.notes.append("p3d-c = T'(S(x)) with T' = T + identity at the centre tap: SVD-initialised at "
                            "width out_channels (exact when out_channels >= full rank)")
    if config.layout == "torchvision":
        report.notes.append("layout='torchvision': one width per residual block, the stem at 45 per 64 channels, "
                            "BatchNorm+ReLU in between" + (": each block is the rank-M//2 SVD approximation of its "
                                                           "3D conv in eval mode (+/- pairs through the ReLU)"
                                                           if config.init == "svd" else ""))
    elif config.mid_activation and config.init == "svd" and config.variant != "p3d-b":
        report.notes.append("mid_activation=True: BatchNorm+ReLU between the convs make each block nonlinear, "
                            "so the SVD kernels are only an initialisation (fine-tune)")
    setattr(model, REPORT_ATTR, report)
    return model


def conversion_report(model: nn.Module) -> ConversionReport:
    """The report of the last ``r2plus1d`` conversion of ``model``."""
    report = getattr(model, REPORT_ATTR, None)
    if report is None:
        raise UnsupportedModelError("this model carries no r2plus1d report; convert it with "
                                    "slimkit.apply(model, 'r2plus1d') first")
    return report
