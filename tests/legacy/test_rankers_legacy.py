"""Rankers on the original codebases: InternVL2 generates from embeddings (the probe pass runs its
language model through ``forward_path``) and llava lays out its image tokens in its own splice."""

from __future__ import annotations

import pytest
import torch
import transformers
from packaging.version import Version

import sgl_patch
from sgl_patch.adapters import adapter_for
from sgl_patch.rankers import ranker_for

from .kits import InternVL2Kit, LlavaKit

KITS = [InternVL2Kit("internlm2", "internlm2"), LlavaKit("v1.6")]
if Version(transformers.__version__) >= Version("4.38"):
    KITS = KITS[:1]  # llava-torch's generate runs on 4.37 only
NEW, LAYER, RETAIN = 4, 2, 0.25


@pytest.fixture(scope="module", params=KITS, ids=lambda k: k.name)
def loaded(request, tmp_path_factory):
    kit = request.param
    paths = kit.save(tmp_path_factory.mktemp(kit.name))
    return kit, kit.load(paths["small"]), kit.load(paths["large"])


@pytest.mark.parametrize("ranker", ["fastv", "random", "oracle", "dpp", "dart"])
def test_answers_are_those_of_pruned_with_the_ranking(loaded, ranker):
    kit, small, large = loaded
    batch = kit.inputs(large, kit.mixed, seed=70)
    settings = {"max_new_tokens": NEW, "do_sample": False}
    with torch.no_grad():
        ranked = ranker_for(ranker).rank(large, adapter_for(large), dict(batch), settings, layer=LAYER, small=None,
                                         generate=large.generate)
        assert bool((ranked.n_visual > 0).all()) and ranked.scores.shape[0] == len(kit.mixed)
        with sgl_patch.pruned(large, ranked.scores, layer=LAYER, retain=RETAIN, prompt_ids=kit.prompt_ids(batch)):
            expected = kit.generate(large, batch, **settings)
        sgl_patch.apply(large, small_model=small, layer=LAYER, retain=RETAIN, ranker=ranker)
        try:
            got = kit.generate(large, batch, **settings)
        finally:
            sgl_patch.remove(large)
    assert torch.equal(got, expected)
