"""spatten-retrieval: the retrieval metrics on a hand-checked toy case, the task builder's invariants, and a
tiny end-to-end run of the benchmark's code path on real MiniLM."""
import warnings

import pytest
import torch

from slimkit_nlp.spatten.retrieval import (
    as_relevance,
    cosine_matrix,
    mean_reciprocal_rank,
    recall_at_k,
    retrieval_metrics,
    scene_layout,
    target_ranks,
)

# three queries, four documents; targets 0, 1, 2
SIM = torch.tensor([[0.9, 0.1, 0.5, 0.3],      # target 0 is the best          -> rank 1
                    [0.2, 0.8, 0.9, 0.1],      # document 2 (0.9) beats 0.8    -> rank 2
                    [0.4, 0.4, 0.1, 0.7]])     # 0.4, 0.4 and 0.7 beat 0.1     -> rank 4
TARGETS = torch.tensor([0, 1, 2])


def test_metrics_on_a_hand_checked_toy_case():
    assert target_ranks(SIM, TARGETS).tolist() == [1, 2, 4]
    assert recall_at_k(SIM, TARGETS, 1) == pytest.approx(1 / 3)
    assert recall_at_k(SIM, TARGETS, 2) == pytest.approx(2 / 3)
    assert recall_at_k(SIM, TARGETS, 3) == pytest.approx(2 / 3)
    assert recall_at_k(SIM, TARGETS, 10) == 1.0
    assert mean_reciprocal_rank(SIM, TARGETS) == pytest.approx((1 + 1 / 2 + 1 / 4) / 3)
    m = retrieval_metrics(SIM, TARGETS)
    assert m == pytest.approx({"recall@1": 1 / 3, "recall@10": 1.0, "mrr": 7 / 12})


def test_metrics_with_several_answers_and_ties():
    rel = torch.tensor([[True, False, False, False],
                        [False, True, True, False],    # best answer: document 2 (0.9)       -> rank 1
                        [True, False, True, False]])   # best answer 0.4; 0.4 (tie) and 0.7  -> rank 3
    assert target_ranks(SIM, rel).tolist() == [1, 1, 3]
    assert mean_reciprocal_rank(SIM, rel) == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert recall_at_k(SIM, rel, 2) == pytest.approx(2 / 3)
    # ties count against the query: equal scores everywhere rank the answer last
    flat = torch.full((1, 5), 0.5)
    assert target_ranks(flat, torch.tensor([3])).tolist() == [5]
    assert torch.equal(as_relevance(TARGETS, 4), torch.eye(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        target_ranks(SIM, torch.zeros(3, 4, dtype=torch.bool))      # a query without an answer
    with pytest.raises(ValueError):
        target_ranks(SIM, torch.zeros(3, 5, dtype=torch.bool))      # wrong number of documents
    q, d = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(cosine_matrix(q, d), torch.tensor([[1.0, 2 ** -0.5], [0.0, 2 ** -0.5]]))


def test_scene_layout_keeps_every_query_next_to_its_own_document_only():
    # q D D q | q D ...: spans of 10-token documents and 3-token queries in a 60-token scene
    lay = scene_layout(60, 10, 3)
    assert lay == [((3, 13), (0, 3)), ((13, 23), (23, 26)), ((29, 39), (26, 29)), ((39, 49), (49, 52))]
    docs = [d for d, _ in lay]
    for d, q in lay:
        assert all(q[1] <= a or q[0] >= b for a, b in docs)          # no query inside any document
        touching = [x for x in docs if x[1] == q[0] or x[0] == q[1]]
        assert touching == [d]                                      # it touches its own document only
    assert scene_layout(12, 10, 3) == []


@pytest.fixture(scope="module")
def task(minilm_path):
    from transformers import AutoTokenizer

    from slimkit_nlp.spatten.retrieval import build_retrieval_task

    tok = AutoTokenizer.from_pretrained(minilm_path)
    return tok, build_retrieval_task(tok)


def test_task_builder_invariants(task):
    from slimkit_nlp.data import load_plays

    tok, t = task
    evaluation, training = set(load_plays("validation")), set(load_plays("train"))
    n = t.n_evaluation
    assert len(t.docs) >= 500 and t.doc_ids.shape == (len(t.docs), 512) and t.query_ids.shape == (n, 128)
    assert 150 <= n < len(t.docs)
    for ids in (t.doc_ids, t.query_ids):
        assert (ids[:, 0] == tok.cls_token_id).all() and (ids[:, -1] == tok.sep_token_id).all()
    assert torch.equal(t.targets, torch.arange(n))
    # every query and every document that answers one comes from the evaluation plays; the fillers
    # (distractors) from the training plays, and they answer nothing
    assert all(d["play"] in evaluation and d["role"] == "evaluation" for d in t.docs[:n])
    assert all(q["play"] in evaluation for q in t.queries)
    assert all(d["play"] in training and d["role"] == "distractor" for d in t.docs[n:])
    rel = t.relevance("scene")
    assert not rel[:, n:].any() and rel[torch.arange(n), t.targets].all()
    assert torch.equal(t.relevance("document"), as_relevance(t.targets, len(t.docs)))
    for i in range(n):
        same = [j for j in range(n) if (t.docs[j]["play"], t.docs[j]["scene"]) ==
                (t.queries[i]["play"], t.queries[i]["scene"])]
        assert rel[i].nonzero().flatten().tolist() == same
    # the query is another passage of the same scene, next to its document, inside no document
    spans = {}
    for d in t.docs[:n]:
        spans.setdefault((d["play"], d["scene"]), []).append((d["start"], d["end"]))
    for i, q in enumerate(t.queries):
        d = t.docs[q["document"]]
        assert (d["play"], d["scene"]) == (q["play"], q["scene"]) and q["document"] == i
        assert q["end"] == d["start"] or q["start"] == d["end"]
        assert all(q["end"] <= a or q["start"] >= b for a, b in spans[(q["play"], q["scene"])])
    for i in range(0, n, 7):                                  # and as text: the query is not in its document
        qtext = tok.decode(t.query_ids[i, 1:-1])
        assert qtext not in tok.decode(t.doc_ids[i, 1:-1])
    # documents do not repeat
    assert len({tuple(r.tolist()) for r in t.doc_ids}) == len(t.docs)


def test_subset_is_the_same_task_smaller(task):
    _, t = task
    s = t.subset(5, 3)
    assert s.doc_ids.shape == (8, 512) and s.query_ids.shape == (5, 128)
    assert torch.equal(s.targets, torch.arange(5)) and [d["role"] for d in s.docs] == ["evaluation"] * 5 + [
        "distractor"] * 3
    for i, q in enumerate(s.queries):
        j = next(k for k, x in enumerate(t.queries)
                 if (x["play"], x["scene"], x["start"]) == (q["play"], q["scene"], q["start"]))
        assert q["document"] == i and s.docs[i] == t.docs[j]
        assert torch.equal(s.query_ids[i], t.query_ids[j]) and torch.equal(s.doc_ids[i], t.doc_ids[j])


def test_tiny_end_to_end(minilm_path, tmp_path):
    """The benchmark's code path on 6 queries and 10 documents of 64 tokens: a keep-1.0 model retrieves
    exactly as the dense one, pruned settings report ratios, speed-ups and Mult-Adds, goals are summarised."""
    from transformers import AutoTokenizer

    from slimkit.bench import BenchContext
    from slimkit_nlp.benchmarks import spatten_retrieval as sr
    from slimkit_nlp.spatten.retrieval import build_retrieval_task

    warnings.filterwarnings("ignore", message="spatten: switched")
    tok = AutoTokenizer.from_pretrained(minilm_path)
    t = build_retrieval_task(tok, doc_tokens=64, query_tokens=16, min_documents=10, max_queries=6)
    assert t.doc_ids.shape == (10, 64) and t.query_ids.shape == (6, 16)
    chosen = [sr.Setting("spatten", "drop", 1.0), sr.Setting("spatten", "merge", 0.5),
              sr.Setting("per_layer", "merge", 0.5), sr.Setting("random", "merge", 0.5),
              sr.shipped_distilled_setting(0.8)]
    ctx = BenchContext(quick=True, threads=1, show_progress=False, out_dir=tmp_path)
    res = sr.run_task(ctx, t, chosen, rounds=1)
    dense, rows = res["dense"], {r["setting"]: r for r in res["rows"]}
    assert set(dense) >= {"recall@1", "recall@10", "mrr", "document_level", "evaluation_documents_only"}
    full = rows["spatten drop @1"]
    assert full["metrics"]["mrr"] == pytest.approx(dense["mrr"]) and full["mrr_ratio"] == pytest.approx(1.0)
    assert full["cosine_to_dense"] > 0.9999 and full["macs_ratio"] == pytest.approx(1.0)
    for r in res["rows"]:
        assert 0 < r["mrr_ratio"] and 0 <= r["metrics"]["recall@1"] <= r["metrics"]["recall@10"] <= 1
        assert r["speedup"] > 0 and r["ms"] > 0 and r["dense_ms"] > 0
        assert len(r["metrics"]["reciprocal_ranks"]) == 6
        lo, hi = r["mrr_minus_dense"]["ci95"]
        assert lo <= r["mrr_minus_dense"]["mean"] <= hi
    assert rows["spatten merge @0.5"]["macs_ratio"] > 1.3
    heads = rows[chosen[-1].name]
    assert heads["distilled"] and heads["head_keep"] == 0.8 and "+ distill" in chosen[-1].name
    assert 0.05 < heads["heads_pruned_share"] < 0.5
    s = sr.summarize(res["rows"])
    assert [g["name"].split(",")[2].strip() for g in s["goals"][1:]] == ["merge"]     # no drop baselines here
    merge = s["cumulative_minus_best_baseline_mrr"]["merge @0.5"]
    best = max(rows["per_layer merge @0.5"]["metrics"]["mrr"], rows["random merge @0.5"]["metrics"]["mrr"])
    assert merge == pytest.approx(rows["spatten merge @0.5"]["metrics"]["mrr"] - best)
    png = tmp_path / "r.png"
    sr.plot({"rows": res["rows"], "dense": dense}, png)
    assert png.stat().st_size > 10_000


def test_an_interrupted_full_run_resumes_from_its_store(minilm_path, tmp_path, monkeypatch):
    """Full (not quick) runs keep each setting's quality measurements in a ``MeasurementStore``: a rerun
    takes them from the store (an edited stored value comes back) and times every setting again."""
    import json

    from transformers import AutoTokenizer

    from slimkit.bench import BenchContext
    from slimkit_nlp.benchmarks import spatten_retrieval as sr
    from slimkit_nlp.spatten.retrieval import build_retrieval_task

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "cache"))
    warnings.filterwarnings("ignore", message="spatten: switched")
    tok = AutoTokenizer.from_pretrained(minilm_path)
    t = build_retrieval_task(tok, doc_tokens=64, query_tokens=16, min_documents=10, max_queries=6)
    chosen = [sr.Setting("spatten", "drop", 0.5), sr.Setting("random", "merge", 0.5)]
    ctx = BenchContext(quick=False, threads=1, show_progress=False, out_dir=tmp_path)
    first = sr.run_task(ctx, t, chosen, rounds=1)
    stores = list((tmp_path / "cache" / "bench-progress").glob("spatten-retrieval-*.json"))
    assert len(stores) == 1
    saved = json.loads(stores[0].read_text())
    assert set(saved["results"]) == {s.name for s in chosen}
    saved["results"]["random merge @0.5"]["cosine_to_dense"] = 0.123
    stores[0].write_text(json.dumps(saved))
    second = {r["setting"]: r for r in sr.run_task(ctx, t, chosen, rounds=1)["rows"]}
    assert second["random merge @0.5"]["cosine_to_dense"] == 0.123
    a = first["rows"][0]
    assert second[a["setting"]]["metrics"] == a["metrics"] and second[a["setting"]]["speedup"] > 0
