"""Rankers (``apply(..., ranker=...)``, ``SGL_RANKER``): each ranking equals an independent
reference, and the large model's answers are those of ``pruned`` with that ranking."""

from __future__ import annotations

import math

import pytest
import torch

import sgl_patch
from sgl_patch import tiny
from sgl_patch.rankers import RANKERS, FastVRanker, dpp_greedy, ranker_for

from conftest import load, single
import reference

MIXED = [(8, 8), (4, 8), (8, 12)]
NEW = 4
LAYER, RETAIN = 2, 0.25


def _ranking(large, ranker, batch, small=None):
    from sgl_patch.adapters import adapter_for

    with torch.no_grad():
        return ranker_for(ranker).rank(large, adapter_for(large), batch, {"max_new_tokens": NEW, "do_sample": False},
                                       layer=LAYER, small=small, generate=large.generate)


def _answers_under(large, small, batch, ranker, **options):
    sgl_patch.apply(large, small_model=small, layer=LAYER, retain=RETAIN, ranker=ranker, **options)
    try:
        return large.generate(**batch, max_new_tokens=NEW, do_sample=False)
    finally:
        sgl_patch.remove(large)


def _answers_pruned_by(large, scores, batch):
    with sgl_patch.pruned(large, scores, layer=LAYER, retain=RETAIN):
        return large.generate(**batch, max_new_tokens=NEW, do_sample=False)


def test_the_registry_names_every_ranker():
    assert list(RANKERS) == ["small", "fastv", "random", "oracle", "dpp", "dart"]
    with pytest.raises(ValueError, match="ranker must be one of small, fastv, random, oracle, dpp, dart, got 'fast'"):
        ranker_for("fast")


def test_fastv_scores_are_the_large_models_attention_at_layer_k_minus_1_from_the_last_token(saved_models):
    paths = saved_models["qwen2_vl"]
    large, eager = load(paths["large"]), load(paths["large"], "eager")
    batch = tiny.qwen2_vl_inputs(MIXED, seed=60)  # left padded: every row's last prompt token is the last column
    ranked = _ranking(large, "fastv", batch)
    with torch.no_grad():
        attentions = eager(**batch, output_attentions=True).attentions[LAYER - 1]  # [b, heads, q, kv]
    for row in range(len(MIXED)):
        visual = reference.visual_positions(batch["input_ids"][row])
        expected = attentions[row, :, -1, visual].sum(0)
        n = visual.numel()
        assert int(ranked.n_visual[row]) == n
        torch.testing.assert_close(ranked.prefill[row, :n], expected.float(), rtol=1e-4, atol=1e-5)
        assert torch.all(ranked.decode == 0)


def test_fastv_reads_each_rows_last_valid_token_in_a_right_padded_batch(saved_models):
    paths = saved_models["qwen2_vl"]
    large, eager = load(paths["large"]), load(paths["large"], "eager")
    batch = tiny.qwen2_vl_inputs(MIXED, seed=61, padding_side="right")
    ranked = _ranking(large, "fastv", batch)
    with torch.no_grad():
        attentions = eager(**batch, output_attentions=True).attentions[LAYER - 1]
    for row in range(len(MIXED)):
        last = int(batch["attention_mask"][row].nonzero().max())
        visual = reference.visual_positions(batch["input_ids"][row])
        torch.testing.assert_close(ranked.prefill[row, :visual.numel()], attentions[row, :, last, visual].sum(0).float(),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ranker", ["fastv", "random", "oracle", "dpp", "dart"])
def test_answers_are_those_of_pruned_with_the_ranking_and_the_small_model_does_not_run(saved_models, ranker):
    paths = saved_models["qwen2_vl"]
    small, large = load(paths["small"]), load(paths["large"])
    batch = tiny.qwen2_vl_inputs(MIXED, seed=62)
    expected = _answers_pruned_by(large, _ranking(large, ranker, batch).scores, batch)
    calls = []
    small.register_forward_pre_hook(lambda *a: calls.append(1))
    assert torch.equal(_answers_under(large, small, batch, ranker), expected)
    assert calls == []  # no early exit and another ranker: the small model has nothing to do
    if ranker == "oracle":  # the large model's own importance, from a full unpruned run
        own = sgl_patch.importance(large, max_new_tokens=NEW, **batch)
        torch.testing.assert_close(_ranking(large, "oracle", batch).scores, own.scores)


def test_rankers_differ_and_random_is_seeded(saved_models):
    paths = saved_models["qwen2_vl"]
    small, large = load(paths["small"]), load(paths["large"])
    batch = tiny.qwen2_vl_inputs(MIXED, seed=63)
    order = {name: _ranking(large, name, batch, small=sgl_patch.importance(small, max_new_tokens=NEW, **batch))
             .scores.argsort(1, descending=True) for name in RANKERS}
    assert torch.equal(_ranking(large, "random", batch).scores, _ranking(large, "random", batch).scores)
    assert len({tuple(o[0, :8].tolist()) for o in order.values()}) == len(RANKERS)


def test_early_exit_still_decides_from_the_small_model(saved_models):
    paths = saved_models["qwen2_vl"]
    small, large = load(paths["small"]), load(paths["large"])
    batch = tiny.qwen2_vl_inputs(MIXED, seed=64)
    scores = {}
    for ranker in ("small", "fastv"):
        sgl_patch.apply(large, small_model=small, layer=LAYER, retain=RETAIN, ranker=ranker, exit_threshold=1.01)
        large.generate(**batch, max_new_tokens=NEW, do_sample=False)
        scores[ranker] = [r["exit_score"] for r in sgl_patch.stats(large)]
    assert scores["small"] == scores["fastv"] and all(s is not None for s in scores["fastv"])


def test_fastv_at_layer_zero_is_refused(saved_models):
    paths = saved_models["qwen2_vl"]
    with pytest.raises(ValueError, match="ranker='fastv' ranks by the large model's attention at layer K-1"):
        sgl_patch.apply(load(paths["large"]), small_model=load(paths["small"]), layer=0, ranker="fastv")
    assert isinstance(ranker_for("fastv"), FastVRanker)


# -- dpp (CDPruner, arXiv 2506.10967) and dart (DART, arXiv 2502.11494): plain references ----------

def _entering(model, layer, batch):
    """The hidden states entering decoder ``layer`` ``[b, s, d]`` (a plain pre-hook) and the KV
    cache of one full forward (post-rotary keys per layer)."""
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]

    handle = reference.layers_of(model)[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        out = model(**batch, use_cache=True)
    finally:
        handle.remove()
    return captured["hidden"], out.past_key_values


def _question(batch, row):
    """The sample's valid text positions after its last visual token."""
    ids, mask = batch["input_ids"][row], batch["attention_mask"][row].bool()
    after = torch.arange(ids.shape[0]) > int(reference.visual_positions(ids).max())
    return (after & mask).nonzero().squeeze(1)


def _order(ranked, row, n):
    return ranked.scores[row, :n].argsort(descending=True).tolist()


def _greedy_log_det(kernel, epsilon=1e-10):
    """Greedy DPP MAP the plain way: each step adds the item giving the largest log det of the chosen
    submatrix, until the best gain det(S + j) / det(S) is under ``epsilon``."""
    chosen, current, n = [], 0.0, kernel.shape[0]
    while len(chosen) < n:
        best, best_value = None, -math.inf
        for j in range(n):
            if j in chosen:
                continue
            index = chosen + [j]
            sign, value = torch.linalg.slogdet(kernel[index][:, index])
            if sign > 0 and float(value) > best_value:
                best, best_value = j, float(value)
        if best is None or math.exp(best_value - current) <= epsilon:
            return chosen
        chosen.append(best)
        current = best_value
    return chosen


def _dpp_reference(embeddings_row, visual, question):
    """CDPruner on one sample: relevance = mean cosine to the question tokens, min-max normalised;
    L = diag(r) cos diag(r); greedy log-det picks first, the rest by relevance."""
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)
    features, text = embeddings_row[visual].double(), embeddings_row[question].double()
    relevance = (unit(features) @ unit(text).T).mean(1)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    kernel = relevance[:, None] * (unit(features) @ unit(features).T) * relevance[None, :]
    chosen = _greedy_log_det(kernel)
    rest = sorted(set(range(visual.numel())) - set(chosen), key=lambda j: (-float(relevance[j]), j))
    return chosen + rest


def test_dpp_greedy_is_the_log_det_greedy_and_stops_at_the_kernels_rank():
    generator = torch.Generator().manual_seed(70)
    features = torch.randn(30, 12, generator=generator, dtype=torch.float64)  # rank 12
    relevance = torch.rand(30, generator=generator, dtype=torch.float64) + 0.1
    unit = features / features.norm(dim=-1, keepdim=True)
    kernel = relevance[:, None] * (unit @ unit.T) * relevance[None, :]
    order = dpp_greedy(kernel)
    assert order == _greedy_log_det(kernel) and len(order) == 12


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_dpp_ranks_by_the_conditional_dpp_over_the_input_embeddings(saved_models, padding_side):
    large = load(saved_models["qwen2_vl"]["large"])
    batch = tiny.qwen2_vl_inputs(MIXED, seed=65, padding_side=padding_side)
    ranked = _ranking(large, "dpp", batch)
    embeddings, _ = _entering(large, 0, batch)  # token embeddings with the vision features written in
    for row in range(len(MIXED)):
        visual = reference.visual_positions(batch["input_ids"][row])
        n = visual.numel()
        assert int(ranked.n_visual[row]) == n
        assert _order(ranked, row, n) == _dpp_reference(embeddings[row], visual, _question(batch, row))


@pytest.mark.parametrize("padding_side, layer", [("left", LAYER), ("right", LAYER), ("left", 0)])
def test_dart_ranks_pivots_by_key_norm_then_the_least_duplicated(saved_models, padding_side, layer):
    large = load(saved_models["qwen2_vl"]["large"])
    batch = tiny.qwen2_vl_inputs(MIXED, seed=66, padding_side=padding_side)
    with torch.no_grad():
        from sgl_patch.adapters import adapter_for

        ranked = ranker_for("dart").rank(large, adapter_for(large), batch, {}, layer=layer, small=None,
                                         generate=large.generate)
    hidden, cache = _entering(large, layer, batch)
    states = large.model.language_model.norm(hidden).double()
    states = states / states.norm(dim=-1, keepdim=True)
    keys = cache.layers[max(layer - 1, 0)].keys  # [b, kv heads, s, head dim], after rotary
    key_l1 = keys.transpose(1, 2).flatten(2).abs().sum(-1)
    for row in range(len(MIXED)):
        visual, text = reference.visual_positions(batch["input_ids"][row]), _question(batch, row)
        pivots = key_l1[row, visual].topk(4).indices.tolist()
        text_pivots = text[key_l1[row, text].topk(4).indices]
        anchor = torch.cat([states[row, visual[pivots]], states[row, text_pivots]])
        duplication = (states[row, visual] @ anchor.T).max(1).values
        rest = sorted(set(range(visual.numel())) - set(pivots), key=lambda j: (float(duplication[j]), j))
        assert _order(ranked, row, visual.numel()) == pivots + rest


@pytest.mark.parametrize("ranker", ["dpp", "dart"])
def test_each_sample_of_a_padded_batch_is_ranked_as_alone(saved_models, ranker):
    large = load(saved_models["qwen2_vl"]["large"])
    for padding_side in ("left", "right"):
        batch = tiny.qwen2_vl_inputs(MIXED, seed=67, padding_side=padding_side)
        ranked = _ranking(large, ranker, batch)
        for row in range(len(MIXED)):
            alone = _ranking(large, ranker, single(large, batch, row))
            n = int(alone.n_visual[0])
            assert int(ranked.n_visual[row]) == n
            assert _order(ranked, row, n) == _order(alone, 0, n)
