"""Core behaviour beyond the per-family equivalences of test_families.py: class restoration,
merging partial exits, the exit scores themselves, and the capture's deferred decoding."""

from __future__ import annotations

import pytest
import torch

import sgl_patch
from sgl_patch import tiny

from conftest import load, new_tokens, single, strip
import reference

MIXED = [(8, 8), (4, 8), (8, 12)]  # 16, 8 and 24 visual tokens: different sizes in one batch


def test_remove_restores_classes_and_instances(pair):
    import gc

    from sgl_patch import patching

    small, large = pair
    cls, layer_cls = type(large), type(large.model.language_model.layers[0])
    gc.collect()  # models patched by earlier tests and dropped without remove() release their classes
    assert not patching.is_wrapped(cls, "forward") and not patching.is_wrapped(layer_cls, "forward")
    before = {name: cls.__dict__.get(name) for name in ("forward", "generate")}
    layer_forward = layer_cls.__dict__["forward"]
    sgl_patch.apply(large, small_model=small)
    assert cls.__dict__["forward"] is not before["forward"]
    sgl_patch.remove(large)
    assert {name: cls.__dict__.get(name) for name in ("forward", "generate")} == before
    assert layer_cls.__dict__["forward"] is layer_forward
    assert "_sgl_state" not in large.__dict__
    assert all("_sgl_layer" not in layer.__dict__ for layer in large.model.language_model.layers)


def test_a_patched_model_dropped_without_remove_releases_its_class(saved_models, family):
    import gc

    from sgl_patch import patching

    large = load(saved_models[family]["large"])
    cls = type(large)
    gc.collect()
    sgl_patch.apply(large, small_model=load(saved_models[family]["small"]))
    assert patching.is_wrapped(cls, "generate")
    del large
    gc.collect()
    assert not patching.is_wrapped(cls, "generate")


def test_partial_exit_merges_answers_in_input_order(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED + [(4, 4)], seed=13)
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.25, exit_threshold=1.01)
    large.generate(**batch, max_new_tokens=6)
    scores = torch.tensor([r["exit_score"] for r in sgl_patch.stats(large)])
    assert len(set(scores.tolist())) == 4
    threshold = float(scores.median())  # half the samples exit
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.25, exit_threshold=threshold)
    out = large.generate(**batch, max_new_tokens=6, return_dict_in_generate=True)
    exited = scores >= threshold
    assert 0 < exited.sum() < 4
    small_answers = new_tokens(small.generate(**batch, max_new_tokens=6), batch)
    imp = sgl_patch.importance(small, max_new_tokens=6, **batch)
    got = new_tokens(out.sequences, batch)
    for row in range(4):
        if exited[row]:
            assert strip(got[row]) == strip(small_answers[row])
        else:
            alone = single(large, batch, row)
            with sgl_patch.pruned(large, imp.select(torch.tensor([row])), layer=2, retain=0.25):
                answer = new_tokens(large.generate(**alone, max_new_tokens=6), alone)
            assert strip(got[row]) == strip(answer[0])


def test_exit_scores_equal_independent_confidence_and_consistency(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs([(8, 12)], seed=15)
    imp = sgl_patch.importance(small, max_new_tokens=5, **batch)
    prompt = batch["input_ids"].shape[1]
    answer = torch.tensor(strip(imp.sequences[0, prompt:]))
    n = answer.numel()
    forced = dict(batch)
    forced["input_ids"] = torch.cat([batch["input_ids"], answer[None]], 1)
    forced["attention_mask"] = torch.ones_like(forced["input_ids"])
    forced["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros(1, n, dtype=torch.long)], 1)
    # S_confidence: exp(mean log p) of the answer, end token included, from the unpruned small model
    logp = small(**forced, use_cache=False).logits[0, prompt - 1:prompt - 1 + n].log_softmax(-1)
    confidence = logp.gather(-1, answer[:, None]).mean().exp()
    torch.testing.assert_close(imp.confidence[0], confidence, rtol=1e-5, atol=0)
    # S_consistency: prod p(answer) with the top 25% of visual tokens dropped before layer 0
    ref = reference.pruned_logits(small, forced, imp.scores[0], 0, 0.25)[-(n + 1):-1].log_softmax(-1)
    consistency = ref.gather(-1, answer[:, None]).sum().exp()
    sgl_patch.apply(large, small_model=small, exit_threshold=1.01, consistency_retain=0.25)
    large.generate(**batch, max_new_tokens=5)
    recorded = sgl_patch.stats(large)[0]["exit_score"]
    assert recorded == pytest.approx(float((confidence + consistency) / 2), rel=1e-5)


def test_deferred_decoding_scores_do_not_depend_on_the_pass_size(saved_models, monkeypatch):
    from sgl_patch import capture

    batch = tiny.qwen2_vl_inputs(MIXED, seed=16)
    small = load(saved_models["qwen2_vl"]["small"])
    whole = sgl_patch.importance(small, max_new_tokens=7, **batch)
    finish = capture.CaptureSession.finish
    monkeypatch.setattr(capture.CaptureSession, "finish", lambda self: finish(self, steps_per_pass=2))
    chunked = sgl_patch.importance(small, max_new_tokens=7, **batch)
    torch.testing.assert_close(chunked.decode, whole.decode, rtol=1e-5, atol=1e-6)
    assert torch.equal(chunked.prefill, whole.prefill)


def test_importance_without_a_cache_equals_with_one(saved_models):
    from sgl_patch.capture import generate_with_importance

    batch = tiny.qwen2_vl_inputs(MIXED, seed=17)
    small = load(saved_models["qwen2_vl"]["small"])
    cached = generate_with_importance(small, small.generate, batch, {"max_new_tokens": 5})
    uncached = generate_with_importance(small, small.generate, batch, {"max_new_tokens": 5, "use_cache": False})
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(uncached.prefill, cached.prefill, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(uncached.decode, cached.decode, rtol=1e-4, atol=1e-6)
