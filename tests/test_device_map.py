"""Large models loaded with ``device_map`` and offload: accelerate's hooks on the decoder layers.

``from_pretrained(path, device_map="auto", max_memory=..., offload_folder=...)`` dispatches the
model with accelerate: every module of the map gets an ``AlignDevicesHook`` that replaces its
``forward`` per instance (and calls the ``_old_forward`` it saved at load time, before any class
wrapper of ours), and offloaded modules keep their weights on the ``meta`` device until the hook
loads them for the call -- the same hooks that spread a model over several GPUs.  On this CPU-only
machine ``max_memory`` forces the decoder layers from layer 1 on to disk, so the pruning layer K=2
and everything after it run through those hooks.  (``tests/test_generation_modes.py`` attaches the
hooks by hand; these load real checkpoints.)
"""

from __future__ import annotations

import pytest
import torch

import sgl_patch
from sgl_patch import tiny
from sgl_patch.state import STATE_ATTR

from conftest import load

LAYER = 2
MIXED = [(8, 12), (4, 8)]


def _offloaded(path, folder, small_share: float = 0.5):
    """``path`` loaded with ``device_map="auto"`` and a CPU budget of half its weights: the rest on disk."""
    plain = load(path)
    size = sum(p.numel() * p.element_size() for p in plain.parameters())
    model = type(plain).from_pretrained(path, attn_implementation="sdpa", device_map="auto",
                                        max_memory={"cpu": int(size * small_share)}, offload_folder=str(folder))
    return model.eval()


def _on_disk(model) -> list[int]:
    """Decoder layers placed on disk (the map names a layer or a module that holds it)."""
    def placed(name):
        parts = name.split(".")
        return next((model.hf_device_map[".".join(parts[:n])] for n in range(len(parts), 0, -1)
                     if ".".join(parts[:n]) in model.hf_device_map), model.hf_device_map.get(""))

    return [i for i in range(len(model.model.language_model.layers))
            if placed(f"model.language_model.layers.{i}") == "disk"]


@pytest.fixture
def models(saved_models, family, tmp_path):
    """(small path, large loaded plainly, large loaded with device_map="auto" and disk offload)."""
    paths = saved_models[family]
    return paths["small"], load(paths["large"]), _offloaded(paths["large"], tmp_path / "offload")


def test_the_decoder_layers_from_k_on_run_through_offload_hooks(models):
    _, _, large = models
    disk = _on_disk(large)
    assert LAYER in disk and disk[-1] == len(large.model.language_model.layers) - 1, large.hf_device_map
    for i in disk:
        layer = large.model.language_model.layers[i]
        assert "_old_forward" in layer.__dict__  # the hook's forward; its weights' hooks load them
        assert layer.self_attn.q_proj.weight.device.type == "meta"


def test_retain_1_answers_as_the_unpatched_model(models):
    small, plain, large = models
    batch = tiny.qwen2_vl_inputs(MIXED, seed=41)
    base = plain.generate(**batch, max_new_tokens=5)
    assert torch.equal(large.generate(**batch, max_new_tokens=5), base)
    sgl_patch.apply(large, small_model=small, layer=LAYER, retain=1.0)
    assert torch.equal(large.generate(**batch, max_new_tokens=5), base)
    assert [(r["n_visual"], r["n_kept"]) for r in sgl_patch.stats(large)] == [(24, 24), (8, 8)]


@pytest.mark.parametrize("small_offloaded", [False, True], ids=["small-plain", "small-offloaded"])
def test_pruned_answers_as_the_same_model_loaded_without_offload(models, saved_models, family, tmp_path,
                                                                 small_offloaded):
    small, plain, large = models
    batch = tiny.qwen2_vl_inputs(MIXED, seed=41)
    base = plain.generate(**batch, max_new_tokens=5)
    sgl_patch.apply(plain, small_model=load(small), layer=LAYER, retain=0.25)
    expected = plain.generate(**batch, max_new_tokens=5)
    assert not torch.equal(expected, base)  # pruning changes these answers: the comparison below means something
    # loaded while its class is wrapped (plain is patched): its hooks saved our class wrapper as
    # _old_forward, and capture must still see each forward once
    guide = _offloaded(small, tmp_path / "small-offload") if small_offloaded else load(small)
    if small_offloaded:
        assert _on_disk(guide)
    sgl_patch.apply(large, small_model=guide, layer=LAYER, retain=0.25)
    assert torch.equal(large.generate(**batch, max_new_tokens=5), expected)
    kept = [(r["n_visual"], r["n_kept"]) for r in sgl_patch.stats(large)]
    assert kept == [(r["n_visual"], r["n_kept"]) for r in sgl_patch.stats(plain)] == [(24, 6), (8, 2)]


def test_a_large_model_dispatched_while_its_class_is_patched(saved_models, family, tmp_path):
    # another model of the class is patched when this one is loaded: accelerate saves the wrapped
    # class forward as the hooks' _old_forward, which apply must not wrap a second time
    paths = saved_models[family]
    plain = load(paths["large"])
    batch = tiny.qwen2_vl_inputs(MIXED, seed=41)
    base = plain.generate(**batch, max_new_tokens=5)
    sgl_patch.apply(plain, small_model=load(paths["small"]), layer=LAYER, retain=0.25)
    expected = plain.generate(**batch, max_new_tokens=5)
    large = _offloaded(paths["large"], tmp_path / "offload")
    olds = [m._old_forward for m in [large, *large.model.language_model.layers]]
    sgl_patch.apply(large, small_model=load(paths["small"]), layer=LAYER, retain=0.25)
    assert torch.equal(large.generate(**batch, max_new_tokens=5), expected)
    sgl_patch.remove(large)
    assert [m._old_forward for m in [large, *large.model.language_model.layers]] == olds
    assert torch.equal(large.generate(**batch, max_new_tokens=5), base)


def test_remove_restores_the_hooks_and_the_answers(models):
    small, plain, large = models
    batch = tiny.qwen2_vl_inputs(MIXED, seed=41)
    base = plain.generate(**batch, max_new_tokens=5)
    hooked = [large, *large.model.language_model.layers]
    olds = [module._old_forward for module in hooked]
    sgl_patch.apply(large, small_model=small, layer=LAYER, retain=0.25)
    assert not torch.equal(large.generate(**batch, max_new_tokens=5), base)
    sgl_patch.remove(large)
    assert [module._old_forward for module in hooked] == olds
    assert STATE_ATTR not in large.__dict__
    assert torch.equal(large.generate(**batch, max_new_tokens=5), base)
    assert all(large.model.language_model.layers[i].self_attn.q_proj.weight.device.type == "meta"
               for i in _on_disk(large))


def test_small_model_path_when_the_large_models_first_weights_are_offloaded(saved_models, family, tmp_path):
    paths = saved_models[family]
    plain = load(paths["large"])
    device_map = {"model.visual": "disk", "model.language_model.embed_tokens": "cpu",
                  "model.language_model.norm": "cpu", "model.language_model.rotary_emb": "cpu", "lm_head": "cpu"}
    for i in range(len(plain.model.language_model.layers)):
        device_map[f"model.language_model.layers.{i}"] = "disk" if i >= LAYER else "cpu"
    large = type(plain).from_pretrained(paths["large"], attn_implementation="sdpa", device_map=device_map,
                                        offload_folder=str(tmp_path / "offload")).eval()
    assert large.device.type == "meta"
    batch = tiny.qwen2_vl_inputs(MIXED, seed=41)
    base = plain.generate(**batch, max_new_tokens=5)
    assert torch.equal(large.generate(**batch, max_new_tokens=5), base)  # transformers itself copes
    sgl_patch.apply(plain, small_model=paths["small"], layer=LAYER, retain=0.25)
    sgl_patch.apply(large, small_model=paths["small"], layer=LAYER, retain=0.25)
    assert torch.equal(large.generate(**batch, max_new_tokens=5), plain.generate(**batch, max_new_tokens=5))


def test_a_dropped_offloaded_model_releases_its_class(saved_models, family, tmp_path):
    """The finalizer that undoes the routing holds the hooked modules weakly: a patched model dropped
    without remove() is collected, and its class wrappers go with it."""
    import gc

    from sgl_patch import patching

    large = _offloaded(saved_models[family]["large"], tmp_path / "offload")
    cls = type(large)
    gc.collect()
    sgl_patch.apply(large, small_model=load(saved_models[family]["small"]))
    assert patching.is_wrapped(cls, "generate")
    del large
    gc.collect()
    assert not patching.is_wrapped(cls, "generate")
