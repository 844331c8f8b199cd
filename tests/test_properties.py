"""Property-based tests (hypothesis): the engine's promises over drawn batches, options and modes.

1. A padded batch answers each sample as it is answered alone (left padding, any layer / retain);
   with right padding, where transformers itself is not alone-equal for padded rows, the patched
   model at retain=1 equals the unpatched one and unpadded rows still answer as alone.  Beneath
   it: the small model's importance of each sample in a batch is its importance alone.
2. retain=1.0 (any layer, no exit) gives the unpatched model's tokens in every generation mode.
3. apply -> generate -> remove leaves a model (and its classes) identical to a never-patched one.

Profiles: the default ("fast") is deterministic (``derandomize``) with few examples and no
shrinking, for CI (a failure prints its drawn inputs; shrinking one takes minutes);
``HYPOTHESIS_PROFILE=dev`` draws five times as many, randomly, and shrinks failures.
"""

from __future__ import annotations

import gc
import math
import os
from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, Phase, event, example, given, note, settings
from hypothesis import strategies as st

import sgl_patch
from sgl_patch import tiny

from conftest import load, new_tokens, single, strip

# -- settings -----------------------------------------------------------------------------------
_BASE = dict(deadline=None, database=None, print_blob=True,
             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("sgl_patch-fast", derandomize=True, phases=[Phase.explicit, Phase.generate], **_BASE)
settings.register_profile("sgl_patch-dev", derandomize=False, **_BASE)
_PROFILE = "dev" if os.environ.get("HYPOTHESIS_PROFILE", "").endswith("dev") else "fast"
_SCALE = 5 if _PROFILE == "dev" else 1


def examples(n: int) -> settings:
    """This file's profile with ``n`` examples (times five under HYPOTHESIS_PROFILE=dev)."""
    return settings(settings.get_profile(f"sgl_patch-{_PROFILE}"), max_examples=n * _SCALE)


MAX_NEW = 4
LAYERS = tiny.LARGE.layers
SIDES = [(4, 4), (4, 8), (8, 8), (8, 4)]  # in patches: 4, 8, 16 and 8 visual tokens

# -- strategies ---------------------------------------------------------------------------------
image = st.sampled_from(SIDES)
# a sample: text only, one image, or several images
sample = st.one_of(st.none(), image, st.lists(image, min_size=2, max_size=3))
layers = st.integers(1, LAYERS - 1)
retains = st.one_of(st.sampled_from([0.05, 0.1, 0.25, 0.5, 1.0]), st.floats(0.01, 0.6))


@dataclass(frozen=True)
class Batch:
    """A drawn batch; its repr is the call that builds it (what a failing example prints)."""

    sides: tuple
    lengths: tuple
    seed: int
    padding_side: str

    def make(self) -> dict:
        return tiny.qwen2_vl_inputs(list(self.sides), list(self.lengths), seed=self.seed,
                                    padding_side=self.padding_side)

    def __repr__(self) -> str:
        return (f"tiny.qwen2_vl_inputs({list(self.sides)!r}, {list(self.lengths)!r}, seed={self.seed}, "
                f"padding_side={self.padding_side!r})")


@st.composite
def batches(draw, padding_side=st.sampled_from(["left", "right"])):
    """1..3 drawn samples with prompt lengths 2..8, padded on ``padding_side``."""
    sides = draw(st.lists(sample, min_size=1, max_size=3))
    lengths = draw(st.lists(st.integers(2, 8), min_size=len(sides), max_size=len(sides)))
    return Batch(tuple(tuple(s) if isinstance(s, list) else s for s in sides), tuple(lengths),
                 draw(st.integers(0, 2**16)), draw(padding_side))


MODES = {
    "greedy": {},
    "beams": {"num_beams": 2},
    "beams+return_sequences": {"num_beams": 2, "num_return_sequences": 2},
    "no_cache": {"use_cache": False},
    "sample": {"do_sample": True, "temperature": 1.5},
    "sample+return_sequences": {"do_sample": True, "num_return_sequences": 2},
}


def answers(model, batch, **kwargs) -> list[list[int]]:
    return [strip(row) for row in new_tokens(model.generate(**batch, max_new_tokens=MAX_NEW, **kwargs), batch)]


def visual_counts(batch) -> list[int]:
    ids = batch["input_ids"]
    return ((ids == tiny.IMAGE) | (ids == tiny.VIDEO)).sum(1).tolist()


def kept(n: int, retain: float) -> int:
    return 0 if n == 0 else min(n, max(1, math.ceil(retain * n - 1e-9)))


# -- 1. batches ---------------------------------------------------------------------------------
@examples(20)
@given(spec=batches(padding_side=st.just("left")), layer=layers, retain=retains)
def test_left_padded_batch_answers_each_sample_as_alone(saved_models, family, spec, layer, retain):
    batch = spec.make()
    small, large = load(saved_models[family]["small"]), load(saved_models[family]["large"])
    n = batch["input_ids"].shape[0]
    sgl_patch.apply(large, small_model=small, layer=layer, retain=retain)
    try:
        together = answers(large, batch)
        records = sgl_patch.stats(large)
        alone = []
        for row in range(n):
            one = single(large, batch, row)
            alone.append(answers(large, one)[0])
    finally:
        sgl_patch.remove(large)
    assert together == alone
    counts = visual_counts(batch)
    assert [r["n_visual"] for r in records] == counts
    assert [r["n_kept"] for r in records] == [kept(c, retain) for c in counts]
    assert all(r["layer"] == layer and not r["exited"] for r in records)
    # what apply does is what pruned() does with the small model's importance for the call
    if any(counts):
        imp = sgl_patch.importance(small, max_new_tokens=MAX_NEW, **batch)
        with sgl_patch.pruned(large, imp, layer=layer, retain=retain):
            assert answers(large, batch) == together


def importance_together_and_alone(small, batch):
    """(importance of the batch, [importance of each sample alone]) with the small model."""
    together = sgl_patch.importance(small, max_new_tokens=MAX_NEW, **batch)
    alone = [sgl_patch.importance(small, max_new_tokens=MAX_NEW, **single(small, batch, row))
             for row in range(batch["input_ids"].shape[0])]
    return together, alone


@examples(10)
@given(spec=batches(padding_side=st.just("left")))
def test_importance_prefill_and_answer_of_each_sample_are_as_alone(saved_models, family, spec):
    batch = spec.make()
    small = load(saved_models[family]["small"])
    together, alone = importance_together_and_alone(small, batch)
    prompt = batch["input_ids"].shape[1]
    for row, one in enumerate(alone):
        n = int(one.n_visual[0])
        assert int(together.n_visual[row]) == n == visual_counts(batch)[row]
        assert strip(together.sequences[row, prompt:]) == strip(one.sequences[0, one.prompt_length:])
        torch.testing.assert_close(together.prefill[row, :n], one.prefill[0, :n], rtol=1e-4, atol=1e-5)
        assert not together.scores[row, n:].any()  # zero-padded past the sample's own tokens


@examples(10)
@given(spec=batches(padding_side=st.just("left")), end=st.tuples(st.integers(0, 2), st.integers(0, MAX_NEW - 2)))
def test_importance_decode_of_each_sample_is_as_alone(saved_models, family, spec, end):
    batch = spec.make()
    small = load(saved_models[family]["small"])
    # Tiny random models seldom emit their end token, so samples rarely end at different steps:
    # one token of one sample's answer becomes a second end token, as real checkpoints have
    # several (Qwen2-VL: <|im_end|> and <|endoftext|>), and that sample ends early.
    first = sgl_patch.importance(small, max_new_tokens=MAX_NEW, **batch)
    row, step = end[0] % batch["input_ids"].shape[0], end[1]
    token = int(first.sequences[row, batch["input_ids"].shape[1] + step])
    small.generation_config.eos_token_id = sorted({tiny.EOS, token})
    note(f"end tokens: {small.generation_config.eos_token_id}")
    together, alone = importance_together_and_alone(small, batch)
    for row, one in enumerate(alone):
        n = int(one.n_visual[0])
        torch.testing.assert_close(together.prefill[row, :n], one.prefill[0, :n], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(together.decode[row, :n], one.decode[0, :n], rtol=1e-4, atol=1e-5)


@examples(10)
@given(spec=batches(padding_side=st.just("right")), layer=layers, retain=retains)
def test_right_padded_batch_is_the_baseline_at_retain_one_and_full_rows_answer_as_alone(
        saved_models, family, spec, layer, retain):
    # transformers does not answer a right-padded (shorter) row as alone, so padded rows are only
    # compared with the unpatched model on the same batch; rows without padding are well defined.
    batch = spec.make()
    small, large = load(saved_models[family]["small"]), load(saved_models[family]["large"])
    base = large.generate(**batch, max_new_tokens=MAX_NEW)
    full_rows = batch["attention_mask"].bool().all(1).nonzero().squeeze(1).tolist()
    sgl_patch.apply(large, small_model=small, layer=layer, retain=1.0)
    try:
        identity = large.generate(**batch, max_new_tokens=MAX_NEW)
        sgl_patch.apply(large, small_model=small, layer=layer, retain=retain)
        together = answers(large, batch)
        alone = {row: answers(large, single(large, batch, row))[0] for row in full_rows}
    finally:
        sgl_patch.remove(large)
    assert torch.equal(identity, base)
    assert {row: together[row] for row in full_rows} == alone


# -- 2. identity at retain=1 --------------------------------------------------------------------
@st.composite
def mode_and_layer(draw):
    mode = draw(st.sampled_from(sorted(MODES)))
    # layer 0 prunes before the first layer, which a KV cache cannot follow: only without one
    layer = draw(st.integers(0 if mode == "no_cache" else 1, LAYERS - 1))
    return mode, layer


@examples(20)
@given(spec=batches(), mode_layer=mode_and_layer(), seed=st.integers(0, 2**16))
@example(spec=Batch(((8, 8), ((4, 4), (4, 8)), None), (6, 3, 5), 7, "left"), mode_layer=("no_cache", 0), seed=0)
def test_retain_one_gives_the_unpatched_tokens_in_every_mode(saved_models, family, spec, mode_layer, seed):
    batch = spec.make()
    mode, layer = mode_layer
    event(f"mode={mode}")
    event(f"layer={layer}")
    kwargs = dict(MODES[mode], max_new_tokens=MAX_NEW)
    small, large = load(saved_models[family]["small"]), load(saved_models[family]["large"])
    fresh = load(saved_models[family]["large"])
    torch.manual_seed(seed)
    expected = fresh.generate(**batch, **kwargs)
    sgl_patch.apply(large, small_model=small, layer=layer, retain=1.0)
    try:
        torch.manual_seed(seed)
        got = large.generate(**batch, **kwargs)
        records = sgl_patch.stats(large)
    finally:
        sgl_patch.remove(large)
    assert got.shape == expected.shape and torch.equal(got, expected)
    counts = visual_counts(batch)
    assert [r["n_kept"] for r in records] == counts  # the plugin ran, and kept every visual token


# -- 3. remove restores -------------------------------------------------------------------------
def class_snapshot(*models) -> dict:
    """{class: dict(class.__dict__)} for the class of every module of ``models``."""
    return {cls: dict(cls.__dict__) for model in models for cls in {type(m) for m in model.modules()}}


def instance_snapshot(model) -> dict:
    return {name: set(module.__dict__) for name, module in model.named_modules()}


exit_thresholds = st.one_of(st.none(), st.just(0.0), st.floats(0.05, 0.95), st.just(1.01))


@examples(10)
@given(spec=batches(), options=st.lists(st.tuples(layers, retains, exit_thresholds), min_size=1, max_size=2),
       mode=st.sampled_from(["greedy", "beams", "sample"]))
def test_remove_gives_back_the_never_patched_model(saved_models, family, spec, options, mode):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    batch = spec.make()

    small, large = load(saved_models[family]["small"]), load(saved_models[family]["large"])
    fresh = load(saved_models[family]["large"])
    layer_cls = type(large.model.language_model.layers[0])
    gc.collect()  # models patched elsewhere and dropped without remove() give their classes back
    classes = class_snapshot(large, small)
    assert type(large) in classes and layer_cls in classes
    instance, small_instance = instance_snapshot(large), instance_snapshot(small)
    dispatch = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)

    for layer, retain, threshold in options:  # applying again replaces the options
        sgl_patch.apply(large, small_model=small, layer=layer, retain=retain, exit_threshold=threshold)
    try:
        torch.manual_seed(0)
        large.generate(**batch, max_new_tokens=MAX_NEW, **MODES[mode])
        assert len(sgl_patch.stats(large)) == batch["input_ids"].shape[0]
    finally:
        sgl_patch.remove(large)

    after = class_snapshot(large, small)
    assert after.keys() == classes.keys()
    for cls, before in classes.items():
        assert after[cls].keys() == before.keys(), cls
        changed = [name for name, value in before.items() if after[cls][name] is not value]
        assert not changed, f"{cls.__name__}: {changed}"
    for model, before in ((large, instance), (small, small_instance)):
        now = instance_snapshot(model)
        assert now.keys() == before.keys()
        changed = {name: (sorted(now[name] - keys), sorted(keys - now[name]))
                   for name, keys in before.items() if now[name] != keys}
        assert not changed, f"instance attributes (added, removed) after remove: {changed}"
    table = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    assert table.keys() == dispatch.keys()
    assert not [key for key, value in dispatch.items() if table[key] is not value], "attention dispatch table"

    kwargs = dict(max_new_tokens=MAX_NEW, return_dict_in_generate=True, output_logits=True)
    got, expected = large.generate(**batch, **kwargs), fresh.generate(**batch, **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.logits) == len(expected.logits)
    for a, b in zip(got.logits, expected.logits):
        assert torch.equal(a, b)


# -- masked additions (Qwen3-VL's DeepStack) follow the kept tokens -------------------------------
@st.composite
def masked_plans(draw):
    """A [b, S] addition mask, scores for its visual positions, and a retain."""
    batch, length = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    rows = [draw(st.lists(st.booleans(), min_size=length, max_size=length)) for _ in range(batch)]
    # position 0 masked in some row: the dummy index of fill slots points there, so a wrong
    # remap would add a value on a padding slot
    rows[0][0] = draw(st.booleans()) or rows[0][0]
    mask = torch.tensor(rows)
    scores = torch.tensor(draw(st.lists(st.floats(0, 1), min_size=batch * length, max_size=batch * length)))
    return mask, scores.view(batch, length), draw(retains)


@examples(60)
@given(plan_spec=masked_plans())
@example(plan_spec=(torch.tensor([[True, True, False, True], [False, False, False, True]]),
                    torch.tensor([[0.9, 0.1, 0.5, 0.2], [0.3, 0.3, 0.3, 0.3]]), 0.34))
def test_masked_rows_follow_the_gathered_positions(plan_spec):
    from sgl_patch.prune import plan_pruning, remap_masked_rows

    mask, scores, retain = plan_spec
    plan = plan_pruning(mask, torch.ones_like(mask), scores, retain)
    values = torch.arange(int(mask.sum()) * 2, dtype=torch.float).view(-1, 2)
    new_mask, new_values = remap_masked_rows(mask, values, plan.gather_index, plan.slot_filled)

    # plain loop: the value row of each (b, s), then read it off through every filled slot
    owner, row = {}, 0
    for b, s in mask.nonzero().tolist():
        owner[(b, s)] = row
        row += 1
    expected_mask = torch.zeros_like(new_mask)
    expected_rows = []
    for b in range(mask.shape[0]):
        for slot, position in enumerate(plan.gather_index[b].tolist()):
            if plan.slot_filled[b, slot] and (b, position) in owner:
                expected_mask[b, slot] = True
                expected_rows.append(owner[(b, position)])
    assert torch.equal(new_mask, expected_mask)
    assert torch.equal(new_values, values[expected_rows] if expected_rows else values[:0])
    # every kept masked position appears exactly once
    assert int(new_mask.sum()) == int(plan.n_kept.sum())
