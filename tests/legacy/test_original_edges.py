"""What users of the original codebases send beyond the plain call: other generation modes, their
codebase's own arguments, pairs that cannot work, padding on the right."""

from __future__ import annotations

import pytest
import torch
import transformers
from packaging.version import Version

import sgl_patch
from sgl_patch.tiny import internvl2 as iv
from sgl_patch.tiny.base import SMALL

from .kits import InternVL2Kit, LlavaKit

VERSION = Version(transformers.__version__)
KIT = InternVL2Kit("internlm2", "internlm2")
needs_llava = pytest.mark.skipif(VERSION >= Version("4.38"), reason="llava-torch's generate runs on 4.37 only")


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return KIT.save(tmp_path_factory.mktemp("internvl2"))


@pytest.fixture
def pair(paths):
    return KIT.load(paths["small"]), KIT.load(paths["large"])


@pytest.mark.parametrize("mode", [
    dict(num_beams=2, num_beam_groups=2, diversity_penalty=0.5),   # group beam search
    dict(num_beams=2, force_words_ids=[[100]]),                       # constrained beam search
    dict(penalty_alpha=0.6, top_k=4),                                 # contrastive search
    dict(num_beams=2, num_return_sequences=2),
], ids=["group-beams", "constraints", "contrastive", "beams"])
def test_generation_modes_at_retain_one_equal_unpatched(pair, mode):
    small, large = pair
    batch = KIT.inputs(large, KIT.mixed, seed=20)
    expected = large.generate(**batch, max_new_tokens=4, do_sample=False, **mode)
    sgl_patch.apply(large, small_model=small, layer=1, retain=1.0)
    assert torch.equal(large.generate(**batch, max_new_tokens=4, do_sample=False, **mode), expected)
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.25)
    assert large.generate(**batch, max_new_tokens=4, do_sample=False, **mode).shape[0] == expected.shape[0]


def test_flash_attention_chosen_by_the_codebase_flag_with_an_unpadded_prompt(paths, monkeypatch):
    """InternLM2 picks its flash class by the plain ``attn_implementation`` (``use_flash_attn=True``),
    leaving transformers' ``_attn_implementation`` at eager; a single prompt has no padding mask."""
    import copy
    import sys

    from . import test_tiny_internvl2 as kernels

    eager_small, eager_large = iv.load(paths["small"]), iv.load(paths["large"])
    module = sys.modules[type(eager_large.language_model).__module__]
    for name in ("flash_attn_func", "flash_attn_varlen_func", "index_first_axis", "pad_input", "unpad_input"):
        monkeypatch.setattr(module, name, getattr(kernels, name), raising=False)
    monkeypatch.setattr(module, "has_flash_attn", True)
    monkeypatch.setattr(module, "_import_flash_attn", lambda: None)
    flash = copy.deepcopy(eager_large)
    config = copy.deepcopy(eager_large.language_model.config)
    config.attn_implementation = "flash_attention_2"
    assert config._attn_implementation == "eager"
    flash.language_model = type(eager_large.language_model)(config).eval()
    flash.language_model.load_state_dict(eager_large.language_model.state_dict())
    flash.language_model.generation_config = eager_large.language_model.generation_config
    assert "Flash" in type(KIT.attention_of(flash)).__name__
    one = KIT.inputs(eager_large, [2], seed=21)
    eager_small.img_context_token_id = flash.img_context_token_id = eager_large.img_context_token_id
    answers = []
    for large in (eager_large, flash):
        sgl_patch.apply(large, small_model=eager_small, layer=2, retain=0.25)
        answers.append(large.generate(**one, max_new_tokens=5, do_sample=False).tolist())
    assert answers[0] == answers[1]


def test_small_model_with_another_tokenizer_or_context_id_is_refused(paths):
    large = KIT.load(paths["large"])
    config = iv.checkpoint_config("phi3", SMALL)
    config.llm_config.vocab_size = 256  # stands for InternVL2-4B's Phi-3 vocabulary beside InternLM2's
    config.llm_config._attn_implementation = "eager"
    model_class = type(large)
    torch.manual_seed(0)
    other_vocabulary = model_class(config, use_flash_attn=False).eval()
    # a pair across tokenizers is prompted by the small model's own tokenizer: built in memory, it has none
    with pytest.raises(ValueError, match="uses another tokenizer .* pass apply\\(..., small_tokenizer="):
        sgl_patch.apply(large, small_model=other_vocabulary)
    other_id = KIT.load(paths["small"])
    other_id.img_context_token_id = 7
    with pytest.raises(ValueError, match=r"placeholder ids: large \[5\] vs small \[7\]"):
        sgl_patch.apply(large, small_model=other_id)
    assert large.__dict__.get("_sgl_state") is None


def test_visual_features_reach_the_large_model_only(pair):
    small, large = pair
    batch = KIT.inputs(large, KIT.mixed, seed=22)
    features = large.extract_feature(batch["pixel_values"])
    expected = large.generate(**batch, visual_features=features, max_new_tokens=4, do_sample=False)
    sgl_patch.apply(large, small_model=small, layer=1, retain=1.0, exit_threshold=0.5)
    assert torch.equal(large.generate(**batch, visual_features=features, max_new_tokens=4, do_sample=False),
                       large.generate(**batch, max_new_tokens=4, do_sample=False))
    sgl_patch.apply(large, small_model=small, layer=1, retain=1.0)
    assert torch.equal(large.generate(**batch, visual_features=features, max_new_tokens=4, do_sample=False), expected)


def test_layer_zero_and_pruned_without_prompt_ids_get_advice(pair):
    small, large = pair
    with pytest.raises(ValueError, match="always caches: use layer >= 1"):
        sgl_patch.apply(large, small_model=small, layer=0)
    batch = KIT.inputs(large, [2], seed=23)
    imp = sgl_patch.importance(small, max_new_tokens=2, **batch)
    with pytest.raises(ValueError, match="pass prompt_ids"):
        with sgl_patch.pruned(large, imp, layer=1, retain=0.5):
            large.generate(**batch, max_new_tokens=2)


@needs_llava
def test_llava_right_padded_batch_scores_consistency_as_alone(tmp_path):
    """The released LLaVA-1.5 configs pad the spliced sequence on the right: the early-exit
    consistency of each sample in a batch is its consistency alone."""
    from sgl_patch.exit import consistency
    from sgl_patch.adapters import adapter_for
    from sgl_patch.tiny import llava_torch as lt

    kit = LlavaKit("v1.5")
    path = lt.save_checkpoint(tmp_path, "v1.5", SMALL, 0, padding_side="right")
    small = kit.load(path)
    batch = kit.inputs(small, kit.mixed, seed=24)
    imp = sgl_patch.importance(small, max_new_tokens=4, **batch)
    together = consistency(small, adapter_for(small), imp, batch, 0.25)
    for row in range(len(kit.mixed)):
        # the same answer and importance, scored for the sample alone (no padding anywhere)
        alone = kit.single(small, batch, row, kit.mixed)
        score = consistency(small, adapter_for(small), imp.select(torch.tensor([row])), alone, 0.25)
        torch.testing.assert_close(together[row], score[0], rtol=1e-4, atol=0)
    assert together.min() > 0


@needs_llava
def test_llava_small_model_by_path_loads_like_the_eval_scripts(tmp_path):
    kit = LlavaKit("v1.6")
    paths = kit.save(tmp_path)
    large = kit.load(paths["large"])
    batch = kit.inputs(large, kit.mixed, seed=25)
    expected = kit.generate(large, batch, max_new_tokens=4, do_sample=False)
    sgl_patch.apply(large, small_model=paths["small"], layer=1, retain=1.0)
    assert torch.equal(kit.generate(large, batch, max_new_tokens=4, do_sample=False), expected)
    assert [r["n_visual"] for r in sgl_patch.stats(large)] == kit.visual_layout(large, batch).sum(1).tolist()
