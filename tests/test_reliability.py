"""The core as services and eval harnesses drive it: threads, shared and chained small models,
seeded sampling, copies and saving, and bad input refused before anything is patched."""

from __future__ import annotations

import copy
import io
import logging
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import sgl_patch
from sgl_patch import patching, tiny

from conftest import load

MIXED = [(8, 8), (4, 8)]
XL = tiny.TinySize(hidden=128, layers=8, heads=8, kv_heads=2)


# -- helpers ------------------------------------------------------------------------------------
def while_paused_inside(small, background, foreground):
    """Run ``background()`` in a thread until it is inside ``small``'s first decoder layer, hold
    it there while ``foreground()`` runs whole calls in this thread, then let it finish.

    A deterministic overlap: returns (background's result, foreground's result)."""
    reached, resume, result = threading.Event(), threading.Event(), {}

    def hook(module, args, kwargs):
        if threading.current_thread().name == "background" and not reached.is_set():
            reached.set()
            assert resume.wait(60), "the foreground never finished"

    def body():
        try:
            with torch.no_grad():
                result["value"] = background()
        except BaseException as error:  # re-raised in the test's thread below
            result["error"] = error

    handle = small.model.language_model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    thread = threading.Thread(target=body, name="background")
    try:
        thread.start()
        assert reached.wait(60), "the background call never reached the small model"
        foreground_result = foreground()
    finally:
        resume.set()
        thread.join(120)
        handle.remove()
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    return result["value"], foreground_result


# -- 1, 2: concurrency and shared small models ----------------------------------------------------
def test_one_small_model_guides_two_large_models_from_many_threads(saved_models, family):
    small = load(saved_models[family]["small"])
    large_a = load(saved_models[family]["large"])
    large_b = tiny.qwen2_vl_model(XL, family, seed=5)
    sgl_patch.apply(large_a, small_model=small, layer=2, retain=0.25)
    sgl_patch.apply(large_b, small_model=small, layer=3, retain=0.1, exit_threshold=0.3)
    calls = [(model, tiny.qwen2_vl_inputs(sides, seed=seed))
             for seed, sides in enumerate([MIXED, [(8, 8)], [(4, 4), (8, 4), (4, 8)], [(8, 12)]])
             for model in (large_a, large_b)]
    sequential = [model.generate(**batch, max_new_tokens=5) for model, batch in calls]

    def one(i):
        with torch.no_grad():
            model, batch = calls[i % len(calls)]
            return i % len(calls), model.generate(**batch, max_new_tokens=5)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(3 * len(calls))))
    for i, out in results:
        assert torch.equal(out, sequential[i]), f"call {i} differs from its sequential result"
    assert "_sgl_state" not in small.__dict__  # the small model is left plain


def test_two_large_models_capture_on_one_small_model_at_once(saved_models):
    """Deterministic overlap: thread A is paused inside the small model's capture for large A
    while thread B runs large B's whole call through the same small model."""
    paths = saved_models["qwen2_vl"]
    small, large_a = load(paths["small"]), load(paths["large"])
    large_b = tiny.qwen2_vl_model(XL, seed=6)
    batch_a, batch_b = tiny.qwen2_vl_inputs(MIXED, seed=50), tiny.qwen2_vl_inputs([(8, 12)], seed=51)
    sgl_patch.apply(large_a, small_model=small, retain=0.25, exit_threshold=0.4)
    sgl_patch.apply(large_b, small_model=small, retain=0.1)
    expected_a = large_a.generate(**batch_a, max_new_tokens=5)
    expected_b = large_b.generate(**batch_b, max_new_tokens=5)
    got_a, got_b = while_paused_inside(small, lambda: large_a.generate(**batch_a, max_new_tokens=5),
                                       lambda: large_b.generate(**batch_b, max_new_tokens=5))
    assert torch.equal(got_a, expected_a) and torch.equal(got_b, expected_b)


def test_small_model_called_directly_while_it_guides_in_another_thread(pair):
    small, large = pair
    batch_large, batch_small = tiny.qwen2_vl_inputs(MIXED, seed=52), tiny.qwen2_vl_inputs([(4, 8)], seed=53)
    plain = small.generate(**batch_small, max_new_tokens=5)
    plain_importance = sgl_patch.importance(small, max_new_tokens=3, **batch_small)
    sgl_patch.apply(large, small_model=small, retain=0.25)
    expected = large.generate(**batch_large, max_new_tokens=5)
    guided, (direct, direct_importance) = while_paused_inside(
        small, lambda: large.generate(**batch_large, max_new_tokens=5),
        lambda: (small.generate(**batch_small, max_new_tokens=5),
                 sgl_patch.importance(small, max_new_tokens=3, **batch_small)))
    assert torch.equal(direct, plain)
    torch.testing.assert_close(direct_importance.scores, plain_importance.scores, rtol=1e-6, atol=0)
    assert torch.equal(guided, expected)


def test_one_patched_model_serves_several_threads(pair):
    small, large = pair
    sgl_patch.apply(large, small_model=small, retain=0.25, exit_threshold=0.5)
    batches = [tiny.qwen2_vl_inputs(sides, seed=60 + i) for i, sides in enumerate([MIXED, [(8, 8)], [(4, 4)]])]
    sequential = [large.generate(**b, max_new_tokens=4) for b in batches]
    n_records = len(sgl_patch.stats(large))

    def one(i):
        with torch.no_grad():
            return large.generate(**batches[i % 3], max_new_tokens=4)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(one, range(9)))
    for i, out in enumerate(results):
        assert torch.equal(out, sequential[i % 3])
    assert len(sgl_patch.stats(large)) == n_records + 3 * (2 + 1 + 1)


# -- 3: chains ---------------------------------------------------------------------------------
def test_chained_pairs_each_guide_as_a_plain_model(saved_models, family):
    tiny_model = load(saved_models[family]["small"])
    middle = load(saved_models[family]["large"])
    big = tiny.qwen2_vl_model(XL, family, seed=7)
    batch = tiny.qwen2_vl_inputs(MIXED, seed=54)
    sgl_patch.apply(big, small_model=middle, layer=2, retain=0.25)
    guided_by_plain_middle = big.generate(**batch, max_new_tokens=5)
    sgl_patch.apply(middle, small_model=tiny_model, layer=1, retain=0.25)  # 72B <- 7B <- 2B
    assert torch.equal(big.generate(**batch, max_new_tokens=5), guided_by_plain_middle)
    assert sgl_patch.stats(middle) == []  # guiding, the middle model ran plain

    reference_middle = load(saved_models[family]["large"])
    sgl_patch.apply(reference_middle, small_model=load(saved_models[family]["small"]), layer=1, retain=0.25)
    expected_direct = reference_middle.generate(**batch, max_new_tokens=5)
    assert torch.equal(middle.generate(**batch, max_new_tokens=5), expected_direct)
    assert [r["n_kept"] for r in sgl_patch.stats(middle)] == [4, 2]


# -- 4: the random stream ------------------------------------------------------------------------
def test_seeded_sampling_is_unchanged_at_retain_one(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=55)
    settings = dict(max_new_tokens=6, do_sample=True, temperature=1.5, top_k=0)
    torch.manual_seed(3)
    base = large.generate(**batch, **settings)
    after_base = torch.rand(3)
    sgl_patch.apply(large, small_model=small, layer=2, retain=1.0)
    torch.manual_seed(3)
    assert torch.equal(large.generate(**batch, **settings), base)
    assert torch.equal(torch.rand(3), after_base)  # the stream after the call is where it was


# -- 5: copies and saving ---------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_saved_patched_model_loads_unpatched_and_can_be_applied_again(pair, how):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=56)
    base = large.generate(**batch, max_new_tokens=5)
    plain_size = len(pickle.dumps(large))
    sgl_patch.apply(large, small_model=small, retain=0.25)
    large.generate(**batch, max_new_tokens=5)
    if how == "pickle":
        data = pickle.dumps(large)
        assert len(data) < plain_size + 4096  # the small model is not inside
        loaded = pickle.loads(data)
    else:
        buffer = io.BytesIO()
        torch.save(large, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
    assert loaded.__dict__.get("_sgl_state") is None
    assert sgl_patch.stats(loaded) == []
    assert torch.equal(loaded.generate(**batch, max_new_tokens=5), base)
    sgl_patch.apply(loaded, small_model=small, retain=0.25)
    loaded.generate(**batch, max_new_tokens=5)
    assert [r["n_kept"] for r in sgl_patch.stats(loaded)] == [4, 2]
    sgl_patch.remove(loaded)
    assert torch.equal(loaded.generate(**batch, max_new_tokens=5), base)


def test_save_pretrained_of_a_patched_model_writes_only_its_own_weights(pair, tmp_path):
    from safetensors.torch import load_file

    small, large = pair
    large.save_pretrained(tmp_path / "plain")
    sgl_patch.apply(large, small_model=small, retain=0.25, exit_threshold=0.5)
    large.save_pretrained(tmp_path / "patched")
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    patched = load_file(tmp_path / "patched" / "model.safetensors")
    assert plain.keys() == patched.keys()
    assert all(torch.equal(plain[k], patched[k]) for k in plain)
    assert (tmp_path / "plain" / "config.json").read_text() == (tmp_path / "patched" / "config.json").read_text()


# -- 6, 7: bad input is refused before anything is patched -------------------------------------------
def _snapshot(model):
    layer_cls = type(model.model.language_model.layers[0])
    return {
        "model class": dict(type(model).__dict__),
        "layer class": dict(layer_cls.__dict__),
        "attention table": dict(ALL_ATTENTION_FUNCTIONS._local_mapping),
        "attention table attributes": dict(vars(ALL_ATTENTION_FUNCTIONS)),
        "installed wrappers": dict(patching._installed),
        "model attributes": set(model.__dict__),
        "layer attributes": [set(layer.__dict__) for layer in model.model.language_model.layers],
    }


def _same(before, after):
    for what in before:
        a, b = before[what], after[what]
        if isinstance(a, dict):
            assert a.keys() == b.keys(), what
            assert all(a[k] is b[k] for k in a), what
        else:
            assert a == b, what


def _other_geometry_small(family):
    config = tiny.qwen2_vl_config(tiny.SMALL, family)
    config.vision_config.spatial_merge_size = 1
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_config(config).eval()


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2))


def _other_ids_small(small):
    small.config.video_token_id = 300
    return small


def _other_eos_small(small):
    small.generation_config.eos_token_id = 7
    return small


APPLY_REFUSALS = [
    ({"retain": "0.5"}, TypeError, r"retain must be a number in \(0, 1\], got str '0.5'"),
    ({"retain": 0.0}, ValueError, r"retain must be a fraction in \(0, 1\], got 0.0"),
    ({"retain": float("nan")}, ValueError, "retain must be a fraction"),
    ({"layer": "2"}, TypeError, "layer must be an int K >= 0 or a float in \\(0, 1\\), got str '2'"),
    ({"layer": 6}, ValueError, "layer=6 is out of range: the large model has 6 decoder layers"),
    ({"layer": 0.05}, ValueError, "layer=0.05 of 6 decoder layers resolves to K=0"),
    ({"exit_threshold": "high"}, TypeError, "exit_threshold must be a number or None, got str"),
    ({"consistency_retain": 2}, ValueError, "consistency_retain must be a fraction"),
    ({"small_model": 42}, TypeError, "small_model must be a model or a local path / hub id, got int"),
    ({"small_model": "large itself"}, ValueError, "small_model is the large model itself"),
    ({"small_model": _llama}, TypeError, "small_model: sgl_patch does not support LlamaForCausalLM"),
    ({"small_model": "other geometry"}, ValueError,
     r"small_model cannot guide this model.*vision_config.spatial_merge_size: large 2 vs small 1"),
    ({"small_model": _other_ids_small}, ValueError,
     r"small_model cannot guide this model.*visual placeholder ids: large \[5, 6\] vs small \[5, 300\]"),
    ({"small_model": _other_eos_small, "exit_threshold": 0.5}, ValueError, "eos_token_id: large 2 vs small 7"),
]


@pytest.mark.parametrize("already_patched", [False, True], ids=["fresh", "patched"])
@pytest.mark.parametrize("options,error,message", APPLY_REFUSALS,
                         ids=[f"{i}-{list(o)[0]}" for i, (o, _, _) in enumerate(APPLY_REFUSALS)])
def test_refused_apply_changes_nothing(pair, family, options, error, message, already_patched):
    small, large = pair
    handle = sgl_patch.apply(large, small_model=small, retain=0.5) if already_patched else None
    options = dict(options)
    chosen = options.get("small_model", small)
    if chosen == "large itself":
        chosen = large
    elif chosen == "other geometry":
        chosen = _other_geometry_small(family)
    elif chosen is _llama:
        chosen = _llama()
    elif callable(chosen) and not isinstance(chosen, torch.nn.Module):
        chosen = chosen(small)
    options["small_model"] = chosen
    before = _snapshot(large)
    with pytest.raises(error, match=message):
        sgl_patch.apply(large, **options)
    _same(before, _snapshot(large))
    if already_patched:
        assert large.__dict__["_sgl_state"].applied.config is handle.config  # the old options stay
    else:
        assert "_sgl_state" not in large.__dict__


PRUNED_REFUSALS = [
    ({"retain": "0.5"}, TypeError, "retain must be a number"),
    ({"retain": 0}, ValueError, "retain must be a fraction"),
    ({"layer": 6}, ValueError, r"layer must be an int in \[0, 5\]"),
    ({"layer": 1.5}, TypeError, "layer must be an int decoder-layer index"),
    ({"scores": "high"}, TypeError, "scores must be an Importance"),
    ({"prompt_ids": [1, 2]}, TypeError, "prompt_ids must be a"),
]


@pytest.mark.parametrize("options,error,message", PRUNED_REFUSALS,
                         ids=[list(o)[0] + str(i) for i, (o, _, _) in enumerate(PRUNED_REFUSALS)])
def test_refused_pruned_changes_nothing(pair, options, error, message):
    small, large = pair
    arguments = {"scores": torch.ones(1, 16), "layer": 2, "retain": 0.5, **options}
    before = _snapshot(large)
    with pytest.raises(error, match=message):
        with sgl_patch.pruned(large, **arguments):
            pass
    _same(before, _snapshot(large))
    assert "_sgl_state" not in large.__dict__


def test_a_small_model_larger_than_the_large_one_gets_a_warning(pair, caplog):
    small, large = pair
    with caplog.at_level(logging.WARNING, logger="sgl_patch"):
        sgl_patch.apply(small, small_model=large)
    assert any("is larger than the model it guides" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sgl_patch"):
        sgl_patch.apply(large, small_model=small)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_stats_file_that_cannot_be_written_fails_at_apply(pair, tmp_path, monkeypatch):
    small, large = pair
    monkeypatch.setenv("SGL_STATS_FILE", str(tmp_path / "missing" / "stats.jsonl"))
    before = _snapshot(large)
    with pytest.raises(ValueError, match=r"SGL_STATS_FILE=.*missing.*cannot be written"):
        sgl_patch.apply(large, small_model=small)
    monkeypatch.setenv("SGL_STATS_FILE", str(tmp_path))  # a directory
    with pytest.raises(ValueError, match="SGL_STATS_FILE=.*cannot be written"):
        sgl_patch.apply(large, small_model=small)
    _same(before, _snapshot(large))


# -- 9, 10: calls as harnesses make them; records ------------------------------------------------
def test_input_ids_with_inputs_embeds_works_as_unpatched(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=57)
    embeds = large.get_input_embeddings()(batch["input_ids"])
    base = large.generate(**batch, inputs_embeds=embeds, max_new_tokens=5)
    sgl_patch.apply(large, small_model=small, retain=1.0)
    assert torch.equal(large.generate(**batch, inputs_embeds=embeds, max_new_tokens=5), base)
    sgl_patch.apply(large, small_model=small, retain=0.25)
    with_embeds = large.generate(**batch, inputs_embeds=embeds, max_new_tokens=5, num_beams=2)
    assert torch.equal(with_embeds, large.generate(**batch, max_new_tokens=5, num_beams=2))
    assert [r["n_kept"] for r in sgl_patch.stats(large)] == [4, 2, 4, 2]


def test_records_report_the_tokens_the_applied_plan_kept(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs([(8, 12)], seed=58)
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.3)
    out = large.generate(**batch, max_new_tokens=4, return_dict_in_generate=True)
    record = sgl_patch.stats(large)[0]
    cache = out.past_key_values
    full, at_k = cache.layers[1].keys.shape[2], cache.layers[2].keys.shape[2]
    assert record["n_visual"] == 24 and full - at_k == record["n_visual"] - record["n_kept"]
    assert record["n_kept"] == 8


def test_settings_passed_as_none_reach_generate_as_given(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=59)
    for model in (small, large):  # the models' own default, which a None must override
        model.generation_config.max_new_tokens = 3
    base = large.generate(**batch, max_new_tokens=None, top_p=None)
    assert base.shape[1] != batch["input_ids"].shape[1] + 3  # None did override the default
    sgl_patch.apply(large, small_model=small, retain=1.0)
    assert torch.equal(large.generate(**batch, max_new_tokens=None, top_p=None), base)



# -- found by review: the caller's objects, copies, removal mid-call, other models' eager lookups --
class ForceFirst:
    """A stateful logits processor: forces ``token`` at the first step it sees, then nothing."""

    def __init__(self, token):
        self.token, self.calls = token, 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        if self.calls == 1:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, self.token] = 0.0
        return scores


class StopAfter:
    """A stateful stopping criterion: stops after ``n`` steps in all."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        return torch.full((input_ids.shape[0],), self.calls >= self.n, dtype=torch.bool)


def test_callers_decoding_objects_are_used_by_the_large_model_alone(pair):
    from transformers import LogitsProcessorList, StoppingCriteriaList

    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=70)

    def objects():
        return dict(logits_processor=LogitsProcessorList([ForceFirst(77)]),
                    stopping_criteria=StoppingCriteriaList([StopAfter(3)]))

    base = large.generate(**batch, max_new_tokens=6, **objects())
    assert (base[:, batch["input_ids"].shape[1]] == 77).all() and base.shape[1] == batch["input_ids"].shape[1] + 3
    sgl_patch.apply(large, small_model=small, retain=1.0)
    assert torch.equal(large.generate(**batch, max_new_tokens=6, **objects()), base)
    # the small model's answer did not follow the caller's objects: it never stands in for the large one
    sgl_patch.apply(large, small_model=small, retain=1.0, exit_threshold=0.0)
    assert torch.equal(large.generate(**batch, max_new_tokens=6, **objects()), base)
    assert [r["exited"] for r in sgl_patch.stats(large)] == [False, False]


def test_an_empty_cache_given_by_the_caller_is_the_large_models_alone(pair):
    from transformers import DynamicCache

    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=71)
    base = large.generate(**batch, max_new_tokens=5, past_key_values=DynamicCache(config=large.config))
    sgl_patch.apply(large, small_model=small, retain=1.0)
    cache = DynamicCache(config=large.config)
    assert torch.equal(large.generate(**batch, max_new_tokens=5, past_key_values=cache), base)
    assert cache.get_seq_length() == base.shape[1] - 1  # it holds the large model's run


def test_eager_lookups_of_other_models_resolve_to_their_own_function_during_a_capture(pair):
    from sgl_patch.capture import capturing

    small, _ = pair
    calls = []

    def own_eager(module, query, key, value, attention_mask, **kwargs):  # as a modeling file's default
        calls.append(module)
        return "own result", None

    assert ALL_ATTENTION_FUNCTIONS.get_interface("eager", own_eager) is own_eager
    foreign = torch.nn.Linear(1, 1)
    with capturing(small):
        during = ALL_ATTENTION_FUNCTIONS.get_interface("eager", own_eager)
        assert during(foreign, None, None, None, None)[0] == "own result" and calls == [foreign]
    assert ALL_ATTENTION_FUNCTIONS.get_interface("eager", own_eager) is own_eager


def test_a_shallow_copy_does_not_take_the_patch_with_it(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=72)
    sgl_patch.apply(large, small_model=small, retain=0.25)
    pruned_answer = large.generate(**batch, max_new_tokens=5)
    shallow = copy.copy(large)
    assert sgl_patch.stats(shallow) == []
    sgl_patch.remove(shallow)  # not patched itself: must not unpatch the original
    assert torch.equal(large.generate(**batch, max_new_tokens=5), pruned_answer)
    assert len(sgl_patch.stats(large)) == 4


def test_remove_from_another_thread_while_a_call_runs(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs(MIXED, seed=73)
    base = large.generate(**batch, max_new_tokens=5)
    before = _snapshot(large)
    sgl_patch.apply(large, small_model=small, retain=0.25)
    pruned_answer = large.generate(**batch, max_new_tokens=5)
    during, _ = while_paused_inside(small, lambda: large.generate(**batch, max_new_tokens=5),
                                    lambda: sgl_patch.remove(large))
    assert torch.equal(during, pruned_answer)  # a call that started patched finishes patched
    _same(before, _snapshot(large))
    assert torch.equal(large.generate(**batch, max_new_tokens=5), base)


def test_sliding_window_models_are_refused_at_apply(pair):
    small, large = pair
    text = large.model.language_model.config
    text.layer_types = ["full_attention"] * 2 + ["sliding_attention"] * 4
    before = _snapshot(large)
    with pytest.raises(NotImplementedError, match="full-attention language models only"):
        sgl_patch.apply(large, small_model=small)
    _same(before, _snapshot(large))


def test_numpy_scalars_are_numbers(pair):
    import numpy as np

    small, large = pair
    handle = sgl_patch.apply(large, small_model=small, layer=np.int64(2), retain=np.float32(0.25))
    assert handle.layer == 2 and type(handle.config.retain) is float
    large.generate(**tiny.qwen2_vl_inputs([(8, 8)], seed=74), max_new_tokens=2)
    assert sgl_patch.stats(large)[0]["n_kept"] == 4


@pytest.mark.parametrize("raw,layer", [("+2", 2), (" 3 ", 3), ("0.5", 0.5)])
def test_layer_from_the_environment_parses_signed_ints(raw, layer):
    from sgl_patch.config import SGLConfig

    parsed = SGLConfig.from_env_and_args(environ={"SGL_LAYER": raw}).layer
    assert parsed == layer and type(parsed) is type(layer)


def test_an_environment_layer_past_the_depth_says_so_once():
    from sgl_patch.config import SGLConfig

    with pytest.raises(ValueError) as error:
        SGLConfig.from_env_and_args(environ={"SGL_LAYER": "99"}).resolve_layer(6)
    assert str(error.value) == ("SGL_LAYER=99 is out of range: the large model has 6 decoder layers, "
                                "so layer must be in [0, 5]")
