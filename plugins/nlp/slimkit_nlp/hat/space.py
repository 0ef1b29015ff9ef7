"""HAT design space and SubTransformer architectures.

``HatSpace`` lists the choices (elastic embedding dim per side, FFN dim and heads per
layer, layer counts, arbitrary encoder-decoder attention span); it round-trips through
YAML or JSON. ``SubConfig`` is one sampled architecture (per-layer lists hold only
the layers that run). Sampling is seeded: ``sample_sub(space, step, seed)`` gives the
same SubTransformer in every process for a given training step.
"""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimkit.errors import ConfigError, one_of
from slimkit.io import FileFormatError, atomic_write_text, read_json

TASKS = ("encdec", "decoder")


def _ints(name: str, v: Any) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
        raise ConfigError(f"space field {name!r} must be a non-empty list of positive integers, got {v!r}")
    return sorted(set(int(x) for x in v))


@dataclass
class HatSpace:
    """The SuperTransformer's design space (defaults: a CPU-sized IWSLT-like space).

    ``task``: ``"encdec"`` (encoder-decoder, arbitrary encoder-decoder attention) or
    ``"decoder"`` (decoder-only language model; encoder fields are ignored).
    ``qkv_dim`` is the fixed q/k/v width; head dim = ``qkv_dim / heads``.
    ``ende_span_choices``: each decoder layer attends to the last 1, 2 or 3 encoder layers.
    """

    task: str = "encdec"
    vocab_size: int = 256
    max_positions: int = 256
    encoder_embed_choices: list = field(default_factory=lambda: [192, 256, 384])
    decoder_embed_choices: list = field(default_factory=lambda: [192, 256, 384])
    encoder_layer_choices: list = field(default_factory=lambda: [4])
    decoder_layer_choices: list = field(default_factory=lambda: [1, 2, 3, 4])
    encoder_ffn_choices: list = field(default_factory=lambda: [384, 768, 1536])
    decoder_ffn_choices: list = field(default_factory=lambda: [384, 768, 1536])
    encoder_head_choices: list = field(default_factory=lambda: [2, 4])
    decoder_head_choices: list = field(default_factory=lambda: [2, 4])
    ende_head_choices: list = field(default_factory=lambda: [2, 4])
    ende_span_choices: list = field(default_factory=lambda: [1, 2, 3])
    qkv_dim: int = 256
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self) -> None:
        self.validate()

    # -- checks -------------------------------------------------------------------------
    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"space task must be one of {one_of(TASKS)}, got {self.task!r}")
        for f in dataclasses.fields(self):
            if f.name.endswith("_choices"):
                setattr(self, f.name, _ints(f.name, getattr(self, f.name)))
        for name in ("vocab_size", "max_positions", "qkv_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"space field {name!r} must be a positive integer, got {v!r}")
        if self.activation not in ("relu", "gelu", "gelu_new"):
            raise ConfigError(f"space activation must be one of 'relu', 'gelu', 'gelu_new', got {self.activation!r}")
        heads = self.decoder_head_choices + (self.encoder_head_choices + self.ende_head_choices
                                             if self.task == "encdec" else [])
        bad = [h for h in heads if self.qkv_dim % h]
        if bad:
            raise ConfigError(f"qkv_dim {self.qkv_dim} is not divisible by {bad[0]} heads; "
                              f"choose head counts that divide qkv_dim")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"space dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < self.vocab_size:
                raise ConfigError(f"space field {name!r} must be a token id in [0, vocab_size={self.vocab_size}), "
                                  f"got {v!r}; use an id inside the vocabulary")
        if self.is_encdec and max(self.ende_span_choices) > max(self.encoder_layer_choices):
            raise ConfigError(f"ende_span_choices {self.ende_span_choices} holds a span of "
                              f"{max(self.ende_span_choices)} encoder layers but the encoder has at most "
                              f"{max(self.encoder_layer_choices)}, so that choice would silently attend to fewer; "
                              f"use spans of at most {max(self.encoder_layer_choices)}")
        if all(len(c) == 1 for c in self.gene_choices()):
            raise ConfigError("the space holds a single architecture (every choice list has one value), so HAT "
                              "would have nothing to train, measure or search over; give at least one "
                              "*_choices field two values")
        self.dropout = float(self.dropout)
        self.layer_norm_eps = float(self.layer_norm_eps)

    # -- maxima -------------------------------------------------------------------------
    @property
    def is_encdec(self) -> bool:
        return self.task == "encdec"

    def largest(self) -> "SubConfig":
        """The largest SubTransformer (every choice at its maximum)."""
        ne, nd = max(self.encoder_layer_choices), max(self.decoder_layer_choices)
        enc = self.is_encdec
        return SubConfig(
            encoder_embed_dim=max(self.encoder_embed_choices) if enc else 0,
            encoder_layers=ne if enc else 0,
            encoder_ffn_dims=[max(self.encoder_ffn_choices)] * ne if enc else [],
            encoder_heads=[max(self.encoder_head_choices)] * ne if enc else [],
            decoder_embed_dim=max(self.decoder_embed_choices),
            decoder_layers=nd,
            decoder_ffn_dims=[max(self.decoder_ffn_choices)] * nd,
            decoder_heads=[max(self.decoder_head_choices)] * nd,
            ende_heads=[max(self.ende_head_choices)] * nd if enc else [],
            ende_spans=[max(self.ende_span_choices)] * nd if enc else [],
        )

    def smallest(self) -> "SubConfig":
        ne, nd = min(self.encoder_layer_choices), min(self.decoder_layer_choices)
        enc = self.is_encdec
        return SubConfig(
            encoder_embed_dim=min(self.encoder_embed_choices) if enc else 0,
            encoder_layers=ne if enc else 0,
            encoder_ffn_dims=[min(self.encoder_ffn_choices)] * ne if enc else [],
            encoder_heads=[min(self.encoder_head_choices)] * ne if enc else [],
            decoder_embed_dim=min(self.decoder_embed_choices),
            decoder_layers=nd,
            decoder_ffn_dims=[min(self.decoder_ffn_choices)] * nd,
            decoder_heads=[min(self.decoder_head_choices)] * nd,
            ende_heads=[min(self.ende_head_choices)] * nd if enc else [],
            ende_spans=[min(self.ende_span_choices)] * nd if enc else [],
        )

    # -- genes (fixed-length vectors for evolution) -------------------------------------
    def gene_choices(self) -> list[list[int]]:
        """Choices per gene position; a gene holds values for every layer up to the maximum."""
        ne, nd = max(self.encoder_layer_choices), max(self.decoder_layer_choices)
        g: list[list[int]] = []
        if self.is_encdec:
            g += [self.encoder_embed_choices, self.encoder_layer_choices]
            g += [self.encoder_ffn_choices] * ne + [self.encoder_head_choices] * ne
        g += [self.decoder_embed_choices, self.decoder_layer_choices]
        g += [self.decoder_ffn_choices] * nd + [self.decoder_head_choices] * nd
        if self.is_encdec:
            g += [self.ende_head_choices] * nd + [self.ende_span_choices] * nd
        return g

    def decode_gene(self, gene: list[int]) -> "SubConfig":
        ne, nd = max(self.encoder_layer_choices), max(self.decoder_layer_choices)
        it = iter(gene)
        take = lambda n: [next(it) for _ in range(n)]  # noqa: E731
        kw: dict[str, Any] = {}
        if self.is_encdec:
            kw["encoder_embed_dim"], kw["encoder_layers"] = take(2)
            ffn, heads = take(ne), take(ne)
            kw["encoder_ffn_dims"] = ffn[: kw["encoder_layers"]]
            kw["encoder_heads"] = heads[: kw["encoder_layers"]]
        kw["decoder_embed_dim"], kw["decoder_layers"] = take(2)
        n = kw["decoder_layers"]
        kw["decoder_ffn_dims"], kw["decoder_heads"] = take(nd)[:n], take(nd)[:n]
        if self.is_encdec:
            kw["ende_heads"], kw["ende_spans"] = take(nd)[:n], take(nd)[:n]
        return SubConfig(**kw)

    def random_gene(self, rng: random.Random) -> list[int]:
        return [rng.choice(c) for c in self.gene_choices()]

    def sample(self, rng: random.Random) -> "SubConfig":
        """A SubTransformer drawn uniformly (every gene independently)."""
        return self.decode_gene(self.random_gene(rng))

    def check(self, sub: "SubConfig") -> None:
        """Raise ``ConfigError`` when ``sub`` is not inside this space."""
        def inside(name, values, choices):
            for v in values:
                if v not in choices:
                    raise ConfigError(f"SubTransformer {name}={v} is outside the space; choose one of {one_of(choices)}")
        inside("decoder_embed_dim", [sub.decoder_embed_dim], self.decoder_embed_choices)
        inside("decoder_layers", [sub.decoder_layers], self.decoder_layer_choices)
        inside("decoder_ffn_dims", sub.decoder_ffn_dims, self.decoder_ffn_choices)
        inside("decoder_heads", sub.decoder_heads, self.decoder_head_choices)
        if self.is_encdec:
            inside("encoder_embed_dim", [sub.encoder_embed_dim], self.encoder_embed_choices)
            inside("encoder_layers", [sub.encoder_layers], self.encoder_layer_choices)
            inside("encoder_ffn_dims", sub.encoder_ffn_dims, self.encoder_ffn_choices)
            inside("encoder_heads", sub.encoder_heads, self.encoder_head_choices)
            inside("ende_heads", sub.ende_heads, self.ende_head_choices)
            inside("ende_spans", sub.ende_spans, self.ende_span_choices)
        elif sub.encoder_layers:
            raise ConfigError("a decoder-only space has no encoder; set encoder_layers=0")

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HatSpace":
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in valid]
        if unknown:
            raise ConfigError(f"unknown space field {unknown[0]!r}; valid fields are {one_of(sorted(valid))}")
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Write the space as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        p = Path(path)
        if p.suffix in (".yaml", ".yml"):
            import yaml
            atomic_write_text(p, yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            atomic_write_text(p, json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path) -> "HatSpace":
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"no space file at {str(p)!r}; write one with HatSpace().save(path)")
        fix = "write it again with HatSpace.save(path)"
        if p.suffix in (".yaml", ".yml"):
            import yaml
            try:
                data = yaml.safe_load(p.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
                raise FileFormatError(f"space file {str(p)!r} cannot be read as YAML ({type(e).__name__}), "
                                      f"probably truncated or edited by hand; {fix}") from None
        else:
            data = read_json(p, "space file", fix)
        if not isinstance(data, dict):
            raise ConfigError(f"{str(p)!r} does not hold a mapping of space fields")
        return cls.from_dict(data)


@dataclass
class SubConfig:
    """One SubTransformer; per-layer lists hold exactly the layers that run."""

    decoder_embed_dim: int
    decoder_layers: int
    decoder_ffn_dims: list
    decoder_heads: list
    encoder_embed_dim: int = 0
    encoder_layers: int = 0
    encoder_ffn_dims: list = field(default_factory=list)
    encoder_heads: list = field(default_factory=list)
    ende_heads: list = field(default_factory=list)
    ende_spans: list = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("decoder_ffn_dims", "decoder_heads", "encoder_ffn_dims", "encoder_heads",
                     "ende_heads", "ende_spans"):
            setattr(self, name, [int(x) for x in getattr(self, name)])
        if len(self.decoder_ffn_dims) != self.decoder_layers or len(self.decoder_heads) != self.decoder_layers:
            raise ConfigError("SubConfig decoder_ffn_dims and decoder_heads need one entry per decoder layer")
        if self.encoder_layers and (len(self.encoder_ffn_dims) != self.encoder_layers
                                    or len(self.encoder_heads) != self.encoder_layers
                                    or len(self.ende_heads) != self.decoder_layers
                                    or len(self.ende_spans) != self.decoder_layers):
            raise ConfigError("SubConfig encoder lists need one entry per encoder layer and ende lists "
                              "one entry per decoder layer")

    @property
    def is_encdec(self) -> bool:
        return self.encoder_layers > 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SubConfig":
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in valid]
        if unknown:
            raise ConfigError(f"unknown SubConfig field {unknown[0]!r}; valid fields are {one_of(sorted(valid))}")
        return cls(**data)

    def key(self) -> str:
        """A canonical string (for caches and deduplication)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def features(self) -> list[float]:
        """HAT's predictor features (raw): encoder embed, layers, mean FFN, mean heads;
        decoder embed, layers, mean FFN, mean self heads, mean enc-dec heads, mean span.
        Decoder-only configs give the 4 decoder features."""
        mean = lambda v: sum(v) / len(v) if v else 0.0  # noqa: E731
        dec = [float(self.decoder_embed_dim), float(self.decoder_layers),
               mean(self.decoder_ffn_dims), mean(self.decoder_heads)]
        if not self.is_encdec:
            return dec
        return [float(self.encoder_embed_dim), float(self.encoder_layers), mean(self.encoder_ffn_dims),
                mean(self.encoder_heads), *dec, mean(self.ende_heads), mean(self.ende_spans)]


FEATURE_NAMES_ENCDEC = ["encoder_embed", "encoder_layers", "encoder_ffn_mean", "encoder_heads_mean",
                        "decoder_embed", "decoder_layers", "decoder_ffn_mean", "decoder_heads_mean",
                        "ende_heads_mean", "ende_span_mean"]
FEATURE_NAMES_DECODER = FEATURE_NAMES_ENCDEC[4:8]


def step_rng(step: int, seed: int = 0) -> random.Random:
    """The RNG for training step ``step``: identical in every process."""
    return random.Random(f"hat-{seed}-{step}")


def sample_sub(space: HatSpace, step: int, seed: int = 0) -> SubConfig:
    """The SubTransformer trained at ``step`` (uniform; seeded by the step number)."""
    return space.sample(step_rng(step, seed))


def sample_keys(space_dict: dict, steps: int, seed: int = 0) -> list[str]:
    """Keys of the SubTransformers for steps ``0..steps-1`` (used to check agreement across processes)."""
    space = HatSpace.from_dict(space_dict)
    return [sample_sub(space, s, seed).key() for s in range(steps)]
