"""The core's guarantees on the original codebases (legacy transformers line), one suite over kits.

Kits (``kits.py``): InternVL2's ``InternVLChatModel`` with each language model (InternLM2, Qwen2,
Llama, Phi-3) as small and as large, and the ``llava`` package's LLaVA-1.5 / 1.6 (Vicuna and
Mistral) checkpoints - tiny, saved and loaded as users load them (``trust_remote_code``;
``load_pretrained_model``).  References are independent of sgl_patch: eager attention weights
from ``output_attentions``, and a pruned forward expressed as the unpatched model with layers >= K
masked to the kept keys.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from packaging.version import Version

import sgl_patch
from sgl_patch.tiny.base import EOS

from .kits import InternVL2Kit, LlavaKit, kits

VERSION = Version(transformers.__version__)
KITS = kits((VERSION.major, VERSION.minor))
MAX_NEW = 5


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    paths = {}

    def get(kit):
        if kit.name not in paths:
            paths[kit.name] = kit.save(tmp_path_factory.mktemp(kit.name))
        return paths[kit.name]

    return get


@pytest.fixture(params=KITS, ids=lambda k: k.name)
def kit(request):
    return request.param


@pytest.fixture
def pair(kit, saved):
    paths = saved(kit)
    return kit.load(paths["small"]), kit.load(paths["large"])


def kept_count(n: int, retain: float) -> int:
    return 0 if n == 0 else max(1, math.ceil(retain * n - 1e-9))


def new_tokens(kit, model, out, batch):
    """Generated tokens as a list per row, cut after the first end token (what a user decodes)."""
    rows = []
    for row in out.tolist():
        answer = []
        for token in row:
            answer.append(token)
            if token == EOS:
                break
        rows.append(answer)
    return rows


# -- the references --------------------------------------------------------------------------------
def eager_importance(kit, model_eager, batch):
    """(prefill, decode) ``[b, max_visual]`` summed from eager ``output_attentions``."""
    out = kit.generate(model_eager, batch, max_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                       output_attentions=True)
    visual = kit.visual_layout(model_eager, batch)
    embeds = kit.embeddings(model_eager, batch)
    b, length = visual.shape
    assert embeds.shape[1] == length, "the reference layout must cover the language model's sequence"
    valid = torch.ones_like(visual) if "attention_mask" not in batch or isinstance(kit, LlavaKit) else \
        batch["attention_mask"].bool()
    if isinstance(kit, LlavaKit):  # padded on the left by the package: valid from the first real position
        lengths = batch["attention_mask"].sum(1) - 1 + visual.sum(1)
        valid = torch.arange(length)[None] >= (length - lengths)[:, None]
    rows = ~visual & valid & (visual.cumsum(1) > 0)
    prefill = torch.zeros(b, length, dtype=torch.float64)
    for attn in out.attentions[0]:
        prefill += (attn.double() * rows[:, None, :, None]).sum((1, 2))
    decode = torch.zeros(b, length, dtype=torch.float64)
    for step in out.attentions[1:]:
        for attn in step:
            decode += attn.double()[:, :, -1, :length].sum(1)
    width = int(visual.sum(1).max())

    def by_row(full):
        rows_out = torch.zeros(b, width, dtype=torch.float64)
        for r in range(b):
            values = full[r, visual[r]]
            rows_out[r, :values.numel()] = values
        return rows_out

    return by_row(prefill), by_row(decode)


def masked_pruned_logits(kit, model, sample, scores_row, layer, retain):
    """Logits at the kept positions of one unpadded sample: the unpatched model, with layers >= K
    attending only to kept keys (their queries at pruned positions are simply never read)."""
    embeds = kit.embeddings(model, sample)
    visual = kit.visual_layout(model, sample)[0]
    positions = visual.nonzero().squeeze(1)
    keep = ~visual.clone()
    if positions.numel():
        keep[positions[torch.topk(scores_row[:positions.numel()], kept_count(positions.numel(), retain)).indices]] = True
    n = embeds.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    allowed = causal & keep[None, :]
    mask = torch.zeros(1, 1, n, n, dtype=embeds.dtype).masked_fill(~allowed, torch.finfo(embeds.dtype).min)
    lm = model.language_model.model if isinstance(kit, InternVL2Kit) else model.model

    def override(_, args, kwargs):
        kwargs["attention_mask"] = mask
        return args, kwargs

    handles = [layer_module.register_forward_pre_hook(override, with_kwargs=True) for layer_module in lm.layers[layer:]]
    try:
        logits = kit.language_model_logits(model, embeds)
    finally:
        for handle in handles:
            handle.remove()
    return logits[0, keep]


# -- the suite -------------------------------------------------------------------------------------
def _patch_points(model) -> dict:
    """Every class / module attribute the legacy line's wrappers may replace, as found now."""
    import sys

    from sgl_patch.adapters import adapter_for

    adapter = adapter_for(model)
    attention = adapter.attention_modules(model)[0]
    module = sys.modules[type(attention).__module__]
    owners = [(type(model), "generate"), (type(adapter.decoder_layers(model)[0]), "forward"),
              (type(adapter.forward_module(model)), "forward"), (type(attention), "forward"),
              (module, "apply_rotary_pos_emb")]
    if getattr(attention, "rotary_emb", None) is not None:
        owners.append((type(attention.rotary_emb), "forward"))
    if adapter.expansion_method:
        owners.append((type(model), adapter.expansion_method))
    return {(owner, name): vars(owner).get(name) for owner, name in owners}


def test_retain_one_is_identity_and_remove_restores(kit, pair):
    small, large = pair
    batch = kit.inputs(large, kit.mixed, seed=3)
    originals = _patch_points(large)
    kwargs = dict(max_new_tokens=MAX_NEW, do_sample=False, return_dict_in_generate=True, output_scores=True)
    base = kit.generate(large, batch, **kwargs)
    sgl_patch.apply(large, small_model=small, layer=1, retain=1.0)
    wrapped = [key for key, value in _patch_points(large).items() if value is not originals[key]]
    assert len(wrapped) == len(originals), f"not wrapped while applied: {set(originals) - set(wrapped)}"
    patched = kit.generate(large, batch, **kwargs)
    assert torch.equal(patched.sequences, base.sequences)
    for a, b in zip(patched.scores, base.scores):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert [r["n_visual"] for r in sgl_patch.stats(large)] == kit.visual_layout(large, batch).sum(1).tolist()
    sgl_patch.remove(large)
    assert _patch_points(large) == originals  # the very objects: classes and modeling modules as found
    after = kit.generate(large, batch, **kwargs)
    assert torch.equal(after.sequences, base.sequences)
    for a, b in zip(after.scores, base.scores):
        assert torch.equal(a, b)


def test_importance_equals_eager_attention_sums(kit, saved):
    paths = saved(kit)
    small, small_eager = kit.load(paths["small"]), kit.load(paths["small"], eager=True)
    batch = kit.inputs(small, kit.mixed, seed=5)
    got = sgl_patch.importance(small, max_new_tokens=4, **batch)
    prefill, decode = eager_importance(kit, small_eager, batch)
    torch.testing.assert_close(got.prefill.double(), prefill, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.decode.double(), decode, rtol=1e-4, atol=1e-6)
    assert got.n_visual.tolist() == kit.visual_layout(small, batch).sum(1).tolist()
    assert prefill.sum() > 0 and decode.sum() > 0


@pytest.mark.parametrize("layer,retain", [(2, 0.25), (1, 0.1)])
def test_pruned_forward_equals_masked_reference(kit, pair, layer, retain):
    small, large = pair
    batch = kit.inputs(large, kit.mixed, seed=7)
    imp = sgl_patch.importance(small, max_new_tokens=4, **batch)
    with sgl_patch.pruned(large, imp, layer=layer, retain=retain, prompt_ids=kit.prompt_ids(batch)):
        logits = kit.forward(large, batch)
    for row in range(len(kit.mixed)):
        sample = kit.single(large, batch, row, kit.mixed)
        reference = masked_pruned_logits(kit, large, sample, imp.scores[row], layer, retain)
        # rows are right-aligned: the sample's kept tokens are the last slots of its row
        torch.testing.assert_close(logits[row, -reference.shape[0]:], reference, atol=1e-4, rtol=1e-4)


def test_padded_batch_gives_each_sample_its_own_answer(kit, pair):
    small, large = pair
    batch = kit.inputs(large, kit.mixed, seed=10)
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.2)
    together = new_tokens(kit, large, kit.generate(large, batch, max_new_tokens=MAX_NEW, do_sample=False), batch)
    for row in range(len(kit.mixed)):
        alone = kit.single(large, batch, row, kit.mixed)
        answer = new_tokens(kit, large, kit.generate(large, alone, max_new_tokens=MAX_NEW, do_sample=False), alone)
        assert together[row] == answer[0], f"sample {row}"
    records = sgl_patch.stats(large)[:len(kit.mixed)]
    counts = kit.visual_layout(large, batch).sum(1).tolist()
    assert [r["n_visual"] for r in records] == counts
    assert [r["n_kept"] for r in records] == [kept_count(n, 0.2) for n in counts]


def test_exit_thresholds_give_the_small_or_the_pruned_large_answer(kit, pair):
    small, large = pair
    if not kit.same_template:
        pytest.skip(f"{kit.name}: the two chat templates end answers with different tokens (early exit refused)")
    batch = kit.inputs(large, kit.mixed, seed=11)
    expected_small = kit.generate(small, batch, max_new_tokens=MAX_NEW, do_sample=False)
    sgl_patch.apply(large, small_model=small, exit_threshold=0.0)
    assert torch.equal(kit.generate(large, batch, max_new_tokens=MAX_NEW, do_sample=False), expected_small)
    assert all(r["exited"] for r in sgl_patch.stats(large))

    imp = sgl_patch.importance(small, max_new_tokens=MAX_NEW, **batch)
    with sgl_patch.pruned(large, imp, layer=2, retain=0.05, prompt_ids=kit.prompt_ids(batch)):
        expected_large = kit.generate(large, batch, max_new_tokens=MAX_NEW, do_sample=False)
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.05, exit_threshold=1.01)
    assert torch.equal(kit.generate(large, batch, max_new_tokens=MAX_NEW, do_sample=False), expected_large)
    records = sgl_patch.stats(large)
    assert not any(r["exited"] for r in records) and all(0.0 <= r["exit_score"] <= 1.0 for r in records)


def test_a_small_model_with_other_vision_geometry_is_refused(kit, saved, tmp_path):
    large = kit.load(saved(kit)["large"])
    small = kit.load(kit.mismatched(tmp_path))
    with pytest.raises(ValueError, match="small_model"):
        sgl_patch.apply(large, small_model=small)
    assert large.__dict__.get("_sgl_state") is None


# -- InternVL2's own entry points -------------------------------------------------------------------
INTERNVL2 = [k for k in KITS if isinstance(k, InternVL2Kit)]


@pytest.mark.parametrize("kit", INTERNVL2[:2], ids=lambda k: k.name)
def test_chat_and_batch_chat_run_under_apply(kit, saved):
    from sgl_patch.tiny import internvl2 as iv

    paths = saved(kit)
    small, large = kit.load(paths["small"]), kit.load(paths["large"])
    small.img_context_token_id = None  # chat() sets it on the large model only
    tokenizer = iv.load_tokenizer(paths["large"])
    pixels = torch.randn(5, 3, iv.TILE, iv.TILE, generator=torch.Generator().manual_seed(0))
    config = dict(max_new_tokens=MAX_NEW, do_sample=False)
    questions = ["<image>\nWhat is this?", "Describe it.", "How many?"]
    base_chat = large.chat(tokenizer, pixels[:2], questions[0], dict(config))
    base_batch = large.batch_chat(tokenizer, pixels, questions, dict(config), num_patches_list=[2, 1, 2])
    sgl_patch.apply(large, small_model=small, layer=1, retain=1.0)
    assert large.chat(tokenizer, pixels[:2], questions[0], dict(config)) == base_chat
    assert large.batch_chat(tokenizer, pixels, questions, dict(config), num_patches_list=[2, 1, 2]) == base_batch
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.1)
    large.batch_chat(tokenizer, pixels, questions, dict(config), num_patches_list=[2, 1, 2])
    records = sgl_patch.stats(large)
    assert [r["n_visual"] for r in records[-3:]] == [32, 16, 32] and [r["n_kept"] for r in records[-3:]] == [4, 2, 4]


@pytest.mark.parametrize("kit", INTERNVL2[:1], ids=lambda k: k.name)
def test_generate_without_img_context_token_id_is_a_clear_error(kit, pair):
    small, large = pair
    batch = kit.inputs(large, kit.one)
    large.img_context_token_id = None
    sgl_patch.apply(large, small_model=small)
    with pytest.raises(ValueError, match="img_context_token_id"):
        large.generate(**batch, max_new_tokens=2)


def test_llava_outside_its_transformers_line_is_refused_at_apply():
    if VERSION < Version("4.38"):
        pytest.skip("llava-torch runs on this transformers")
    from sgl_patch.adapters.llava_torch import ADAPTER

    assert "4.37" in ADAPTER.transformers
    with pytest.raises(Exception, match="transformers"):
        ADAPTER.check_transformers("LlavaLlamaForCausalLM")


# -- FlashAttention 2 classes (2D masks), on pure-torch stand-ins for the flash_attn kernels --------------
_KERNELS = ("flash_attn_func", "flash_attn_varlen_func", "index_first_axis", "pad_input", "unpad_input")


@pytest.mark.parametrize("llm", ["internlm2", "phi3", "qwen2", "llama"])
def test_flash_attention_classes_capture_and_prune_as_eager(llm, tmp_path, monkeypatch):
    """The flash classes get 2D padding masks, in pruned layers too: same importance, same pruned
    answers as the eager classes of the same weights."""
    import copy
    import sys

    from sgl_patch.tiny import internvl2 as iv

    from . import test_tiny_internvl2 as kernels

    paths = InternVL2Kit(llm, llm).save(tmp_path)
    small_eager, large_eager = iv.load(paths["small"]), iv.load(paths["large"])

    def with_flash(vlm):
        lm = vlm.language_model
        # where the kernels are looked up: the modeling file (4.37, remote code) or transformers' shared
        # flash helper (4.49's dispatched Qwen2 / Llama attention)
        homes = [sys.modules[type(lm).__module__]]
        if "transformers.modeling_flash_attention_utils" in sys.modules or VERSION >= Version("4.40"):
            import transformers.modeling_flash_attention_utils as shared

            homes.append(shared)
        for home in homes:
            for name in _KERNELS:
                monkeypatch.setattr(home, name, getattr(kernels, name), raising=False)
            monkeypatch.setattr(home, "_flash_supports_window_size", True, raising=False)
        config = copy.deepcopy(lm.config)
        if llm == "internlm2":
            monkeypatch.setattr(homes[0], "has_flash_attn", True)
            monkeypatch.setattr(homes[0], "_import_flash_attn", lambda: None)
            config.attn_implementation = "flash_attention_2"
        else:
            # PreTrainedModel.__init__ checks that the flash_attn package is installed
            monkeypatch.setattr(transformers.PreTrainedModel, "_check_and_enable_flash_attn_2",
                                classmethod(lambda cls, config, *args, **kwargs: config))
            config._attn_implementation = "flash_attention_2"
        flash_lm = type(lm)(config).eval()
        flash_lm.load_state_dict(lm.state_dict())
        flash_lm.generation_config = lm.generation_config
        flash = copy.deepcopy(vlm)
        flash.language_model = flash_lm
        attention = InternVL2Kit.attention_of(flash)
        assert "Flash" in type(attention).__name__ or flash_lm.config._attn_implementation == "flash_attention_2"
        return flash

    small_flash, large_flash = with_flash(small_eager), with_flash(large_eager)
    batch = iv.inputs(large_eager, [2, 1, 3], seed=4)
    for model in (small_eager, large_eager, small_flash, large_flash):
        model.img_context_token_id = large_eager.img_context_token_id
    imp_eager = sgl_patch.importance(small_eager, max_new_tokens=4, **batch)
    imp_flash = sgl_patch.importance(small_flash, max_new_tokens=4, **batch)
    torch.testing.assert_close(imp_flash.scores, imp_eager.scores, rtol=1e-4, atol=1e-6)
    answers, masks = [], []
    pruned_attention = InternVL2Kit.attention_of(large_flash, layer=3)
    handle = pruned_attention.register_forward_pre_hook(
        lambda module, args, kwargs: masks.append(kwargs.get("attention_mask")), with_kwargs=True)
    try:
        for small, large in ((small_eager, large_eager), (small_flash, large_flash)):
            sgl_patch.apply(large, small_model=small, layer=2, retain=0.2)
            answers.append(large.generate(**batch, max_new_tokens=MAX_NEW, do_sample=False).tolist())
            assert [r["n_kept"] for r in sgl_patch.stats(large)] == [7, 4, 10]
    finally:
        handle.remove()
    assert answers[0] == answers[1]
    # the pruned prefill of the flash model: a 2D mask over the kept slots (fillers of shorter rows 0)
    assert masks[0].dim() == 2 and masks[0].shape[1] < batch["input_ids"].shape[1]
    assert masks[0].sum(1).tolist() == (batch["attention_mask"].sum(1) - torch.tensor([32, 16, 48])
                                        + torch.tensor([7, 4, 10])).tolist()


@pytest.mark.parametrize("kit", INTERNVL2[:1], ids=lambda k: k.name)
def test_small_model_given_as_a_checkpoint_path(kit, saved):
    paths = saved(kit)
    large = kit.load(paths["large"])
    batch = kit.inputs(large, kit.mixed, seed=12)
    expected = kit.generate(large, batch, max_new_tokens=MAX_NEW, do_sample=False)
    sgl_patch.apply(large, small_model=paths["small"], layer=1, retain=1.0)
    assert torch.equal(kit.generate(large, batch, max_new_tokens=MAX_NEW, do_sample=False), expected)
    assert [r["n_visual"] for r in sgl_patch.stats(large)] == [32, 16, 48]


LLAVA = [k for k in KITS if isinstance(k, LlavaKit)]


@pytest.mark.parametrize("kit", LLAVA[1:2], ids=lambda k: k.name)
def test_llava_prompt_by_any_of_its_names(kit, pair):
    """llava's generate calls the prompt ``inputs``: positional, ``inputs=`` and ``input_ids=`` (the
    processor's name) all reach it, in ``importance`` and under ``apply``."""
    small, large = pair
    batch = kit.inputs(large, kit.mixed, seed=13)
    rest = {k: v for k, v in batch.items() if k != "input_ids"}
    by_ids = sgl_patch.importance(small, max_new_tokens=3, **batch)
    by_inputs = sgl_patch.importance(small, max_new_tokens=3, inputs=batch["input_ids"], **rest)
    assert torch.equal(by_ids.scores, by_inputs.scores) and by_ids.scores.abs().sum() > 0
    expected = large.generate(batch["input_ids"], **rest, max_new_tokens=MAX_NEW, do_sample=False)
    sgl_patch.apply(large, small_model=small, layer=1, retain=1.0)
    assert torch.equal(large.generate(batch["input_ids"], **rest, max_new_tokens=MAX_NEW, do_sample=False), expected)
    assert torch.equal(large.generate(inputs=batch["input_ids"], **rest, max_new_tokens=MAX_NEW, do_sample=False),
                       expected)
    assert [r["n_visual"] for r in sgl_patch.stats(large)][-3:] == kit.visual_layout(large, batch).sum(1).tolist()


@pytest.mark.parametrize("kit", INTERNVL2[:2], ids=lambda k: k.name)
def test_one_patched_model_serves_several_threads_while_the_small_one_runs_plainly(kit, pair):
    """Capture, pruning and the wrapped rotary function are per call: threads never see each other's."""
    from concurrent.futures import ThreadPoolExecutor

    small, large = pair
    batches = [kit.inputs(large, samples, seed=60 + i) for i, samples in enumerate([kit.mixed, [1], [3]])]
    plain_small = [small.generate(**b, max_new_tokens=4, do_sample=False) for b in batches]
    plain_importance = sgl_patch.importance(small, max_new_tokens=3, **batches[0])
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.25)
    sequential = [large.generate(**b, max_new_tokens=4, do_sample=False) for b in batches]

    def one(i):
        with torch.no_grad():
            if i % 4 == 3:  # the small model, called directly meanwhile
                return small.generate(**batches[i % 3], max_new_tokens=4, do_sample=False), None
            if i % 4 == 2:
                return None, sgl_patch.importance(small, max_new_tokens=3, **batches[0]).scores
            return large.generate(**batches[i % 3], max_new_tokens=4, do_sample=False), None

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(12)))
    for i, (out, scores) in enumerate(results):
        if i % 4 == 3:
            assert torch.equal(out, plain_small[i % 3]), f"call {i}"
        elif i % 4 == 2:
            torch.testing.assert_close(scores, plain_importance.scores, rtol=1e-6, atol=0)
        else:
            assert torch.equal(out, sequential[i % 3]), f"call {i}"
