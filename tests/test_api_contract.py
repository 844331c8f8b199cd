"""Scoping, clear errors, logging and options of the public API."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import sgl_patch
from sgl_patch import tiny

from conftest import load

MIXED = [(8, 8), (4, 8)]


def test_small_model_runs_exactly_as_before_while_large_is_patched(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=30)
    base = small.generate(**batch, max_new_tokens=6, return_dict_in_generate=True, output_logits=True)
    sgl_patch.apply(large, small_model=small, exit_threshold=0.5)
    large.generate(**batch, max_new_tokens=6)
    again = small.generate(**batch, max_new_tokens=6, return_dict_in_generate=True, output_logits=True)
    assert torch.equal(again.sequences, base.sequences)
    for a, b in zip(again.logits, base.logits):
        assert torch.equal(a, b)
    assert "_sgl_state" not in small.__dict__


def test_text_only_prompts_pass_through_untouched(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs([None, None], seed=31)
    base = large.generate(**batch, max_new_tokens=6)
    calls = []
    small.register_forward_pre_hook(lambda *a: calls.append(1))
    sgl_patch.apply(large, small_model=small, exit_threshold=0.0)
    assert torch.equal(large.generate(**batch, max_new_tokens=6), base)
    assert calls == []  # the small model never ran
    assert [(r["n_visual"], r["exited"], r["small_seconds"]) for r in sgl_patch.stats(large)] == [
        (0, False, 0.0), (0, False, 0.0)]


def test_text_only_sample_in_a_mixed_batch_never_exits(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs([(8, 8), None], seed=39)
    sgl_patch.apply(large, small_model=small, exit_threshold=0.0)
    out = large.generate(**batch, max_new_tokens=5)
    records = sgl_patch.stats(large)
    assert [r["exited"] for r in records] == [True, False]
    assert records[1]["exit_score"] is None and records[1]["n_kept"] == 0
    sgl_patch.remove(large)
    assert torch.equal(out[1], large.generate(**batch, max_new_tokens=5)[1])


def test_apply_again_replaces_options_without_stacking(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=32)
    sgl_patch.apply(large, small_model=small, retain=0.5)
    sgl_patch.apply(large, small_model=small, retain=1.0)
    base_large = load(large.name_or_path)
    assert torch.equal(large.generate(**batch, max_new_tokens=5),
                       base_large.generate(**batch, max_new_tokens=5))
    sgl_patch.remove(large)
    assert "_sgl_state" not in large.__dict__


def test_visual_count_mismatch_names_both_counts(pair):
    small, large = pair
    imp = sgl_patch.importance(small, max_new_tokens=2, **tiny.qwen2_vl_inputs([(8, 8)], seed=33))
    other = tiny.qwen2_vl_inputs([(4, 8)], seed=33)
    with pytest.raises(ValueError, match=r"small model saw 16 visual tokens, the large model sees 8"):
        with sgl_patch.pruned(large, imp, layer=2, retain=0.5):
            large(**other)


def test_small_model_seeing_other_visual_tokens_is_refused(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs([(8, 8)], seed=34)
    sgl_patch.apply(large, small_model=small)  # other placeholder ids are refused here already
    # a config changed after apply: the count check at generate still catches it
    small.config.video_token_id = int(batch["input_ids"][0, 1])
    with pytest.raises(ValueError, match="small model saw 17 visual tokens, the large model sees 16"):
        large.generate(**batch, max_new_tokens=2)


def test_unsupported_class_lists_supported_ones():
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2))
    with pytest.raises(TypeError, match="Qwen2VLForConditionalGeneration.*Qwen2_5_VLForConditionalGeneration"):
        sgl_patch.apply(llama, small_model=llama)


@pytest.mark.parametrize("options,message", [
    ({"retain": 0.0}, "retain must be a fraction in \\(0, 1\\]"),
    ({"retain": 1.5}, "retain must be a fraction"),
    ({"layer": 6}, "layer=6 is out of range: the large model has 6 decoder layers"),
    ({"layer": 1.5}, "fraction of the depth and must be in \\(0, 1\\)"),
    ({"layer": -1}, "layer must be >= 0"),
    ({"exit_threshold": -0.1}, "exit_threshold must be a number >= 0"),
    ({"consistency_retain": 0}, "consistency_retain must be a fraction"),
])
def test_options_out_of_range_are_refused(pair, options, message):
    small, large = pair
    with pytest.raises(ValueError, match=message):
        sgl_patch.apply(large, small_model=small, **options)
    assert "_sgl_state" not in large.__dict__


def test_layer_as_fraction_of_depth(pair):
    small, large = pair
    assert sgl_patch.apply(large, small_model=small, layer=0.5).layer == 3


def test_exit_refused_when_tokens_differ(pair):
    small, large = pair
    small.generation_config.eos_token_id = 7
    with pytest.raises(ValueError, match="eos_token_id: large 2 vs small 7"):
        sgl_patch.apply(large, small_model=small, exit_threshold=0.5)
    sgl_patch.apply(large, small_model=small)  # pruning alone does not need it


def test_missing_small_model_is_explained(pair, monkeypatch):
    monkeypatch.delenv("SGL_SMALL_MODEL", raising=False)
    with pytest.raises(ValueError, match="needs a small model"):
        sgl_patch.apply(pair[1])


def test_small_model_loaded_from_path_with_large_dtype(saved_models, family):
    large = load(saved_models[family]["large"])
    handle = sgl_patch.apply(large, small_model=saved_models[family]["small"], retain=0.5)
    small = large.__dict__["_sgl_state"].applied.small_model
    assert type(small) is type(large) and small.dtype == large.dtype
    large.generate(**tiny.qwen2_vl_inputs([(8, 8)], seed=35), max_new_tokens=2)
    assert handle.stats()[0]["n_kept"] == 8


def test_one_info_line_per_apply_and_remove_and_nothing_printed(pair, caplog, capsys):
    small, large = pair
    with caplog.at_level(logging.INFO, logger="sgl_patch"):
        sgl_patch.apply(large, small_model=small, layer=2, retain=0.1)
        large.generate(**tiny.qwen2_vl_inputs([(8, 8)], seed=36), max_new_tokens=2)
        sgl_patch.remove(large)
    lines = [r.getMessage() for r in caplog.records if r.name == "sgl_patch"]
    assert len(lines) == 2
    assert "patched Qwen2" in lines[0] and "layer=2" in lines[0] and "retain=0.1" in lines[0]
    assert "removed" in lines[1]
    assert capsys.readouterr().out == ""


def test_token_ratio_helpers():
    assert sgl_patch.token_ratio(2, 0.05, 48) == pytest.approx((2 + 46 * 0.05) / 48)
    assert sgl_patch.token_ratio(19, 0.40, 48) == pytest.approx(0.6375)
    r = sgl_patch.retain_for_ratio(0.35, 9, 48)
    assert sgl_patch.token_ratio(9, r, 48) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="unreachable"):
        sgl_patch.retain_for_ratio(0.01, 9, 48)


def test_stats_records_have_the_documented_keys(pair):
    small, large = pair
    handle = sgl_patch.apply(large, small_model=small, exit_threshold=0.5)
    large.generate(**tiny.qwen2_vl_inputs(MIXED, seed=37), max_new_tokens=3)
    records = sgl_patch.stats(large)
    assert len(records) == 2
    for r in records:
        assert {"n_visual", "n_kept", "layer", "exited", "exit_score", "small_seconds",
                "large_seconds"} <= set(r)
        assert r["small_seconds"] > 0 and r["layer"] == 2
        assert (r["n_kept"] is None) == r["exited"]
    sgl_patch.remove(large)
    assert handle.stats() == records  # still readable after remove


def test_stats_file_gets_one_json_line_per_sample(pair, tmp_path, monkeypatch):
    import json

    small, large = pair
    path = tmp_path / "sgl.jsonl"
    monkeypatch.setenv("SGL_STATS_FILE", str(path))
    sgl_patch.apply(large, small_model=small, retain=0.25)
    large.generate(**tiny.qwen2_vl_inputs(MIXED, seed=38), max_new_tokens=2)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == sgl_patch.stats(large)
    assert [r["n_kept"] for r in lines] == [4, 2]


def test_a_deep_copy_of_a_patched_model_is_unpatched(pair):
    import copy

    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=42)
    base = large.generate(**batch, max_new_tokens=5)
    sgl_patch.apply(large, small_model=small, retain=0.25)
    clone = copy.deepcopy(large)
    assert torch.equal(clone.generate(**batch, max_new_tokens=5), base)
    assert sgl_patch.stats(clone) == [] and len(sgl_patch.stats(large)) == 0
    large.generate(**batch, max_new_tokens=5)
    assert len(sgl_patch.stats(large)) == 2
