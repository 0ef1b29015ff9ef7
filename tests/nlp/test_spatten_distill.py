"""spatten: the short fine-tune after pruning (``distill``) on real MiniLM and tiny models."""
import pytest
import torch

import slimkit
from slimkit import SlimkitError
from slimkit_nlp.spatten import distill

from .test_spatten_decoder import tiny
from .test_spatten_encoder import tiny_bert


def _pooled_cos(model, dense, ids):
    with torch.inference_mode():
        o = model(input_ids=ids)
        m = o.kept_attention_mask.unsqueeze(-1).float()
        e = (o.last_hidden_state * m).sum(1) / m.sum(1)
        r = dense(input_ids=ids).last_hidden_state.mean(1)
    return float(torch.cosine_similarity(e, r).mean())


def test_distill_moves_the_pruned_embedding_toward_the_unpruned_one(minilm_path):
    from transformers import AutoModel, AutoTokenizer

    from slimkit_nlp.spatten.textdata import wordpiece_passages

    tok = AutoTokenizer.from_pretrained(minilm_path)
    train = wordpiece_passages(tok, 128, 16, split="train")
    val = wordpiece_passages(tok, 128, 4)
    dense = AutoModel.from_pretrained(minilm_path, attn_implementation="eager").eval()
    m = slimkit.apply(AutoModel.from_pretrained(minilm_path, attn_implementation="eager").eval(), "spatten",
                      token_keep=0.3)
    frozen = {n: p.detach().clone() for n, p in dense.named_parameters()}
    before = _pooled_cos(m, dense, val)
    info = distill(m, train, steps=30, batch_size=4, lr=1e-4, show_progress=False)
    after = _pooled_cos(m, dense, val)
    assert info["loss_last"] < info["loss_first"]
    assert after > before + 0.005, (before, after)          # held-out passages improve too
    assert not m.training
    # still a spatten model (tokens removed), and the teacher was a copy: dense weights untouched
    assert m(input_ids=val[:1]).last_hidden_state.shape[1] < 128
    assert all(torch.equal(p, frozen[n]) for n, p in dense.named_parameters())


def test_distill_rejects_what_it_cannot_train():
    with pytest.raises(SlimkitError, match="spatten model"):
        distill(tiny_bert(), torch.randint(5, 50, (4, 16)))
    with pytest.raises(SlimkitError, match="decoder"):
        distill(slimkit.apply(tiny("gpt2"), "spatten", token_keep=0.5), torch.randint(5, 50, (4, 16)))
    m = slimkit.apply(tiny_bert(), "spatten", token_keep=0.5)
    with pytest.raises(SlimkitError, match=r"\(passages, length\)"):
        distill(m, torch.randint(5, 50, (16,)))
    with pytest.raises(SlimkitError, match="attention_mask"):
        distill(m, torch.randint(5, 50, (4, 16)), torch.ones(4, 15, dtype=torch.long))


def _identification(model, teacher, ids, temperature=0.05) -> tuple[float, float]:
    """Each pruned mean-pooled embedding against all teacher embeddings (own passage = target): (InfoNCE loss,
    mean margin of the own passage's cosine over the best other one)."""
    from slimkit_nlp.spatten import mean_pool

    with torch.inference_mode():
        ref = torch.nn.functional.normalize(teacher(input_ids=ids).last_hidden_state.mean(1), dim=-1)
        o = model(input_ids=ids)
        sim = torch.nn.functional.normalize(mean_pool(o.last_hidden_state, o.kept_token_weights), dim=-1) @ ref.T
    others = sim.masked_fill(torch.eye(len(ids), dtype=torch.bool), -2.0).max(1).values
    return (float(torch.nn.functional.cross_entropy(sim / temperature, torch.arange(len(ids)))),
            float((sim.diag() - others).mean()))


def test_contrastive_objective_teaches_each_passage_to_find_its_own_dense_embedding(tmp_path):
    """objective="contrastive" lowers the InfoNCE of pruned against dense embeddings (what retrieval needs) more
    than the cosine objective does with the same steps, and checkpoints/resumes like every distill run."""
    import copy

    from slimkit.training import TrainingInterrupted

    ids = torch.randint(5, 64, (16, 24), generator=torch.Generator().manual_seed(0))
    teacher = tiny_bert().eval()
    base = slimkit.apply(copy.deepcopy(teacher), "spatten", token_keep=0.4)
    before = _identification(base, teacher, ids)[0]
    after = {}
    for objective in ("cosine", "contrastive"):
        m = copy.deepcopy(base)
        info = distill(m, ids, steps=80, batch_size=4, rank=4, lr=1e-2, objective=objective, teacher=teacher,
                       show_progress=False)
        assert info["loss_last"] < info["loss_first"]
        after[objective] = _identification(m, teacher, ids)[0]
    # measured: 2.33 before, 2.61 after the cosine objective, 1.18 after the contrastive one
    assert after["contrastive"] < 0.8 * before and after["contrastive"] < 0.8 * after["cosine"], (before, after)

    # Ctrl-C after step 10 (SIGINT from a callback, as in the fault-injection tests), then resumed: the same deltas
    import os
    import signal

    def stop_at_10(step):
        if step == 10:
            os.kill(os.getpid(), signal.SIGINT)
    whole = copy.deepcopy(base)
    ref = distill(whole, ids, steps=20, batch_size=4, rank=4, objective="contrastive", teacher=teacher,
                  show_progress=False)
    part = copy.deepcopy(base)
    with pytest.raises(TrainingInterrupted, match="after step 10"):
        distill(part, ids, steps=20, batch_size=4, rank=4, objective="contrastive", teacher=teacher,
                show_progress=False, output_dir=tmp_path, save_every=5, callbacks=[stop_at_10])
    resumed = copy.deepcopy(base)
    info = distill(resumed, ids, steps=20, batch_size=4, rank=4, objective="contrastive", teacher=teacher,
                   show_progress=False, output_dir=tmp_path, save_every=5)
    for name, (b, a) in ref["deltas"].items():
        torch.testing.assert_close(info["deltas"][name][0] @ info["deltas"][name][1], b @ a)


def test_contrastive_objective_rejects_bad_settings():
    m = slimkit.apply(tiny_bert(), "spatten", token_keep=0.5)
    ids = torch.randint(5, 50, (4, 16))
    with pytest.raises(SlimkitError, match="'cosine' or 'contrastive'"):
        distill(m, ids, objective="infonce")
    with pytest.raises(SlimkitError, match="temperature > 0"):
        distill(m, ids, objective="contrastive", temperature=0.0)
    with pytest.raises(SlimkitError, match="at least 2 passages"):
        distill(m, ids[:1], objective="contrastive")


def test_low_rank_distill_merges_deltas_that_save_and_load(tmp_path):
    """rank=r trains B @ A deltas (merge mode, per-token term on), folds them into the weights, and the
    saved deltas rebuild the same model from the original weights."""
    import torch.nn.utils.parametrize as parametrize

    from slimkit_nlp.spatten import load_deltas, save_deltas

    ids = torch.randint(5, 64, (12, 24), generator=torch.Generator().manual_seed(0))
    m = slimkit.apply(tiny_bert(), "spatten", token_keep=0.5, pruned_tokens="merge")
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    info = distill(m, ids, steps=25, batch_size=4, rank=4, token_loss=1.0, show_progress=False)
    assert info["loss_last"] < info["loss_first"]
    lin = m.encoder.layer[0].attention.self.query
    assert not parametrize.is_parametrized(lin) and all(p.requires_grad for p in m.parameters())
    assert set(n for n, _ in m.named_parameters()) == set(before)
    b, a = info["deltas"]["encoder.layer.0.attention.self.query"]
    assert b.shape == (32, 4) and a.shape == (4, 32)
    torch.testing.assert_close(lin.weight, before["encoder.layer.0.attention.self.query.weight"] + b @ a)
    assert torch.equal(m.embeddings.word_embeddings.weight, before["embeddings.word_embeddings.weight"])
    path = save_deltas(info["deltas"], tmp_path / "d.safetensors", dtype=torch.float32)
    fresh = slimkit.apply(tiny_bert(), "spatten", token_keep=0.5, pruned_tokens="merge")
    assert load_deltas(fresh, path) == len(info["deltas"]) == 6 * 6     # q, k, v, out, intermediate, output
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).last_hidden_state, m(input_ids=ids).last_hidden_state)
    with pytest.raises(SlimkitError, match="does not have"):
        load_deltas(tiny_bert(layers=2), path)
    with pytest.raises(SlimkitError, match="no delta file"):
        load_deltas(fresh, tmp_path / "missing.safetensors")


def test_shipped_distilled_minilm_beats_the_untrained_one(minilm_path):
    """The shipped deltas (scripts/distill_minilm_spatten.py, contrastive objective) load into MiniLM and make
    the pruned embeddings of held-out passages (validation plays) pick out the dense embedding of their own
    text among the others' more surely than the same spatten config without them: the retrieval signal
    ``spatten-retrieval`` measures, on 8 passages (the cosine to the dense embedding is not the target)."""
    from transformers import AutoModel, AutoTokenizer

    from slimkit_nlp.assets import MINILM_SPATTEN, load_minilm_spatten
    from slimkit_nlp.spatten import SpattenConfig
    from slimkit_nlp.spatten.textdata import wordpiece_passages

    tok = AutoTokenizer.from_pretrained(minilm_path)
    val = wordpiece_passages(tok, 512, 8)
    dense = AutoModel.from_pretrained(minilm_path, attn_implementation="eager").eval()
    plain = slimkit.apply(AutoModel.from_pretrained(minilm_path, attn_implementation="eager").eval(),
                          SpattenConfig.from_pretrained(MINILM_SPATTEN))
    shipped = load_minilm_spatten()
    assert shipped.config.slimkit_spatten["pruned_tokens"] == "drop"
    q = "encoder.layer.3.attention.self.query.weight"
    assert not torch.equal(shipped.state_dict()[q], dense.state_dict()[q])
    (loss_plain, margin_plain), (loss_shipped, margin_shipped) = (_identification(m, dense, val)
                                                                  for m in (plain, shipped))
    assert loss_shipped < 0.5 * loss_plain, (loss_plain, loss_shipped)        # measured 0.18 -> 0.014
    assert margin_shipped > margin_plain + 0.05, (margin_plain, margin_shipped)   # measured 0.14 -> 0.29
