"""Passage retrieval on the shipped plays: what SpAtten on a sentence-embedding encoder is judged by.

People run all-MiniLM-L6-v2 to find passages: long documents are embedded once (where pruning 512
tokens pays), short queries at search time. ``build_retrieval_task`` makes such a task from the
Shakespeare plays, and ``retrieval_metrics`` scores a query-by-document similarity matrix.

The task (``build_retrieval_task``):

* **documents** of exactly ``doc_tokens`` WordPiece tokens (``[CLS] ... [SEP]``) cut from the scenes of
  the *evaluation* plays (``slimkit_nlp.data``'s validation split, modern edition: plays the
  distillation never reads), never across a scene boundary;
* **queries**: for each such document, ``query_tokens`` tokens of the same scene right next to it and
  outside every document. Each scene is laid out as ``q D D q | q D D q | ...``, so every query touches
  its own document and no other one, and no query text is inside any document;
* **answers** (``RetrievalTask.relevance``): ``"scene"`` (the default, what the benchmark's goals use):
  every document of the query's scene, so the task is "find the passages of the scene this text comes
  from" and the other scenes of the same play (same characters, same speech) are the hard negatives;
  ``"document"``: only the document the query touches (harder: the scene's other documents compete);
* **distractors**: the evaluation plays hold only about 140k tokens (under 200 documents with their
  queries), so the gallery is filled up to ``min_documents`` with 512-token documents of the
  *training* plays (modern edition, spread evenly over the plays). They are never an answer. The shipped
  distillation read passages of those plays, so a distilled model may embed a distractor a little more
  faithfully than an evaluation document: if anything that costs the pruned model ranks, it cannot
  flatter it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

#: a scene heading of the modern (``_gut``) editions: "SCENE I. A heath." or "ACT III. SCENE I. ..."
#: (not the "SCENE: ..." note on where the play is set)
SCENE_RE = re.compile(r"^(?:ACT [IVXLC0-9]+\. )?SCENE [IVXLC0-9]+\.", re.MULTILINE)


# -- metrics ---------------------------------------------------------------------------------------
def as_relevance(relevant: torch.Tensor, n_docs: int) -> torch.Tensor:
    """``relevant`` as a ``(Q, D)`` bool mask: a ``(Q,)`` tensor of target indices in ``[0, D)`` (one
    relevant document per query) becomes its one-hot mask; a ``(Q, D)`` mask is returned as bool."""
    if relevant.dim() == 1:
        mask = torch.zeros(relevant.shape[0], n_docs, dtype=torch.bool)
        mask[torch.arange(relevant.shape[0]), relevant.long()] = True
        return mask
    if relevant.dim() != 2 or relevant.shape[1] != n_docs:
        raise ValueError(f"relevant must be (Q,) targets or a (Q, {n_docs}) mask, got {tuple(relevant.shape)}")
    return relevant.bool()


def target_ranks(sim: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best-ranked relevant document of each query.

    ``sim (Q, D)``: similarity of query ``i`` to document ``j`` (higher = more similar). ``relevant``:
    ``(Q,)`` target indices (one relevant document each) or a ``(Q, D)`` bool mask (every query has at
    least one). Returns ``(Q,)`` long: ``1 + #{non-relevant j: sim[i, j] >= max of sim[i] over the
    relevant documents}``. Ties count against the query (pessimistic): a model that gives every
    document the same score ranks its answer below every non-relevant document, never first.
    """
    if sim.dim() != 2:
        raise ValueError(f"sim must be (Q, D), got {tuple(sim.shape)}")
    rel = as_relevance(relevant, sim.shape[1])
    if rel.shape[0] != sim.shape[0] or not bool(rel.any(1).all()):
        raise ValueError("every query needs at least one relevant document, and one row of relevance per query")
    best = sim.masked_fill(~rel, -math.inf).max(1, keepdim=True).values      # (Q, 1)
    return 1 + ((sim >= best) & ~rel).sum(1).long()


def recall_at_k(sim: torch.Tensor, relevant: torch.Tensor, k: int) -> float:
    """Share of queries with a relevant document among the top ``k`` (top-k accuracy, as DPR reports
    it); ``sim (Q, D)``, ``relevant (Q,)`` targets or ``(Q, D)`` mask, as in ``target_ranks``."""
    return float((target_ranks(sim, relevant) <= k).float().mean())


def mean_reciprocal_rank(sim: torch.Tensor, relevant: torch.Tensor) -> float:
    """Mean over queries of ``1 / rank`` of the first relevant document (``sim (Q, D)``, ``relevant``
    as in ``target_ranks``)."""
    return float((1.0 / target_ranks(sim, relevant).double()).mean())


def retrieval_metrics(sim: torch.Tensor, relevant: torch.Tensor, ks: tuple[int, ...] = (1, 10)) -> dict:
    """``{"recall@1": ..., "recall@10": ..., "mrr": ...}`` for ``sim (Q, D)`` and ``relevant`` (see
    ``target_ranks``)."""
    ranks = target_ranks(sim, relevant)
    out = {f"recall@{k}": float((ranks <= k).float().mean()) for k in ks}
    out["mrr"] = float((1.0 / ranks.double()).mean())
    return out


def cosine_matrix(queries: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(Q, D)`` of embeddings ``queries (Q, H)`` and ``docs (D, H)``."""
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    d = torch.nn.functional.normalize(docs.float(), dim=-1)
    return q @ d.T


# -- the task --------------------------------------------------------------------------------------
@dataclass
class RetrievalTask:
    """Documents, queries and the answers of each query.

    ``doc_ids (D, doc_tokens)`` and ``query_ids (Q, query_tokens)``: WordPiece ids with ``[CLS]`` and
    ``[SEP]``, no padding. ``targets (Q,)``: the document each query touches; the first ``Q`` documents
    are the evaluation documents (``targets == arange(Q)``), the rest distractors. ``docs`` / ``queries``:
    one dict per row: ``play``, ``scene`` (index in the play; None for distractors), ``start`` / ``end``
    (token span within the scene's tokens; distractors: within the play's), ``role`` ("evaluation" or
    "distractor"); a query's ``document`` is its target.
    """

    doc_ids: torch.Tensor
    query_ids: torch.Tensor
    targets: torch.Tensor
    docs: list = field(default_factory=list)
    queries: list = field(default_factory=list)

    @property
    def n_evaluation(self) -> int:
        return len(self.queries)

    def relevance(self, level: str = "scene") -> torch.Tensor:
        """``(Q, D)`` bool: which documents answer each query. ``"scene"``: every document of the query's
        scene (always including its target); ``"document"``: the target alone."""
        if level == "document":
            return as_relevance(self.targets, len(self.docs))
        if level != "scene":
            raise ValueError(f"unknown relevance level {level!r}; use 'scene' or 'document'")
        key = [(d["play"], d["scene"]) if d["role"] == "evaluation" else None for d in self.docs]
        return torch.tensor([[k is not None and k == (q["play"], q["scene"]) for k in key] for q in self.queries],
                            dtype=torch.bool).reshape(len(self.queries), len(self.docs))

    def subset(self, n_queries: int, n_distractors: int) -> RetrievalTask:
        """``n_queries`` evaluation documents with their queries and ``n_distractors`` distractors, each
        spread evenly over the task: a small version of the same task."""
        q = _spread(self.n_evaluation, n_queries)
        d = [self.n_evaluation + i for i in _spread(len(self.docs) - self.n_evaluation, n_distractors)]
        keep = q + d
        queries = [dict(self.queries[i], document=j) for j, i in enumerate(q)]
        return RetrievalTask(self.doc_ids[keep], self.query_ids[q], torch.arange(len(q)),
                             [self.docs[i] for i in keep], queries)


def _spread(n: int, k: int) -> list[int]:
    k = min(k, n)
    return [int(i * n / k) for i in range(k)] if k else []


def split_scenes(text: str) -> list[str]:
    """The scenes of one modern-edition play (text from each "SCENE N." heading to the next; the
    act headings and front matter before the first scene are dropped)."""
    starts = [m.start() for m in SCENE_RE.finditer(text)]
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def scene_layout(n_tokens: int, body: int, query_tokens: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(document span, query span) pairs for a scene of ``n_tokens`` tokens, laid out ``q D D q | q D D q``:
    every query is adjacent to its own document only, and no query overlaps any document."""
    out, pos, first = [], 0, True
    while pos + body + query_tokens <= n_tokens:
        if first:      # q D
            q, d = (pos, pos + query_tokens), (pos + query_tokens, pos + query_tokens + body)
        else:          # D q
            d, q = (pos, pos + body), (pos + body, pos + body + query_tokens)
        out.append((d, q))
        pos += body + query_tokens
        first = not first
    return out


def build_retrieval_task(tokenizer, doc_tokens: int = 512, query_tokens: int = 128, min_documents: int = 500,
                         max_queries: int | None = None) -> RetrievalTask:
    """The retrieval task described in the module docstring.

    ``doc_tokens`` / ``query_tokens``: lengths including ``[CLS]`` and ``[SEP]``. ``min_documents``: the
    gallery is filled up to this size with distractors from the training plays. ``max_queries``: keep
    at most this many evaluation documents (evenly spread), for small runs.
    """
    from slimkit_nlp.data import load_plays

    body, qbody = doc_tokens - 2, query_tokens - 2
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    docs, queries, doc_rows, query_rows = [], [], [], []
    for play, text in load_plays("validation", "modern").items():
        for s, scene in enumerate(split_scenes(text)):
            toks = _tokens(tokenizer, scene)
            for (da, db), (qa, qb) in scene_layout(len(toks), body, qbody):
                doc_rows.append([cls] + toks[da:db] + [sep])
                query_rows.append([cls] + toks[qa:qb] + [sep])
                docs.append({"play": play, "scene": s, "start": da, "end": db, "role": "evaluation"})
                queries.append({"play": play, "scene": s, "start": qa, "end": qb, "document": len(docs) - 1})
    if max_queries is not None and max_queries < len(docs):
        keep = _spread(len(docs), max_queries)
        doc_rows, query_rows = [doc_rows[i] for i in keep], [query_rows[i] for i in keep]
        docs, queries = [docs[i] for i in keep], [queries[i] for i in keep]
        for i, q in enumerate(queries):
            q["document"] = i
    need = max(0, min_documents - len(docs))
    for ids, meta in distractor_documents(tokenizer, need, doc_tokens):
        doc_rows.append(ids)
        docs.append(meta)
    return RetrievalTask(torch.tensor(doc_rows), torch.tensor(query_rows), torch.arange(len(queries)), docs, queries)


def distractor_documents(tokenizer, count: int, doc_tokens: int = 512) -> list[tuple[list[int], dict]]:
    """``count`` documents of ``doc_tokens`` tokens (``[CLS] ... [SEP]``) from the training plays (modern
    edition; the poems, which have no scenes, are left out): the same number from each play (the first plays give one more when it does not divide),
    each starting at a line spread evenly over the play; no two overlap. Returns ``(ids, meta)`` pairs
    (``meta``: ``play``, ``scene`` None, ``start`` / ``end`` as character offsets, ``role`` "distractor")."""
    from slimkit_nlp.data import load_plays

    if count <= 0:
        return []
    body, window = doc_tokens - 2, doc_tokens * 8
    plays = {k: v for k, v in load_plays("train", "modern").items() if SCENE_RE.search(v)}
    out = []
    for p, (play, text) in enumerate(plays.items()):
        n = count // len(plays) + (p < count % len(plays))
        spacing = (len(text) - window) / max(n, 1)
        if n and spacing < window:
            raise ValueError(f"{play} is too short for {n} distractors of {doc_tokens} tokens")
        for i in range(n):
            start = text.find("\n", int(i * spacing)) + 1
            ids = _tokens(tokenizer, text[start:start + window])[:body]
            if len(ids) < body:
                raise ValueError(f"{play}: {window} characters at {start} give fewer than {body} tokens")
            out.append(([tokenizer.cls_token_id] + ids + [tokenizer.sep_token_id],
                        {"play": play, "scene": None, "start": start, "end": start + window, "role": "distractor"}))
    return out

