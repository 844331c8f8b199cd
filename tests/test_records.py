"""What each per-sample record says: answer texts, both answers for calibration, the caller's keys."""

from __future__ import annotations

import json

import pytest
import torch

import sgl_patch
from sgl_patch import tiny
from sgl_patch.tiny.base import VOCAB

MIXED = [(8, 8), (4, 8), (8, 4)]
NEW = 5


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer over the tiny vocabulary: id i reads "w<i>" (0 pad, 1 bos, 2 eos)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    vocab.update({"<pad>": 0, "<s>": 1, "</s>": 2})
    for i in (0, 1, 2):
        vocab.pop(f"w{i}")
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def _words(ids) -> str:
    return " ".join(f"w{int(i)}" for i in ids if int(i) > 2)


@pytest.fixture
def qwen_pair(saved_models):
    from conftest import load

    return load(saved_models["qwen2_vl"]["small"]), load(saved_models["qwen2_vl"]["large"])


def test_records_hold_the_prompt_and_both_answers_as_text(qwen_pair, tokenizer):
    small, large = qwen_pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=50)
    small_out = small.generate(**batch, max_new_tokens=NEW, do_sample=False)
    width = batch["input_ids"].shape[1]
    sgl_patch.apply(large, small_model=small, retain=0.25, tokenizer=tokenizer)
    out = large.generate(**batch, max_new_tokens=NEW, do_sample=False)
    records = sgl_patch.stats(large)
    image = set(sgl_patch.api.adapter_for(large).visual_token_ids(large))
    for i, record in enumerate(records):
        keep = batch["attention_mask"][i].bool()
        prompt = [t for t in batch["input_ids"][i][keep].tolist() if t not in image]
        assert record["prompt"] == _words(prompt)
        assert record["large_answer"] == _words(out[i, width:].tolist())
        small_new = small_out[i, width:].tolist()
        if 2 in small_new:  # the answer ends at the end token
            small_new = small_new[:small_new.index(2)]
        assert record["small_answer"] == _words(small_new)
        assert record["key"] is None


def test_record_both_runs_the_large_model_on_exited_samples_without_changing_the_answers(qwen_pair, tokenizer):
    small, large = qwen_pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=51)
    width = batch["input_ids"].shape[1]
    sgl_patch.apply(large, small_model=small, retain=0.25, exit_threshold=1.01, tokenizer=tokenizer)
    pruned_large = large.generate(**batch, max_new_tokens=NEW, do_sample=False)
    sgl_patch.apply(large, small_model=small, retain=0.25, exit_threshold=0.0, tokenizer=tokenizer)
    exited = large.generate(**batch, max_new_tokens=NEW, do_sample=False)
    sgl_patch.apply(large, small_model=small, retain=0.25, exit_threshold=0.0, record_both=True, tokenizer=tokenizer)
    both = large.generate(**batch, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(both, exited)
    records = sgl_patch.stats(large)
    assert all(r["exited"] and r["n_kept"] is None and r["large_seconds"] > 0 for r in records)
    assert [r["large_answer"] for r in records] == [_words(row[width:].tolist()) for row in pruned_large]
    assert [r["small_answer"] for r in records] == [_words(row[width:].tolist()) for row in exited]


def test_sample_keys_label_the_records_of_a_call(qwen_pair, tmp_path, monkeypatch):
    small, large = qwen_pair
    stats = tmp_path / "stats.jsonl"
    monkeypatch.setenv("SGL_STATS_FILE", str(stats))
    batch = tiny.qwen2_vl_inputs(MIXED, seed=52)
    sgl_patch.apply(large, small_model=small, retain=0.5)
    with sgl_patch.sample_keys(["q1", "q2", "q3"]):
        large.generate(**batch, max_new_tokens=2, do_sample=False)
    large.generate(**batch, max_new_tokens=2, do_sample=False)  # outside: no keys
    with sgl_patch.sample_keys(["only-one"]):  # not one per sample: not used
        large.generate(**batch, max_new_tokens=2, do_sample=False)
    keys = [json.loads(line)["key"] for line in stats.read_text().splitlines()]
    assert keys == ["q1", "q2", "q3"] + [None] * 6
    assert all(r["prompt"] is None and r["large_answer"] is None for r in sgl_patch.stats(large))
