"""Short fine-tune after pruning (SpAtten prunes, then fine-tunes briefly to recover accuracy).

``distill`` trains a spatten encoder so that its mean-pooled embedding (weighted by
``kept_token_weights``, what a sentence-embedding user computes) matches the unpruned model's
mean-pooled embedding over all real tokens: loss ``1 - cosine``; optionally plus a per-token term
that matches every input token's representative (``token_owner``) to the unpruned model's state
of that token. The teacher is a frozen copy of the model with spatten removed, so no labels are
needed. ``rank`` trains low-rank weight deltas instead of every weight (small enough to ship:
``save_deltas`` / ``load_deltas``).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch import nn

from slimkit import SlimkitError
from slimkit.errors import ShapeError

from .textdata import mean_pool


class LowRankDelta(nn.Module):
    """Weight parametrization ``W + B @ A`` with ``A (r, in)``, ``B (out, r)``; ``B`` starts at zero."""

    def __init__(self, out_features: int, in_features: int, rank: int, generator: torch.Generator):
        super().__init__()
        self.A = nn.Parameter(torch.randn(rank, in_features, generator=generator) / in_features ** 0.5)
        self.B = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.B @ self.A


def _layer_linears(model) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules inside the backbone's transformer layers, by qualified name."""
    from slimkit_nlp.families import resolve_family

    family = resolve_family(model)
    inside = {id(m) for layer in family.layers(family.backbone(model)) for m in layer.modules()}
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, nn.Linear) and id(mod) in inside}


class _Student(nn.Module):
    """The spatten backbone as one module, so accelerate/DDP sees every forward (gradient sync)."""

    def __init__(self, model, backbone):
        super().__init__()
        self.model = model
        self._backbone = [backbone]  # not a submodule: its parameters are already under ``model``

    def forward(self, input_ids, attention_mask):
        out = self._backbone[0](input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.kept_token_weights, out.token_owner


def distill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, steps: int = 200,
            lr: float | None = None, batch_size: int = 4, rank: int | None = None, token_loss: float = 0.0,
            objective: str = "cosine", temperature: float = 0.05, cosine_weight: float = 1.0,
            teacher=None, seed: int = 0, bf16: bool = False, show_progress: bool = True,
            output_dir: str | Path | None = None, save_every: int | None = None, resume: bool | None = None,
            callbacks=(), accelerator=None) -> dict:
    """Fine-tune the spatten encoder ``model`` in place toward its unpruned self.

    ``input_ids (N, L)`` (and ``attention_mask (N, L)``): unlabeled training passages, sampled
    ``batch_size`` at a time for ``steps`` AdamW steps (linear warm-up over 20 steps, linear decay).
    ``rank``: None trains every weight (``lr`` default 5e-5); an integer trains low-rank deltas of the
    layers' linear weights (``lr`` default 1e-3), merged into the weights at the end and returned
    under ``"deltas"`` (``save_deltas`` writes them). ``token_loss``: weight of the per-token term.
    ``objective``: ``"cosine"`` (the paper's recovery: ``1 - cos`` of the mean-pooled embedding to the
    teacher's) or ``"contrastive"`` (toward retrieval: the pruned embedding of passage ``i`` must pick the
    teacher's embedding of passage ``i`` out of the teacher's embeddings of all ``N`` passages: InfoNCE at
    ``temperature``, plus ``cosine_weight`` times the cosine term; it lowers the cosine and raises retrieval).
    ``teacher``: the unpruned model (default: a frozen copy of ``model`` with spatten removed).
    ``bf16``: run the student's forward and backward under bfloat16 autocast (about 1.8x faster on
    CPUs with bf16 matmul; weights, deltas and optimizer state stay float32).
    Returns ``{"steps", "seconds", "loss_first", "loss_last", "history", "deltas"}`` (loss history:
    mean of each 10 steps). Dropout stays off (eval mode) while training.

    Runs on the shared trainer (``slimkit.training``): under ``torchrun``/``accelerate launch`` each
    process draws its own passages and gradients are averaged; with ``output_dir`` it checkpoints
    every ``save_every`` steps and on Ctrl-C (then raises ``TrainingInterrupted``) and resumes by default.
    """
    from slimkit_nlp.families import resolve_family

    family = resolve_family(model)
    backbone = family.backbone(model)
    attention_mask = _check_distill_inputs(model, family, backbone, input_ids, attention_mask, steps, batch_size,
                                           lr, token_loss, rank)
    objective_options = _check_objective(objective, temperature, cosine_weight, input_ids.shape[0])
    targets, token_targets = _teacher_targets(model, teacher, input_ids, attention_mask, token_loss, show_progress)

    from transformers import get_linear_schedule_with_warmup

    from slimkit.progress import bar as progress_bar
    from slimkit.training import TrainLoop, describe_model, tensor_digest

    was_training = model.training
    model.eval()
    params, lr, deltas, frozen = _trainable(model, rank, lr, torch.Generator().manual_seed(seed))
    loop = TrainLoop(output_dir, save_every=save_every, resume=resume, seed=seed, accelerator=accelerator,
                     callbacks=callbacks, fingerprint={
                         "trainer": "spatten-distill", "model": describe_model(model), "data": tensor_digest(input_ids),
                         "steps": steps, "lr": lr, "batch_size": batch_size, "rank": rank, "token_loss": token_loss,
                         "seed": seed, "bf16": bf16, **objective_options})
    student, opt = loop.prepare(_Student(model, backbone), torch.optim.AdamW(params, lr=lr, weight_decay=0.0))
    sched = get_linear_schedule_with_warmup(opt, min(20, steps), steps)
    device = loop.device
    data = [t.to(device) if t is not None else None for t in (input_ids, attention_mask, targets, token_targets)]
    history, window = [], []
    t0 = time.perf_counter()
    try:
        start, extra = loop.restore(student, opt, sched)
        history, window = list(extra.get("history", [])), list(extra.get("window", []))
        bar = progress_bar(range(start, steps), initial=start, total=steps, desc="spatten distill", unit="step",
                           enabled=show_progress and loop.accelerator.is_local_main_process)   # time left per step
        with torch.enable_grad(), loop.signals():
            for step in bar:
                idx = torch.randint(0, data[0].shape[0], (batch_size,), generator=loop.seed_step(step)).to(device)
                loss = _distill_loss(student, data, idx, token_loss, bf16, objective_options)
                opt.zero_grad(set_to_none=True)
                loop.accelerator.backward(loss)
                loop.accelerator.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                window.append(loss.detach().item())
                if len(window) == 10 or step == steps - 1:
                    history.append(sum(window) / len(window))
                    window = []
                    bar.set_postfix(loss=f"{history[-1]:.4f}")
                loop.end_step(step + 1, student, opt, sched, lambda: {"history": history, "window": window},
                              final=step + 1 == steps)
    finally:
        _merge_deltas(model, deltas, frozen)
        model.train(was_training)
    factors = {name: (d.B.detach().clone(), d.A.detach().clone()) for name, d in deltas.items()}
    return {"steps": steps, "seconds": time.perf_counter() - t0, "loss_first": history[0], "loss_last": history[-1],
            "history": history, "deltas": factors}


def _check_distill_inputs(model, family, backbone, input_ids, attention_mask, steps, batch_size, lr, token_loss,
                          rank) -> torch.Tensor:
    """Refuse what ``distill`` cannot do; return the attention mask (all ones when not given)."""
    if getattr(backbone, "_spatten_runtime", None) is None:
        raise SlimkitError("distill needs a spatten model: run slimkit.apply(model, 'spatten', ...) first")
    if family.causal:
        raise SlimkitError(f"distill supports encoders (BERT, RoBERTa); {type(model).__name__} is a decoder. "
                           f"For decoders, fine-tune with the usual language-model loss on the spatten model")
    if not (isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[0] > 0):
        raise ShapeError(f"input_ids must be a (passages, length) tensor, got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ShapeError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    if steps < 1 or batch_size < 1 or (lr is not None and not lr > 0) or token_loss < 0:
        raise SlimkitError(f"steps and batch_size must be >= 1, lr > 0 and token_loss >= 0, got {steps}, "
                           f"{batch_size}, {lr}, {token_loss}")
    if rank is not None and rank < 1:
        raise SlimkitError(f"rank must be a positive integer (or None to train every weight), got {rank}")
    return attention_mask


@torch.inference_mode()
def _teacher_targets(model, teacher, input_ids, attention_mask, token_loss: float, show_progress: bool = False):
    """The unpruned model's mean-pooled embeddings ``(N, H)`` and, with ``token_loss``, its states ``(N, L, H)``."""
    from slimkit.progress import bar
    from slimkit_nlp.families import resolve_family

    from .transform import remove_spatten

    if teacher is None:
        teacher = remove_spatten(copy.deepcopy(model))
    t_backbone = resolve_family(teacher).backbone(teacher)
    teacher.eval()
    states = [t_backbone(input_ids=input_ids[i:i + 8], attention_mask=attention_mask[i:i + 8]).last_hidden_state
              for i in bar(range(0, input_ids.shape[0], 8), desc="teacher embeddings", unit="batch",
                           enabled=show_progress)]
    targets = torch.cat([mean_pool(s, attention_mask[i * 8:(i + 1) * 8]) for i, s in enumerate(states)])
    return targets, (torch.cat(states) if token_loss > 0 else None)


def _trainable(model, rank, lr, gen: torch.Generator):
    """``(params, lr, deltas, frozen)``: every weight (``rank=None``, lr 5e-5 by default) or low-rank deltas
    of the layers' linear weights (lr 1e-3 by default; the other weights frozen, listed in ``frozen``)."""
    if rank is None:
        return [p for p in model.parameters() if p.requires_grad], (5e-5 if lr is None else lr), {}, []
    import torch.nn.utils.parametrize as parametrize

    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    deltas: dict[str, LowRankDelta] = {}
    for name, lin in _layer_linears(model).items():
        deltas[name] = LowRankDelta(lin.out_features, lin.in_features, rank, gen)
        parametrize.register_parametrization(lin, "weight", deltas[name])
    return [p for d in deltas.values() for p in d.parameters()], (1e-3 if lr is None else lr), deltas, frozen


def _check_objective(objective: str, temperature: float, cosine_weight: float, passages: int) -> dict:
    """The objective's options for the fingerprint, or a clear error."""
    if objective == "cosine":
        return {"objective": "cosine"}
    if objective != "contrastive":
        raise SlimkitError(f"objective must be 'cosine' or 'contrastive', got {objective!r}")
    if not temperature > 0 or cosine_weight < 0:
        raise SlimkitError(f"the contrastive objective needs temperature > 0 and cosine_weight >= 0, got "
                           f"{temperature} and {cosine_weight}")
    if passages < 2:
        raise SlimkitError("the contrastive objective needs at least 2 passages (the others are the negatives)")
    return {"objective": "contrastive", "temperature": temperature, "cosine_weight": cosine_weight}


def _distill_loss(student, data, idx, token_loss: float, bf16: bool, objective: dict) -> torch.Tensor:
    """``1 - cos`` of the pruned mean-pooled embedding to the teacher's (times ``cosine_weight`` under the
    contrastive objective, which adds InfoNCE of that embedding against all teacher embeddings, the target
    being the passage's own), plus ``token_loss`` times the per-token term (each input token's
    representative against the teacher's state of that token)."""
    input_ids, attention_mask, targets, token_targets = data
    with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        hidden, kept, owner = student(input_ids[idx], attention_mask[idx])
    emb = mean_pool(hidden.float(), kept.float())
    loss = (1 - torch.cosine_similarity(emb, targets[idx], dim=-1)).mean()
    if objective["objective"] == "contrastive":
        logits = (torch.nn.functional.normalize(emb, dim=-1) @ torch.nn.functional.normalize(targets, dim=-1).T
                  / objective["temperature"])
        loss = torch.nn.functional.cross_entropy(logits, idx) + objective["cosine_weight"] * loss
    if token_loss > 0:
        rec = hidden.float().gather(1, owner.clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1]))
        ok = (owner >= 0).to(rec.dtype)
        tok = (1 - torch.cosine_similarity(rec, token_targets[idx], dim=-1)) * ok
        loss = loss + token_loss * tok.sum() / ok.sum().clamp(min=1.0)
    return loss


def _merge_deltas(model, deltas: dict, frozen: list) -> None:
    """Fold trained low-rank deltas into the weights (``W + B @ A``) and unfreeze the weights."""
    if not deltas:
        return
    import torch.nn.utils.parametrize as parametrize

    for _, lin in _layer_linears(model).items():
        if parametrize.is_parametrized(lin, "weight"):
            parametrize.remove_parametrizations(lin, "weight", leave_parametrized=True)
    for p in frozen:
        p.requires_grad_(True)


def save_deltas(deltas: dict, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``distill(..., rank=r)["deltas"]`` (``{linear name: (B, A)}``) as one safetensors file."""
    from slimkit.io import save_safetensors

    p = Path(path)
    tensors = {}
    for name, (b, a) in deltas.items():
        tensors[f"{name}.B"] = b.to(dtype).contiguous()
        tensors[f"{name}.A"] = a.to(dtype).contiguous()
    save_safetensors(tensors, p, metadata={"format": "slimkit-lowrank-deltas", "version": "1"})
    return p


@torch.no_grad()
def load_deltas(model, path: str | Path) -> int:
    """Add the low-rank deltas saved by ``save_deltas`` to ``model``'s linear weights (``W += B @ A``).

    Returns the number of weights changed; a delta whose layer is missing or has another shape is an error.
    """
    from safetensors import safe_open

    from slimkit.io import check_safetensors

    p = Path(path)
    if not p.exists():
        raise SlimkitError(f"no delta file at {str(p)!r}; make one with distill(..., rank=r) and save_deltas")
    check_safetensors(p, fix="make it again with distill(..., rank=r) and save_deltas")
    modules = dict(model.named_modules())
    with safe_open(str(p), framework="pt") as f:
        names = sorted({k.rsplit(".", 1)[0] for k in f.keys()})
        for name in names:
            lin = modules.get(name)
            b, a = f.get_tensor(f"{name}.B").float(), f.get_tensor(f"{name}.A").float()
            if not isinstance(lin, nn.Linear) or lin.weight.shape != (b.shape[0], a.shape[1]):
                raise SlimkitError(f"{str(p)!r} has a delta for {name!r} of shape {(b.shape[0], a.shape[1])}, which "
                                   f"this model does not have; load it into the model it was trained on")
            lin.weight += (b @ a).to(lin.weight.dtype)
    return len(names)
