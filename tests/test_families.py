"""One suite over every supported family: the core's equivalences on each family's tiny models.

Each family provides tiny random models (saved and loaded back with ``from_pretrained``) and
inputs shaped as its processor returns them (``sgl_patch.tiny``).  Every test here runs for every
family in ``sgl_patch.tiny.names()``: adding a family adds it to this suite.
"""

from __future__ import annotations

import math

import pytest
import torch

import sgl_patch
from sgl_patch import tiny

from conftest import load_family, new_tokens, single, strip
import reference


def visual_counts(batch: dict) -> list[int]:
    ids = batch["input_ids"]
    return ((ids == tiny.IMAGE) | (ids == tiny.VIDEO)).sum(1).tolist()


def kept(n: int, retain: float) -> int:
    return 0 if n == 0 else max(1, math.ceil(retain * n - 1e-9))


def test_inputs_cover_what_the_suite_needs(kit):
    counts = visual_counts(kit.inputs(kit.mixed))
    assert len(set(counts)) == 3 and min(counts) > 0, counts
    assert visual_counts(kit.inputs([kit.one]))[0] >= 24
    assert kit.multi is not None, "every family takes several images (or crops, tiles) per sample"


def test_retain_one_is_identity_and_remove_restores(kit, family_pair):
    small, large = family_pair
    batch = kit.inputs(kit.mixed + [None], seed=3)
    kwargs = dict(max_new_tokens=6, return_dict_in_generate=True, output_logits=True)
    base = large.generate(**batch, **kwargs)
    sgl_patch.apply(large, small_model=small, layer=1, retain=1.0)
    patched = large.generate(**batch, **kwargs)
    assert torch.equal(patched.sequences, base.sequences)
    for a, b in zip(patched.logits, base.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert [r["n_visual"] for r in sgl_patch.stats(large)] == visual_counts(batch)
    sgl_patch.remove(large)
    after = large.generate(**batch, **kwargs)
    assert torch.equal(after.sequences, base.sequences)
    for a, b in zip(after.logits, base.logits):
        assert torch.equal(a, b)


@pytest.mark.parametrize("inputs", ["mixed", "multi", "video"])
def test_importance_equals_eager_attention_sums(kit, family_checkpoints, inputs):
    if getattr(kit, inputs) is None:
        pytest.skip(f"{kit.name} takes no {inputs} inputs")
    path = family_checkpoints(kit.name)["small"]
    batch = kit.inputs(getattr(kit, inputs), seed=5, **({"video": True} if inputs == "video" else {}))
    got = sgl_patch.importance(load_family(kit, path, "sdpa"), max_new_tokens=5, **batch)
    prefill, decode = reference.eager_importance(load_family(kit, path, "eager"), batch, 5)
    torch.testing.assert_close(got.prefill.double(), prefill, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.decode.double(), decode, rtol=1e-4, atol=1e-6)
    assert got.n_visual.tolist() == visual_counts(batch)
    assert decode.abs().sum() > 0 and prefill.abs().sum() > 0


def test_importance_under_eager_backend_matches_sdpa(kit, family_checkpoints):
    path = family_checkpoints(kit.name)["small"]
    batch = kit.inputs(kit.mixed, seed=6)
    sdpa = sgl_patch.importance(load_family(kit, path, "sdpa"), max_new_tokens=4, **batch)
    eager = sgl_patch.importance(load_family(kit, path, "eager"), max_new_tokens=4, **batch)
    torch.testing.assert_close(eager.scores, sdpa.scores, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("inputs,layer,retain", [("mixed", 2, 0.25), ("mixed", 0, 0.1), ("multi", 1, 0.3),
                                                 ("video", 2, 0.25)])
def test_pruned_forward_equals_independent_reference(kit, family_pair, inputs, layer, retain):
    if getattr(kit, inputs) is None:
        pytest.skip(f"{kit.name} takes no {inputs} inputs")
    small, large = family_pair
    batch = kit.inputs(getattr(kit, inputs), seed=7, **({"video": True} if inputs == "video" else {}))
    imp = sgl_patch.importance(small, max_new_tokens=4, **batch)
    with sgl_patch.pruned(large, imp, layer=layer, retain=retain):
        logits = large(**batch, use_cache=False).logits
    for row in range(batch["input_ids"].shape[0]):
        ref = reference.pruned_logits(large, single(large, batch, row), imp.scores[row], layer, retain)
        # rows are right-aligned: the sample's kept tokens are the last slots of its row
        torch.testing.assert_close(logits[row, -ref.shape[0]:], ref, atol=1e-4, rtol=1e-4)


def test_pruned_generate_matches_reference_greedy(kit, family_pair):
    small, large = family_pair
    batch = kit.inputs([kit.one], seed=8)
    imp = sgl_patch.importance(small, max_new_tokens=4, **batch)
    with sgl_patch.pruned(large, imp, layer=1, retain=0.2):
        out = large.generate(**batch, max_new_tokens=6)
    expected = reference.pruned_greedy(large, batch, imp.scores[0], 1, 0.2, steps=6)
    assert strip(new_tokens(out, batch)[0]) == expected


def test_pruned_kv_cache_holds_only_kept_tokens(kit, family_pair):
    small, large = family_pair
    batch = kit.inputs([kit.one], seed=9)
    n_visual = visual_counts(batch)[0]
    imp = sgl_patch.importance(small, max_new_tokens=2, **batch)
    with sgl_patch.pruned(large, imp, layer=2, retain=0.25):
        out = large.generate(**batch, max_new_tokens=5, min_new_tokens=5, return_dict_in_generate=True)
    full = batch["input_ids"].shape[1] + 4  # the last generated token is never fed back
    lengths = [layer.keys.shape[-2] for layer in out.past_key_values.layers]
    assert lengths[:2] == [full, full]
    assert lengths[2:] == [full - n_visual + kept(n_visual, 0.25)] * (len(lengths) - 2)


@pytest.mark.parametrize("inputs", ["mixed", "multi"])
def test_padded_batch_gives_each_sample_its_own_answer(kit, family_pair, inputs):
    small, large = family_pair
    samples = getattr(kit, inputs) + [None]
    batch = kit.inputs(samples, prompt_lengths=[6, 3, 9, 5][:len(samples) - 1] + [5], seed=10)
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.2)
    together = new_tokens(large.generate(**batch, max_new_tokens=6), batch)
    for row in range(len(samples)):
        alone = single(large, batch, row)
        answer = new_tokens(large.generate(**alone, max_new_tokens=6), alone)
        assert strip(together[row]) == strip(answer[0]), f"sample {row}"
    records = sgl_patch.stats(large)[:len(samples)]
    counts = visual_counts(batch)
    assert [r["n_visual"] for r in records] == counts
    assert [r["n_kept"] for r in records] == [kept(n, 0.2) for n in counts]


def test_exit_threshold_zero_returns_the_small_models_answer(kit, family_pair):
    small, large = family_pair
    batch = kit.inputs(kit.mixed, seed=11)
    expected = small.generate(**batch, max_new_tokens=6)
    sgl_patch.apply(large, small_model=small, exit_threshold=0.0)
    assert torch.equal(large.generate(**batch, max_new_tokens=6), expected)
    assert all(r["exited"] and r["large_seconds"] == 0.0 for r in sgl_patch.stats(large))


def test_exit_threshold_above_one_returns_the_pruned_large_answer(kit, family_pair):
    small, large = family_pair
    batch = kit.inputs(kit.mixed, seed=12)
    imp = sgl_patch.importance(small, max_new_tokens=6, **batch)
    with sgl_patch.pruned(large, imp, layer=2, retain=0.05):
        expected = large.generate(**batch, max_new_tokens=6)
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.05, exit_threshold=1.01)
    assert torch.equal(large.generate(**batch, max_new_tokens=6), expected)
    records = sgl_patch.stats(large)
    assert not any(r["exited"] for r in records)
    assert all(0.0 <= r["exit_score"] <= 1.0 for r in records)


def test_video_retain_one_is_identity_and_pruning_keeps_each_sample(kit, family_pair):
    if kit.video is None:
        pytest.skip(f"{kit.name} takes no videos")
    small, large = family_pair
    batch = kit.inputs(kit.video, seed=13, video=True)
    assert min(visual_counts(batch)) > 0 and (batch["input_ids"] == kit.video_placeholder).any()
    base = large.generate(**batch, max_new_tokens=5)
    sgl_patch.apply(large, small_model=small, layer=1, retain=1.0)
    assert torch.equal(large.generate(**batch, max_new_tokens=5), base)
    sgl_patch.apply(large, small_model=small, layer=1, retain=0.25)
    together = new_tokens(large.generate(**batch, max_new_tokens=5), batch)
    for row in range(batch["input_ids"].shape[0]):
        alone = single(large, batch, row)
        assert strip(together[row]) == strip(new_tokens(large.generate(**alone, max_new_tokens=5), alone)[0])


def test_a_small_model_with_other_vision_geometry_is_refused(kit, family_checkpoints, tmp_path):
    kit.model(config=kit.mismatched_config()).save_pretrained(tmp_path)
    small = load_family(kit, tmp_path)
    large = load_family(kit, family_checkpoints(kit.name)["large"])
    with pytest.raises(ValueError, match="small_model"):
        sgl_patch.apply(large, small_model=small)
    assert not hasattr(large, "_sgl_state") or large.__dict__.get("_sgl_state") is None
