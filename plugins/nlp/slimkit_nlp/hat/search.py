"""Evolutionary search (HAT) and a random-search baseline under a latency bound.

Genes are fixed-length vectors over ``space.gene_choices()``. Every individual, initial or
child, is rejection-sampled until the latency predictor says it is within ``bound_ms``.
Fitness = validation loss with inherited weights (lower is better); fitness values are
cached by architecture, and ``evaluations`` counts distinct architectures evaluated
(the budget). HAT's defaults: population 125 = 25 parents + 50 mutations + 50
crossovers, p = 0.3, 30 iterations; ours are CPU-sized.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Callable

from slimkit.errors import ConfigError

from .space import HatSpace, SubConfig


@dataclass
class SearchSettings:
    population: int = 20
    parents: int = 5
    mutations: int = 8
    crossovers: int = 7
    mutation_prob: float = 0.3
    iterations: int = 8
    max_evaluations: int | None = None
    max_tries: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.parents < 2 or self.parents > self.population:
            raise ConfigError(f"parents must be between 2 and population ({self.population}), got {self.parents}")
        if self.parents + self.mutations + self.crossovers != self.population:
            raise ConfigError(f"population ({self.population}) must equal parents + mutations + crossovers "
                              f"({self.parents} + {self.mutations} + {self.crossovers})")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ConfigError(f"mutation_prob must be in [0, 1], got {self.mutation_prob}")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be at least 1, got {self.iterations}")


@dataclass
class SearchResult:
    method: str
    best: SubConfig
    best_loss: float
    best_latency_pred_ms: float
    evaluations: int
    history: list = field(default_factory=list)  # best loss after each iteration / evaluation block
    evaluated: list = field(default_factory=list)  # (SubConfig dict, loss, predicted ms)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["best"] = self.best.to_dict()
        return d


class BudgetExhausted(Exception):
    pass


class _Evaluator:
    def __init__(self, space, fitness, latency, bound, budget):
        self.space, self.fitness, self.latency, self.bound, self.budget = space, fitness, latency, bound, budget
        self.cache: dict[str, float] = {}
        self.records: list = []

    def __call__(self, gene) -> float:
        sub = self.space.decode_gene(gene)
        k = sub.key()
        if k not in self.cache:
            if self.budget is not None and len(self.cache) >= self.budget:
                raise BudgetExhausted
            loss = float(self.fitness(sub))
            self.cache[k] = loss
            self.records.append((sub.to_dict(), loss, float(self.latency(sub))))
        return self.cache[k]

    def best(self):
        i = min(range(len(self.records)), key=lambda j: self.records[j][1])
        d, loss, lat = self.records[i]
        return SubConfig.from_dict(d), loss, lat


def _valid(space, latency, bound, rng, make, max_tries):
    for _ in range(max_tries):
        gene = make()
        if latency(space.decode_gene(gene)) <= bound:
            return gene
    raise ConfigError(f"found no architecture under the latency bound {bound:.3g} ms in {max_tries} tries; "
                      f"raise the bound or widen the space")


def evolutionary_search(space: HatSpace, fitness: Callable[[SubConfig], float],
                        latency: Callable[[SubConfig], float], bound_ms: float,
                        settings: SearchSettings | None = None, progress=None) -> SearchResult:
    """HAT's evolutionary search: lower ``fitness`` is better; ``latency`` is the predictor (ms)."""
    s = settings or SearchSettings()
    rng = random.Random(f"evo-{s.seed}")
    choices = space.gene_choices()
    ev = _Evaluator(space, fitness, latency, bound_ms, s.max_evaluations)
    pop = [_valid(space, latency, bound_ms, rng, lambda: space.random_gene(rng), s.max_tries)
           for _ in range(s.population)]
    history = []
    it = progress(range(s.iterations), s.iterations) if progress else range(s.iterations)
    try:
        for i in it:
            scored = []
            for g in pop:
                scored.append((ev(g), g))
            scored.sort(key=lambda t: t[0])
            parents = [g for _, g in scored[: s.parents]]
            history.append(scored[0][0])
            if i == s.iterations - 1:
                break

            def mutate():
                p = rng.choice(parents)
                return [rng.choice(c) if rng.random() < s.mutation_prob else v for v, c in zip(p, choices)]

            def cross():
                a, b = rng.sample(parents, 2)
                return [x if rng.random() < 0.5 else y for x, y in zip(a, b)]

            muts = [_valid(space, latency, bound_ms, rng, mutate, s.max_tries) for _ in range(s.mutations)]
            crs = [_valid(space, latency, bound_ms, rng, cross, s.max_tries) for _ in range(s.crossovers)]
            pop = parents + muts + crs
    except BudgetExhausted:
        pass
    best, loss, lat = ev.best()
    if not history or history[-1] != loss:
        history.append(loss)
    return SearchResult("evolution", best, loss, lat, len(ev.cache), history, ev.records)


def random_search(space: HatSpace, fitness: Callable[[SubConfig], float], latency: Callable[[SubConfig], float],
                  bound_ms: float, evaluations: int, seed: int = 0, max_tries: int = 2000,
                  progress=None) -> SearchResult:
    """Baseline: ``evaluations`` distinct random architectures under the bound; the best wins."""
    rng = random.Random(f"random-{seed}")
    ev = _Evaluator(space, fitness, latency, bound_ms, evaluations)
    history = []
    it = progress(range(evaluations), evaluations) if progress else range(evaluations)
    for _ in it:
        n = len(ev.cache)
        for _try in range(max_tries):
            ev(_valid(space, latency, bound_ms, rng, lambda: space.random_gene(rng), max_tries))
            if len(ev.cache) > n:
                break
        else:
            break  # the space under the bound is exhausted
        history.append(ev.best()[1])
    best, loss, lat = ev.best()
    return SearchResult("random", best, loss, lat, len(ev.cache), history, ev.records)
