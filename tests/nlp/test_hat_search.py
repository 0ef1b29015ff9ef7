"""Evolutionary and random search respect the latency bound and the evaluation budget."""
import pytest
import torch

from slimkit.errors import ConfigError
from slimkit_nlp.hat.predictor import FlopsLinearFit
from slimkit_nlp.hat.search import SearchSettings, evolutionary_search, random_search
from slimkit_nlp.hat.space import SubConfig
from slimkit_nlp.hat.supernet import SuperTransformer
from slimkit_nlp.hat.tasks import Seq2SeqTask, evaluate

from ._hat_common import tiny_space


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    space = tiny_space(vocab_size=13)
    net = SuperTransformer(space).eval()
    task = Seq2SeqTask("reverse", min_len=3, max_len=6, val_size=16)
    vb = task.val_batches()
    # latency model: a linear fit of analytic Mult-Adds (a real predictor type of this package)
    lat = FlopsLinearFit(space, 6, 7)
    lat.a, lat.b = 1e-4, 0.0
    latency = lambda sub: lat.predict([sub])[0]  # noqa: E731
    return space, net, task, vb, latency


def test_search_respects_bound_and_budget(setup):
    space, net, task, vb, latency = setup
    lats = sorted(latency(space.sample(__import__("random").Random(i))) for i in range(200))
    bound = lats[len(lats) // 3]
    calls = []

    def fitness(sub):
        calls.append(sub.key())
        return evaluate(net, sub, task, vb)

    s = SearchSettings(population=8, parents=3, mutations=3, crossovers=2, iterations=4, max_evaluations=15, seed=1)
    evo = evolutionary_search(space, fitness, latency, bound, s)
    assert evo.evaluations == len(calls) == len(set(calls)) <= 15
    assert all(pred <= bound for _, _, pred in evo.evaluated)
    assert latency(evo.best) <= bound
    assert evo.best_loss == min(loss for _, loss, _ in evo.evaluated)
    space.check(evo.best)

    calls.clear()
    rnd = random_search(space, fitness, latency, bound, evaluations=evo.evaluations, seed=1)
    assert rnd.evaluations == evo.evaluations == len(calls)
    assert all(pred <= bound for _, _, pred in rnd.evaluated)
    assert isinstance(SubConfig.from_dict(rnd.to_dict()["best"]), SubConfig)
    # the search is seeded
    again = evolutionary_search(space, lambda sub: evaluate(net, sub, task, vb), latency, bound, s)
    assert again.best == evo.best


def test_search_errors(setup):
    space, net, task, vb, latency = setup
    with pytest.raises(ConfigError, match="no architecture under the latency bound"):
        evolutionary_search(space, lambda s: 0.0, latency, 1e-9, SearchSettings(population=4, parents=2,
                            mutations=1, crossovers=1, iterations=1, max_tries=20))
    with pytest.raises(ConfigError, match="parents \\+ mutations"):
        SearchSettings(population=10, parents=2, mutations=2, crossovers=2)
