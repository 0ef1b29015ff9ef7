"""Short fine-tune after pruning (SpAtten prunes, then fine-tunes briefly to recover accuracy).

``distill`` trains a spatten encoder so that its mean-pooled embedding (mean over the kept
tokens, what a sentence-embedding user computes from ``kept_attention_mask``) matches the
unpruned model's mean-pooled embedding (over all real tokens): loss ``1 - cosine``. The
teacher is a frozen copy of the model with spatten removed, so no labels are needed.
"""
from __future__ import annotations

import copy
import time

import torch

from slimkit import SlimkitError
from slimkit.errors import ShapeError

from .textdata import mean_pool


def distill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, steps: int = 200,
            lr: float = 1e-4, batch_size: int = 4, teacher=None, seed: int = 0, show_progress: bool = True) -> dict:
    """Fine-tune the spatten encoder ``model`` in place toward its unpruned self.

    ``input_ids (N, L)`` (and ``attention_mask (N, L)``): unlabeled training passages, sampled
    ``batch_size`` at a time for ``steps`` AdamW steps at learning rate ``lr``. ``teacher``:
    the unpruned model (default: a frozen copy of ``model`` with spatten removed).
    Returns ``{"steps", "seconds", "loss_first", "loss_last", "history"}`` (loss = 1 - cosine,
    mean of each 10 steps in ``history``). Dropout stays off (eval mode) while training.
    """
    from slimkit_nlp.families import resolve_family

    from .transform import remove_spatten

    family = resolve_family(model)
    backbone = family.backbone(model)
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
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise SlimkitError(f"steps and batch_size must be >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")

    if teacher is None:
        teacher = remove_spatten(copy.deepcopy(model))
    t_backbone = resolve_family(teacher).backbone(teacher)
    teacher.eval()
    with torch.inference_mode():
        targets = torch.cat([
            mean_pool(t_backbone(input_ids=input_ids[i:i + 8], attention_mask=attention_mask[i:i + 8])
                       .last_hidden_state, attention_mask[i:i + 8])
            for i in range(0, input_ids.shape[0], 8)])

    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / steps))
    gen = torch.Generator().manual_seed(seed)
    history, window = [], []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="spatten distill", disable=not show_progress, leave=False)
    with torch.enable_grad():
        for step in bar:
            idx = torch.randint(0, input_ids.shape[0], (batch_size,), generator=gen)
            out = backbone(input_ids=input_ids[idx], attention_mask=attention_mask[idx])
            emb = mean_pool(out.last_hidden_state, out.kept_attention_mask)
            loss = (1 - torch.cosine_similarity(emb, targets[idx], dim=-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            window.append(loss.detach().item())
            if len(window) == 10 or step == steps - 1:
                history.append(sum(window) / len(window))
                window = []
                bar.set_postfix(loss=f"{history[-1]:.4f}")
    model.train(was_training)
    return {"steps": steps, "seconds": time.perf_counter() - t0, "loss_first": history[0], "loss_last": history[-1],
            "history": history}
