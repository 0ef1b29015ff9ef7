"""Training tasks for the SuperTransformer.

* ``LMTask``: causal language modelling on byte ids (Shakespeare by default, or any text:
  local files or a ``datasets`` dataset), random blocks of ``block`` tokens.
* ``Seq2SeqTask``: a generated digit-string task (``reverse``, ``sort`` or ``shift`` =
  add 1 mod 10 to every digit); vocabulary pad 0, bos 1, eos 2, digits 3..12.
* ``NextLineTask`` (``shakespeare-lines``): next line of a play from the current line (bytes).

Both give ``batch(generator, batch_size) -> dict`` and ``loss(net, sub, batch)`` (mean
token cross-entropy), and a fixed validation set ``val_batches()``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from slimkit.errors import ConfigError

PAD, BOS, EOS, DIGIT0 = 0, 1, 2, 3
SEQ2SEQ_KINDS = ("reverse", "sort", "shift")


class LMTask:
    """Next-token prediction on a byte-level corpus."""

    is_encdec = False
    vocab_size = 256

    def __init__(self, train_ids: torch.Tensor, val_ids: torch.Tensor, block: int = 64, val_blocks: int = 32):
        if len(train_ids) <= block + 1 or len(val_ids) <= block + 1:
            raise ConfigError(f"the text is shorter than one block of {block} tokens; use more text or a smaller block")
        self.train_ids, self.val_ids, self.block = train_ids, val_ids, block
        self.val_blocks = val_blocks

    @classmethod
    def shakespeare(cls, block: int = 64, val_chars: int | None = 200_000, **kw) -> "LMTask":
        from slimkit_nlp.data import load_text
        tr, va = load_text("train"), load_text("validation")
        if val_chars:
            va = va[:val_chars]
        return cls(_bytes(tr), _bytes(va), block, **kw)

    @classmethod
    def from_text(cls, train: str, validation: str, block: int = 64, **kw) -> "LMTask":
        return cls(_bytes(train), _bytes(validation), block, **kw)

    @classmethod
    def from_dataset(cls, name: str, text_field: str = "text", config: str | None = None, block: int = 64,
                     **kw) -> "LMTask":
        """Any text dataset through ``datasets``: a hub name available offline, a local
        dataset folder, or ``.txt`` files / a folder of them (the ``text`` builder)."""
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        try:
            from datasets import load_dataset
        except ImportError:  # pragma: no cover
            from slimkit.errors import MissingExtraError
            from slimkit.registry import install_command

            raise MissingExtraError(f"loading a text dataset needs `datasets`: {install_command('nlp')}") from None
        p = Path(name)
        try:
            if p.exists():
                files = sorted(str(f) for f in p.glob("*.txt")) if p.is_dir() else [str(p)]
                ds = load_dataset("text", data_files={"train": files}, sample_by="document")["train"]
                text = "\n\n".join(ds["text"])
                cut = int(len(text) * 0.9)
                return cls.from_text(text[:cut], text[cut:], block, **kw)
            ds = load_dataset(name, config)
        except Exception as e:  # datasets raises many types
            raise ConfigError(f"could not load text dataset {name!r} ({type(e).__name__}: {str(e)[:200]}); "
                              f"pass a local .txt file or folder, or a dataset cached offline") from None
        splits = list(ds.keys())
        if text_field not in ds[splits[0]].column_names:
            raise ConfigError(f"dataset {name!r} has no {text_field!r} column; pick one of {ds[splits[0]].column_names}")
        train = "\n".join(ds["train" if "train" in ds else splits[0]][text_field])
        val_split = next((s for s in ("validation", "valid", "test") if s in ds), None)
        if val_split is None:
            cut = int(len(train) * 0.9)
            train, val = train[:cut], train[cut:]
        else:
            val = "\n".join(ds[val_split][text_field])
        return cls.from_text(train, val, block, **kw)

    def batch(self, g: torch.Generator, batch_size: int) -> dict:
        starts = torch.randint(0, len(self.train_ids) - self.block - 1, (batch_size,), generator=g)
        return {"input_ids": torch.stack([self.train_ids[s: s + self.block] for s in starts.tolist()])}

    def val_batches(self, batch_size: int = 16) -> list[dict]:
        n = len(self.val_ids) - self.block - 1
        stride = max(1, n // self.val_blocks)
        blocks = [self.val_ids[i * stride: i * stride + self.block] for i in range(self.val_blocks)]
        return [{"input_ids": torch.stack(blocks[i: i + batch_size])} for i in range(0, len(blocks), batch_size)]

    def loss(self, net, sub, batch: dict, reduction: str = "mean") -> torch.Tensor:
        ids = batch["input_ids"]
        logits = net(sub, ids)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                               reduction=reduction)


def _bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


class Seq2SeqTask:
    """Generated digit strings: source length uniform in ``[min_len, max_len]`` (padded)."""

    is_encdec = True
    vocab_size = 13

    def __init__(self, kind: str = "reverse", min_len: int = 4, max_len: int = 12, val_size: int = 128,
                 val_seed: int = 1234):
        if kind not in SEQ2SEQ_KINDS:
            raise ConfigError(f"unknown seq2seq task {kind!r}; use one of {', '.join(SEQ2SEQ_KINDS)}")
        if not 1 <= min_len <= max_len:
            raise ConfigError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
        self.kind, self.min_len, self.max_len = kind, min_len, max_len
        self._val = self._make(torch.Generator().manual_seed(val_seed), val_size)

    def target(self, digits: list[int]) -> list[int]:
        if self.kind == "reverse":
            return digits[::-1]
        if self.kind == "sort":
            return sorted(digits)
        return [(d + 1) % 10 for d in digits]

    def _make(self, g: torch.Generator, n: int) -> dict:
        lens = torch.randint(self.min_len, self.max_len + 1, (n,), generator=g).tolist()
        digits = torch.randint(0, 10, (n, self.max_len), generator=g).tolist()
        src = torch.full((n, self.max_len), PAD)
        mask = torch.zeros((n, self.max_len), dtype=torch.long)
        labels = torch.full((n, self.max_len + 1), -100)
        dec = torch.full((n, self.max_len + 1), PAD)
        for i, (L, d) in enumerate(zip(lens, digits)):
            d = d[:L]
            src[i, :L] = torch.tensor(d) + DIGIT0
            mask[i, :L] = 1
            tgt = [x + DIGIT0 for x in self.target(d)] + [EOS]
            labels[i, : L + 1] = torch.tensor(tgt)
            dec[i, : L + 1] = torch.tensor([BOS] + tgt[:-1])
        return {"input_ids": src, "attention_mask": mask, "decoder_input_ids": dec, "labels": labels}

    def batch(self, g: torch.Generator, batch_size: int) -> dict:
        return self._make(g, batch_size)

    def val_batches(self, batch_size: int = 64) -> list[dict]:
        n = self._val["input_ids"].shape[0]
        return [{k: v[i: i + batch_size] for k, v in self._val.items()} for i in range(0, n, batch_size)]

    def loss(self, net, sub, batch: dict, reduction: str = "mean") -> torch.Tensor:
        logits = net(sub, batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                               ignore_index=-100, reduction=reduction)


class NextLineTask(Seq2SeqTask):
    """Shakespeare next line: source = one line of a play, target = the following line
    (bytes + 3, so pad 0, bos 1, eos 2; vocabulary 259; both truncated to ``max_len``).
    Unlike the digit tasks it does not saturate, so bigger SubTransformers keep winning."""

    vocab_size = 259

    def __init__(self, max_len: int = 32, val_size: int = 256, val_seed: int = 1234):
        from slimkit_nlp.data import load_text
        self.kind, self.min_len, self.max_len = "next-line", 1, max_len
        self._train = self._pairs(load_text("train"))
        pairs = self._pairs(load_text("validation"))
        g = torch.Generator().manual_seed(val_seed)
        self._val = self._collate([pairs[i] for i in torch.randperm(len(pairs), generator=g)[:val_size].tolist()])

    def _pairs(self, text: str) -> list:
        lines = [ln.strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if len(ln) >= 8]
        enc = [list(ln.encode("utf-8"))[: self.max_len] for ln in lines]
        return list(zip(enc[:-1], enc[1:]))

    def _collate(self, pairs: list) -> dict:
        n, L = len(pairs), self.max_len
        src = torch.full((n, L), PAD)
        mask = torch.zeros((n, L), dtype=torch.long)
        labels = torch.full((n, L + 1), -100)
        dec = torch.full((n, L + 1), PAD)
        for i, (a, b) in enumerate(pairs):
            src[i, : len(a)] = torch.tensor(a) + DIGIT0
            mask[i, : len(a)] = 1
            tgt = [x + DIGIT0 for x in b] + [EOS]
            labels[i, : len(tgt)] = torch.tensor(tgt)
            dec[i, : len(tgt)] = torch.tensor([BOS] + tgt[:-1])
        return {"input_ids": src, "attention_mask": mask, "decoder_input_ids": dec, "labels": labels}

    def batch(self, g: torch.Generator, batch_size: int) -> dict:
        idx = torch.randint(0, len(self._train), (batch_size,), generator=g).tolist()
        return self._collate([self._train[i] for i in idx])


def count_targets(task, batch: dict) -> int:
    if task.is_encdec:
        return int((batch["labels"] != -100).sum())
    return int(batch["input_ids"][:, 1:].numel())


@torch.no_grad()
def evaluate(net, sub, task, batches: list[dict]) -> float:
    """Mean token cross-entropy (nats) of ``sub`` over ``batches`` (inherited weights, eval mode)."""
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    total, n = 0.0, 0
    for b in batches:
        b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
        total += float(task.loss(net, sub, b, reduction="sum"))
        n += count_targets(task, b)
    net.train(was)
    return total / max(n, 1)


def make_task(name: str, block: int = 64, **kw):
    """``"shakespeare"``, ``"shakespeare-lines"``, ``"reverse"``/``"sort"``/``"shift"``, or a text dataset name / path."""
    if name in SEQ2SEQ_KINDS:
        return Seq2SeqTask(name, **kw)
    if name == "shakespeare-lines":
        return NextLineTask(**kw)
    if name == "shakespeare":
        return LMTask.shakespeare(block)
    return LMTask.from_dataset(name, block=block)
