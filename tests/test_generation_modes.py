"""generate's modes under pruning: beams, several return sequences, sampling, no cache, streamers."""

from __future__ import annotations

import torch
from transformers.generation.streamers import BaseStreamer

import sgl_patch
from sgl_patch import tiny

from conftest import new_tokens, single, strip

MIXED = [(8, 8), (4, 8)]


def test_retain_one_is_identity_for_beams_and_return_sequences(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=20)
    kwargs = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2)
    base = large.generate(**batch, **kwargs)
    sgl_patch.apply(large, small_model=small, layer=2, retain=1.0)
    assert torch.equal(large.generate(**batch, **kwargs), base)


def test_beam_search_under_pruning_matches_each_sample_alone(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=21)
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.25)
    kwargs = dict(max_new_tokens=5, num_beams=3, num_return_sequences=3)
    together = new_tokens(large.generate(**batch, **kwargs), batch)
    assert together.shape[0] == 6
    for row in range(2):
        alone = single(large, batch, row)
        answers = new_tokens(large.generate(**alone, **kwargs), alone)
        for beam in range(3):
            assert strip(together[row * 3 + beam]) == strip(answers[beam])


def test_sampling_under_pruned_matches_unpruned_at_retain_one(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=22)
    imp = sgl_patch.importance(small, max_new_tokens=3, **batch)
    torch.manual_seed(0)
    base = large.generate(**batch, max_new_tokens=6, do_sample=True, temperature=1.5, top_k=50)
    torch.manual_seed(0)
    with sgl_patch.pruned(large, imp, layer=1, retain=1.0):
        same = large.generate(**batch, max_new_tokens=6, do_sample=True, temperature=1.5, top_k=50)
    assert torch.equal(base, same)


def test_sampling_with_apply_runs_the_small_model_with_the_calls_settings(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=23)
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.25, exit_threshold=0.0)
    torch.manual_seed(1)
    got = large.generate(**batch, max_new_tokens=6, do_sample=True, temperature=2.0)
    torch.manual_seed(1)
    expected = small.generate(**batch, max_new_tokens=6, do_sample=True, temperature=2.0)
    assert torch.equal(got, expected)  # the small model sampled exactly as the call asked


def test_without_cache_equals_with_cache(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED + [None], seed=24)
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.25)
    cached = large.generate(**batch, max_new_tokens=6)
    uncached = large.generate(**batch, max_new_tokens=6, use_cache=False)
    assert torch.equal(cached, uncached)


class Collect(BaseStreamer):
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


def test_streamer_sees_the_returned_answer_with_and_without_exit(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs([(8, 8)], seed=25)
    for threshold in (None, 0.0):
        sgl_patch.apply(large, small_model=small, layer=2, retain=0.25, exit_threshold=threshold)
        streamer = Collect()
        out = large.generate(**batch, max_new_tokens=6, streamer=streamer)
        assert streamer.ended
        assert streamer.chunks[0] == batch["input_ids"][0].tolist()
        streamed = [t for chunk in streamer.chunks[1:] for t in chunk]
        assert streamed == strip(new_tokens(out, batch)[0])


def test_return_dict_in_generate_keeps_its_fields(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=26)
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.25)
    out = large.generate(**batch, max_new_tokens=4, min_new_tokens=4, return_dict_in_generate=True,
                         output_scores=True)
    assert out.sequences.shape == (2, batch["input_ids"].shape[1] + 4)
    assert len(out.scores) == 4
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.25, exit_threshold=0.0)
    out = large.generate(**batch, max_new_tokens=4, return_dict_in_generate=True)
    assert torch.equal(out.sequences, small.generate(**batch, max_new_tokens=4))


def test_video_tokens_are_pruned(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs([(4, 8)], seed=27, video=True)  # 2 frames x 8 = 16 video tokens
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.25)
    large.generate(**batch, max_new_tokens=3)
    record = sgl_patch.stats(large)[0]
    assert (record["n_visual"], record["n_kept"]) == (16, 4)


def test_right_padded_batch_behaves_as_the_baseline_at_retain_one(pair):
    # lmms-eval's qwen2_vl batches with the tokenizer's saved side, which is right for Qwen2-VL
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED + [None], seed=28, padding_side="right")
    base = large.generate(**batch, max_new_tokens=5)
    sgl_patch.apply(large, small_model=small, layer=2, retain=1.0)
    assert torch.equal(large.generate(**batch, max_new_tokens=5), base)


def test_right_padded_batch_prunes_the_full_length_sample_as_alone(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs([(8, 12), (4, 8)], prompt_lengths=[9, 3], seed=29, padding_side="right")
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.25)
    together = new_tokens(large.generate(**batch, max_new_tokens=5), batch)
    alone = single(large, batch, 0)  # the longest row has no padding, so its answer is well defined
    assert strip(together[0]) == strip(new_tokens(large.generate(**alone, max_new_tokens=5), alone)[0])


def test_models_dispatched_with_accelerate_device_hooks_are_pruned(pair):
    # device_map over several GPUs puts accelerate hooks on every module; emulated here on CPU
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=41)
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.25)
    expected = large.generate(**batch, max_new_tokens=5)
    kept = [r["n_kept"] for r in sgl_patch.stats(large)]
    sgl_patch.remove(large)
    base = large.generate(**batch, max_new_tokens=5)
    hooked = [large, *large.model.language_model.layers]
    for module in hooked:
        add_hook_to_module(module, AlignDevicesHook(execution_device="cpu", io_same_device=True))
    olds = [module._old_forward for module in hooked]
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.25)
    assert torch.equal(large.generate(**batch, max_new_tokens=5), expected)
    assert [r["n_kept"] for r in sgl_patch.stats(large)] == kept == [4, 2]
    sgl_patch.remove(large)
    assert [module._old_forward for module in hooked] == olds
    assert torch.equal(large.generate(**batch, max_new_tokens=5), base)
