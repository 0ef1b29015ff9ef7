"""Latency dataset on the machine it runs on (HAT protocol).

Each sampled SubTransformer is exported as a dense model (random weights; latency does
not depend on values) and timed at batch 1: ``warmup`` untimed runs, then ``runs``
timed runs, reporting the trimmed mean (10% from each end). One run = the encoder once
over ``src_len`` tokens plus ``steps`` incremental decoding steps with a KV cache
(decoder-only: a ``src_len`` prompt, then ``steps`` incremental steps). Rows go to a CSV;
a rerun appends only the missing samples (sample ``i`` is seeded by ``i``).

Everything that changes the numbers (the protocol in ``MeasureSettings``, the sampling seed, batch 1
on the CPU, the machine's CPU and torch version, the design space) is stored beside the CSV in
``<csv>.settings.json``. A rerun with other settings is refused with the list of differences (measure
into a new CSV, or ``overwrite=True`` / ``--overwrite``), so one CSV never mixes measurements, and
``fit-predictor`` reads the lengths and the space from it. The CSV is rewritten whole and atomically
(``slimkit.io.atomic_write_text``) after every row, so a kill leaves the rows measured so far; a cut
last row (from an older slimkit that appended in place) is measured again on resume and refused by
``read_csv``.

On a shared machine whose load drifts over minutes (other jobs), set
``MeasureSettings(reference=True)``: every timed run of a candidate is paired with a run
of a fixed reference SubTransformer (order alternating), and the latency reported is
``trimmed_mean(candidate_i / reference_i, ratio_trim) * reference_ms``, where ``reference_ms`` is the
reference's own latency measured once per CSV (kept in ``<csv>.reference.json``). Load
that slows both alike cancels in the ratio; ``raw_ms`` keeps the plain trimmed mean.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from slimkit.errors import ConfigError
from slimkit.io import FileFormatError, atomic_write_json, atomic_write_text, read_json
from slimkit.measure import measure_latency

from .export import random_model
from .space import HatSpace, SubConfig

CSV_FIELDS = ["index", "config", "latency_ms", "median_ms", "p95_ms", "std_ms", "runs", "threads", "raw_ms", "ratio"]


@dataclass
class MeasureSettings:
    """HAT protocol knobs: source length, decoding steps, warm-up, timed runs, threads."""

    src_len: int = 16
    steps: int = 8
    warmup: int = 5
    runs: int = 20
    threads: int = 1
    trim: float = 0.1
    reference: bool = False
    ratio_trim: float = 0.25  # paired mode: interquartile mean of the per-pair ratios (robust to load spikes)

    def __post_init__(self) -> None:
        for name, least in (("src_len", 1), ("steps", 1), ("warmup", 0), ("runs", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise ConfigError(f"measure setting {name!r} must be an integer >= {least}, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 0):
            raise ConfigError(f"measure setting 'threads' must be an integer >= 1 (0 or None: torch's default), "
                              f"got {self.threads!r}")
        for name in ("trim", "ratio_trim"):
            v = getattr(self, name)
            if not 0.0 <= v < 0.5:
                raise ConfigError(f"measure setting {name!r} must be in [0, 0.5) (the share dropped from each end), "
                                  f"got {v!r}; at 0.5 or more nothing would be left to average")

    def check_space(self, space: HatSpace) -> None:
        """``ConfigError`` when a run would read positions beyond ``space.max_positions``."""
        need, what = ((self.src_len, "src_len") if space.is_encdec else (self.src_len + self.steps - 1,
                                                                           "src_len + steps - 1"))
        for n, label in ((need, what),) + (((self.steps, "steps"),) if space.is_encdec else ()):
            if n > space.max_positions:
                raise ConfigError(f"measuring with {label} = {n} positions exceeds the space's max_positions="
                                  f"{space.max_positions}; lower --src-len / --steps or raise max_positions")


def decode_workload(model, src_len: int, steps: int, seed: int = 0) -> Callable[[], torch.Tensor]:
    """A closure running the encoder once + ``steps`` greedy incremental decoding steps."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, cfg.vocab_size, (1, src_len), generator=g)
    if cfg.encoder_layers > 0:
        start = torch.full((1, 1), cfg.decoder_start_token_id, dtype=torch.long)

        def run():
            states = model.encode(src)
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            ids = start
            for _ in range(steps):
                logits = model.decoder(ids, None, states, None, cache)
                ids = logits[:, -1:].argmax(-1)
            return ids
    else:
        def run():
            cache = DynamicCache()
            logits = model.decoder(src, None, cache=cache)
            ids = logits[:, -1:].argmax(-1)
            for _ in range(steps - 1):
                logits = model.decoder(ids, None, cache=cache)
                ids = logits[:, -1:].argmax(-1)
            return ids
    return run


def measure_model(model, settings: MeasureSettings) -> dict:
    """Time one dense model with the HAT protocol; returns the latency row fields (ms)."""
    fn = decode_workload(model, settings.src_len, settings.steps)
    res = measure_latency(fn, warmup=settings.warmup, runs=settings.runs, threads=settings.threads,
                          trim=settings.trim)
    return {"latency_ms": res.trimmed_mean_ms, "median_ms": res.median_ms, "p95_ms": res.p95_ms,
            "std_ms": res.std_ms, "runs": res.runs, "threads": res.threads}


def measure_paired(model, ref_model, settings: MeasureSettings, ref_ms: float) -> dict:
    """Candidate runs interleaved with reference runs; latency = trimmed mean ratio x ``ref_ms``."""
    import statistics
    import time

    from slimkit.measure import fixed_threads, trimmed_mean
    fn = decode_workload(model, settings.src_len, settings.steps)
    ref = decode_workload(ref_model, settings.src_len, settings.steps)
    cand, refs = [], []
    with fixed_threads(settings.threads), torch.inference_mode():
        for _ in range(settings.warmup):
            fn()
            ref()
        for i in range(settings.runs):
            pair = (fn, ref) if i % 2 == 0 else (ref, fn)
            times = []
            for f in pair:
                t0 = time.perf_counter()
                f()
                times.append((time.perf_counter() - t0) * 1000.0)
            c, r = times if i % 2 == 0 else times[::-1]
            cand.append(c)
            refs.append(r)
        threads = torch.get_num_threads()
    ratios = [c / r for c, r in zip(cand, refs)]
    ratio = trimmed_mean(ratios, settings.ratio_trim)
    q = sorted(cand)
    return {"latency_ms": ratio * ref_ms, "median_ms": statistics.median(cand),
            "p95_ms": q[min(len(q) - 1, int(0.95 * len(q)))], "std_ms": statistics.pstdev(ratios) * ref_ms,
            "runs": len(cand), "threads": threads, "raw_ms": trimmed_mean(cand, settings.trim), "ratio": ratio}


def reference_sub(space: HatSpace) -> SubConfig:
    """The fixed reference SubTransformer for paired timing (the middle choice of every gene)."""
    return space.decode_gene([c[len(c) // 2] for c in space.gene_choices()])


class Reference:
    """The reference model and its latency (measured once, or read from ``sidecar``)."""

    def __init__(self, space: HatSpace, settings: MeasureSettings, sidecar: str | Path | None = None):
        self.model = random_model(space, reference_sub(space), seed=12345)
        p = Path(sidecar) if sidecar else None
        if p is not None and p.exists():
            data = read_json(p, "reference latency file", "delete it to measure the reference again")
            try:
                self.ms = float(data["reference_ms"])
            except (KeyError, TypeError, ValueError):
                raise FileFormatError(f"reference latency file {str(p)!r} has no number 'reference_ms'; delete it "
                                      f"to measure the reference again") from None
        else:
            runs = max(settings.runs, 20)
            res = measure_latency(decode_workload(self.model, settings.src_len, settings.steps),
                                  warmup=settings.warmup, runs=runs, threads=settings.threads, trim=settings.trim)
            self.ms = res.trimmed_mean_ms
            if p is not None:
                atomic_write_json(p, {"reference_ms": self.ms, "reference": reference_sub(space).to_dict()})


def measure_sub(space: HatSpace, sub: SubConfig, settings: MeasureSettings, reference: "Reference | None" = None) -> dict:
    """Latency row for one SubTransformer (dense export with random weights); paired with
    ``reference`` when given (see the module docstring)."""
    model = random_model(space, sub)
    if reference is not None:
        return measure_paired(model, reference.model, settings, reference.ms)
    row = measure_model(model, settings)
    return {**row, "raw_ms": row["latency_ms"], "ratio": ""}


def sample_for_index(space: HatSpace, i: int, seed: int = 0) -> SubConfig:
    """The ``i``-th configuration of a latency dataset (the same in every run)."""
    return space.sample(random.Random(f"latency-{seed}-{i}"))


# -- the settings file beside the CSV -----------------------------------------------------------------
SETTINGS_FORMAT = "slimkit-hat-latency-settings"


def settings_path(csv_path: str | Path) -> Path:
    """``<csv>.settings.json``: what the rows of ``csv_path`` were measured with."""
    return Path(str(csv_path) + ".settings.json")


def reference_path(csv_path: str | Path) -> Path:
    """``<csv>.reference.json``: the reference latency of paired timing."""
    return Path(str(csv_path) + ".reference.json")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """The parts of this machine that change latency: CPU model and count, OS and architecture, torch."""
    return {"cpu": _cpu_name(), "logical_cpus": os.cpu_count(), "system": f"{platform.system()} {platform.machine()}",
            "torch": torch.__version__}


def measurement_settings(space: HatSpace, settings: MeasureSettings, seed: int = 0) -> dict:
    """Every setting that changes the rows of a latency CSV, as stored in its settings file."""
    protocol = dataclasses.asdict(settings)
    if not settings.reference:
        protocol.pop("ratio_trim")                  # only paired timing reads it
    flat = {**protocol, "seed": seed, "batch": 1, "device": "cpu", **machine_info(), "space": space.to_dict()}
    return json.loads(json.dumps(flat))  # the types a JSON round trip gives, so comparisons are exact


def read_settings(csv_path: str | Path) -> dict | None:
    """The settings stored beside ``csv_path`` (``None`` when there is no settings file)."""
    p = settings_path(csv_path)
    if not p.exists():
        return None
    fix = f"delete it and measure again with `slimkit hat measure --overwrite --csv {csv_path}`"
    data = read_json(p, "latency settings file", fix)
    if not isinstance(data, dict) or data.get("format") != SETTINGS_FORMAT or not isinstance(data.get("settings"), dict):
        raise FileFormatError(f"{str(p)!r} is not a slimkit latency settings file; {fix}")
    return data["settings"]


def settings_diff(stored: dict, current: dict) -> list[str]:
    """``"name: A in the CSV, B now"`` for every setting that differs (space fields named one by one)."""
    out = []
    for k in list(stored) + [k for k in current if k not in stored]:
        a, b = stored.get(k, "missing"), current.get(k, "missing")
        if a == b:
            continue
        if k == "space" and isinstance(a, dict) and isinstance(b, dict):
            fields = [f for f in list(a) + [f for f in b if f not in a] if a.get(f) != b.get(f)]
            out.append(f"space ({', '.join(fields)} differ)")
        else:
            out.append(f"{k}: {a!r} in the CSV, {b!r} now")
    return out


# -- the CSV ---------------------------------------------------------------------------------------
def _csv_text(raw_rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(raw_rows)
    return buf.getvalue()


def _parse_row(r: dict) -> dict:
    def opt_int(v):
        return int(v) if v not in (None, "") else None
    return {"index": int(r["index"]), "sub": SubConfig.from_dict(json.loads(r["config"])),
            "latency_ms": float(r["latency_ms"]), "median_ms": float(r["median_ms"]),
            "p95_ms": float(r["p95_ms"]), "std_ms": float(r["std_ms"]),
            "runs": opt_int(r.get("runs")), "threads": opt_int(r.get("threads"))}


def _read_rows(p: Path) -> tuple[list[dict], list[dict], dict | None]:
    """``(raw rows, parsed rows, cut last row or None)`` of the CSV at ``p``.

    A last row without its line end was cut short by a kill (older slimkit appended in place) and is
    returned apart, whatever it parses to; any other bad row raises ``FileFormatError``."""
    fix = "measure it again into a new --csv path (or pass --overwrite)"
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FileFormatError(f"latency CSV {str(p)!r} cannot be read ({type(e).__name__}); {fix}") from None
    if not text.strip():
        return [], [], None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    raw = list(reader)
    cut_off = not text.endswith("\n")
    if cut_off and not raw:                         # even the header was cut: nothing measured yet
        return [], [], None
    missing = [f for f in CSV_FIELDS[:6] if f not in (reader.fieldnames or [])]
    if missing:
        raise FileFormatError(f"{str(p)!r} is not a slimkit latency CSV (no {missing[0]!r} column); {fix}")
    cut = raw.pop() if cut_off else None
    parsed, seen = [], set()
    for k, r in enumerate(raw):
        try:
            row = _parse_row(r)
        except (KeyError, ValueError, TypeError, AttributeError, ConfigError) as e:
            raise FileFormatError(f"row {k + 1} of {str(p)!r} is not a latency row ({type(e).__name__}: {e}); "
                                  f"{fix}") from None
        if row["index"] in seen:
            raise FileFormatError(f"{str(p)!r} holds sample {row['index']} twice, so two runs wrote into it; {fix}")
        seen.add(row["index"])
        parsed.append(row)
    return raw, parsed, cut


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a latency CSV: ``{"index", "sub": SubConfig, "latency_ms", ..., "runs", "threads"}``.

    A cut last row (a kill while an older slimkit appended it) is refused, not read."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"no latency CSV at {str(p)!r}; create one with `slimkit hat measure`")
    _, rows, cut = _read_rows(p)
    if cut is not None:
        raise FileFormatError(f"the last row of {str(p)!r} (sample {cut.get('index')!r}) is cut short, probably by "
                              f"a kill while it was written; rerun `slimkit hat measure` with the same settings, "
                              f"which measures it again")
    return rows


def measure_dataset(space: HatSpace, n: int, csv_path: str | Path, settings: MeasureSettings | None = None,
                    seed: int = 0, progress: Callable[[Iterable, int], Iterable] | None = None,
                    overwrite: bool = False) -> list[dict]:
    """Measure samples ``0..n-1`` into ``csv_path``; samples already there are kept (resume).

    The settings are stored in ``<csv>.settings.json``; resuming a CSV measured with other settings
    raises ``ConfigError`` listing them, unless ``overwrite`` (which deletes its rows first)."""
    settings = settings or MeasureSettings()
    settings.check_space(space)
    p = Path(csv_path)
    current = measurement_settings(space, settings, seed)
    raw: list[dict] = []
    cut = None
    if overwrite:
        if p.exists():
            atomic_write_text(p, _csv_text([]))     # the old rows go before the new settings are written
    elif p.exists():
        raw, parsed, cut = _read_rows(p)
    stored = None if overwrite else read_settings(p)
    if raw:
        if stored is None:
            raise ConfigError(f"{str(p)!r} holds {len(raw)} rows but no settings file ({settings_path(p).name}), so "
                              f"they cannot be checked against these settings; measure into a new --csv path, or "
                              f"pass --overwrite (overwrite=True) to measure it again")
        diff = settings_diff(stored, current)
        if diff:
            raise ConfigError(f"{str(p)!r} holds {len(raw)} rows measured with other settings ({'; '.join(diff)}); "
                              f"measure into a new --csv path, or pass --overwrite (overwrite=True) to delete them "
                              f"and measure again with these settings")
    if stored != current:                           # no rows yet, or overwrite: these settings start the CSV
        reference_path(p).unlink(missing_ok=True)   # measured with the old settings
        atomic_write_json(settings_path(p), {"format": SETTINGS_FORMAT, "version": 1, "settings": current})
    if cut is not None or not p.exists():
        atomic_write_text(p, _csv_text(raw))        # drops a cut last row (measured again below)
    done = {int(r["index"]) for r in raw}
    todo = [i for i in range(n) if i not in done]
    ref = Reference(space, settings, reference_path(p)) if settings.reference and todo else None
    it = progress(todo, len(todo)) if progress else todo
    for i in it:
        sub = sample_for_index(space, i, seed)
        row = measure_sub(space, sub, settings, ref)
        raw.append({"index": i, "config": json.dumps(sub.to_dict(), sort_keys=True), **row})
        atomic_write_text(p, _csv_text(raw))        # whole file each time: a kill leaves complete rows only
    return [r for r in read_csv(p) if r["index"] < n]


def fit_inputs(csv_path: str | Path, rows: list[dict], space: HatSpace | None = None,
               src_len: int | None = None, steps: int | None = None) -> tuple[HatSpace | None, int, int, str]:
    """What ``fit-predictor`` fits on: ``(space, src_len, steps, note)`` checked against the CSV's settings.

    With a settings file the space and lengths default to the measured ones, and a different ``space``,
    ``src_len`` or ``steps``, or rows whose runs / threads disagree with it, raise ``ConfigError``.
    Without one (a CSV from an older slimkit) the rows must at least agree with each other, and ``note``
    says that their settings could not be checked. ``space`` is ``None`` when neither gives one."""
    stored = read_settings(csv_path)
    if stored is None:
        for key in ("runs", "threads"):
            values = sorted({r[key] for r in rows if r.get(key) is not None})
            if len(values) > 1:
                raise ConfigError(f"{str(csv_path)!r} mixes rows measured with {key} = "
                                  f"{' and '.join(map(str, values))}; measure again into a new --csv path")
        note = (f"note: {csv_path} has no settings file ({settings_path(csv_path).name}), so its rows could not be "
                f"checked for one set of settings; measure again with `slimkit hat measure` to record them")
        if space is not None:
            for r in rows:
                space.check(r["sub"])
        return space, 16 if src_len is None else src_len, 8 if steps is None else steps, note
    measured = HatSpace.from_dict(stored["space"])
    if space is not None and space.to_dict() != measured.to_dict():
        diff = settings_diff({"space": measured.to_dict()}, {"space": space.to_dict()})
        raise ConfigError(f"{str(csv_path)!r} was measured on another design space than the one given "
                          f"({diff[0]}); drop --space / --checkpoint to fit on the measured space, or measure this "
                          f"space into a new CSV")
    for name, given in (("src_len", src_len), ("steps", steps)):
        if given is not None and given != stored.get(name):
            raise ConfigError(f"--{name.replace('_', '-')} {given} differs from the {stored.get(name)} that "
                              f"{str(csv_path)!r} was measured with; drop --{name.replace('_', '-')} to use the "
                              f"measured value")
    for r in rows:
        for key in ("runs", "threads"):
            want = stored.get(key)
            if want and r.get(key) is not None and r[key] != want:   # threads 0 / None: torch's default
                raise ConfigError(f"sample {r['index']} of {str(csv_path)!r} was measured with {key} = {r[key]}, "
                                  f"but its settings file says {want}, so the CSV mixes measurements; measure "
                                  f"again into a new --csv path")
        measured.check(r["sub"])
    return measured, int(stored["src_len"]), int(stored["steps"]), ""


def analytic_macs(space: HatSpace, sub: SubConfig, src_len: int, steps: int) -> float:
    """Mult-Adds of one measured run (encoder over ``src_len`` + ``steps`` cached decode steps)."""
    q = space.qkv_dim
    total = 0.0
    if sub.is_encdec:
        d, s = sub.encoder_embed_dim, src_len
        for i in range(sub.encoder_layers):
            total += s * (4 * d * q + 2 * d * sub.encoder_ffn_dims[i]) + 2 * s * s * q
        prefix = 0
        first = 1
    else:
        prefix = src_len
        first = src_len
    d = sub.decoder_embed_dim
    for t in range(steps):
        n_tok = first if t == 0 else 1
        ctx = (prefix if not sub.is_encdec else 0) + (t + 1 if sub.is_encdec else t + 1)
        for i in range(sub.decoder_layers):
            total += n_tok * (4 * d * q + 2 * d * sub.decoder_ffn_dims[i]) + 2 * n_tok * ctx * q
            if sub.is_encdec:
                span = min(sub.ende_spans[i], sub.encoder_layers)
                total += n_tok * 2 * d * q + 2 * n_tok * span * src_len * q
                if t == 0:
                    total += span * src_len * 2 * sub.encoder_embed_dim * q
        total += n_tok * d * space.vocab_size
    return total
