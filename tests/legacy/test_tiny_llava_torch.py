"""The tiny checkpoints of the original ``llava`` package (``sgl_patch.tiny.llava_torch``), unpatched.

They load through ``llava.model.builder.load_pretrained_model`` as the LLaVA eval scripts load real
ones, and ``model.generate`` / ``forward`` behave as the package's code makes them behave; these
tests pin the facts a plugin relies on (visual-token counts and order, padding, what ``generate``
returns).  The package's ``generate`` breaks on transformers 4.49 (``cache_position`` passed to a
``forward`` that lacks it): tests that need it are skipped there with the error as the reason, and
``test_generate_breaks_on_cache_position`` pins the break.  ``forward`` works on both releases.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from packaging.version import Version

llava = pytest.importorskip("llava.model.builder", reason="the llava package (llava-torch) is not installed")

from sgl_patch.tiny import llava_torch as lt  # noqa: E402
from sgl_patch.tiny.base import BOS, EOS, LARGE, PAD, SMALL, VOCAB  # noqa: E402

TRANSFORMERS = Version(transformers.__version__)
CLASSES = {"v1.5": "LlavaLlamaForCausalLM", "v1.6": "LlavaLlamaForCausalLM", "mistral-v1.6": "LlavaMistralForCausalLM"}
# sizes (width, height) whose anyres grids leave different numbers of rows / columns after unpadding
ANYRES_SIZES = [(16, 16), (32, 16), (16, 32), (48, 16), (40, 30)]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llava_torch")


@pytest.fixture(scope="module")
def paths(root) -> dict:
    out = {kind: lt.save_checkpoint(root, kind) for kind in lt.KINDS}
    out["v1.5-large"] = lt.save_checkpoint(root, "v1.5", LARGE, seed=1)
    out["v1.6-large"] = lt.save_checkpoint(root, "v1.6", LARGE, seed=1)
    out["v1.6-right"] = lt.save_checkpoint(root, "v1.6", padding_side="right", name="llava-v1.6-tiny-right")
    out["v1.5-left"] = lt.save_checkpoint(root, "v1.5", padding_side="left", name="llava-v1.5-tiny-left")
    return out


@pytest.fixture(scope="module")
def loaded(paths):
    cache = {}

    def get(key: str, dtype: str | None = "float32", device: str = "cpu"):
        if (key, dtype, device) not in cache:
            cache[key, dtype, device] = lt.load(paths[key], device=device, dtype=dtype)
        return cache[key, dtype, device]

    return get


@pytest.fixture(scope="module")
def generate_error(loaded) -> str | None:
    """``None`` where the package's ``generate`` runs, else the error it raises (measured, not assumed)."""
    tokenizer, model, processor, _ = loaded("v1.5")
    batch = lt.inputs(tokenizer, processor, model.config, [(16, 16)], dtype=model.dtype)
    try:
        lt.generate(model, batch, max_new_tokens=1, do_sample=False)
    except TypeError as error:
        if "cache_position" not in str(error):
            raise
        return (f"llava-torch's own generate breaks on transformers {transformers.__version__}: "
                f"GenerationMixin passes cache_position to a forward that lacks it ({error})")
    return None


@pytest.fixture
def needs_generate(generate_error):
    if generate_error:
        pytest.skip(generate_error)


def text_tokens(batch: dict, row: int = 0) -> int:
    ids = batch["input_ids"][row]
    keep = batch["attention_mask"][row].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
    return int(((ids != lt.IMAGE_TOKEN_INDEX) & keep).sum())


# -- the checkpoints on disk ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", lt.KINDS)
def test_checkpoint_layout(paths, kind):
    path = Path(paths[kind])
    assert "llava" in path.name and ("mistral" in path.name) == (kind == "mistral-v1.6")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [CLASSES[kind]]
    assert config["model_type"] == ("llava_mistral" if kind == "mistral-v1.6" else "llava_llama")
    tower = Path(config["mm_vision_tower"])
    assert (tower / "config.json").exists() and (tower / "preprocessor_config.json").exists()
    assert config["mm_hidden_size"] == json.loads((tower / "config.json").read_text())["hidden_size"]
    assert config["mm_projector_type"] == "mlp2x_gelu"
    assert (config["mm_vision_select_layer"], config["mm_vision_select_feature"]) == (-2, "patch")
    assert config["mm_use_im_start_end"] is False and config["mm_use_im_patch_token"] is False
    assert config["vocab_size"] == VOCAB
    if kind == "v1.5":
        assert (config["image_aspect_ratio"], config["mm_patch_merge_type"]) == ("pad", "flat")
        assert config["tokenizer_padding_side"] == "right"
    else:
        assert (config["image_aspect_ratio"], config["mm_patch_merge_type"]) == ("anyres", "spatial_unpad")
        assert config["image_grid_pinpoints"] == lt.PINPOINTS
        assert config["tokenizer_padding_side"] == "left"
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        assert (path / name).exists(), name


def test_small_and_large_share_tokenizer_and_tower(paths):
    for small, large in (("v1.5", "v1.5-large"), ("v1.6", "v1.6-large"), ("v1.5", "mistral-v1.6")):
        a, b = Path(paths[small]), Path(paths[large])
        for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
        ca, cb = (json.loads((p / "config.json").read_text()) for p in (a, b))
        assert ca["mm_vision_tower"] == cb["mm_vision_tower"]
    small, large = (json.loads((Path(paths[k]) / "config.json").read_text()) for k in ("v1.5", "v1.5-large"))
    assert (small["hidden_size"], small["num_hidden_layers"]) == (SMALL.hidden, SMALL.layers)
    assert (large["hidden_size"], large["num_hidden_layers"]) == (LARGE.hidden, LARGE.layers)


def test_wrong_folder_name_is_refused(root):
    with pytest.raises(ValueError, match="folder name"):
        lt.save_checkpoint(root, "mistral-v1.6", name="llava-v1.6-tiny-no-m")
    with pytest.raises(ValueError, match="unknown"):
        lt.save_checkpoint(root, "v2")


# -- loading through the builder -------------------------------------------------------------------

@pytest.mark.parametrize("kind", lt.KINDS)
def test_loads_through_load_pretrained_model(loaded, kind):
    tokenizer, model, processor, context_len = loaded(kind, dtype=None)
    assert type(model).__name__ == CLASSES[kind]
    # the Llama branch asks for use_fast=False, the Mistral branch for AutoTokenizer's default (fast)
    assert type(tokenizer).__name__ == ("LlamaTokenizerFast" if kind == "mistral-v1.6" else "LlamaTokenizer")
    assert len(tokenizer) == VOCAB and model.get_input_embeddings().weight.shape[0] == VOCAB
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (PAD, BOS, EOS)
    assert type(processor).__name__ == "CLIPImageProcessor" and processor.crop_size["height"] == lt.IMAGE_SIZE
    assert context_len == 2048  # the builder's default: the config has no max_sequence_length
    tower = model.get_vision_tower()
    assert tower.is_loaded
    # the builder loads float16 whatever its kwargs say; with device_map != "auto" the tower is cast too
    assert model.dtype == torch.float16 and tower.dtype == torch.float16
    assert model.config._attn_implementation == "sdpa"
    assert model.model.layers[0].self_attn.__class__.__name__ in {
        "LlamaSdpaAttention", "MistralSdpaAttention",  # 4.37: one class per backend
        "LlamaAttention", "MistralAttention",          # 4.49: one class, ALL_ATTENTION_FUNCTIONS inside
    }
    if kind != "v1.5":
        newline = model.get_model().image_newline
        assert torch.isfinite(newline).all() and newline.abs().sum() > 0


def test_float32_option_casts_the_whole_model(loaded):
    _, model, _, _ = loaded("v1.6", dtype="float32")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.get_vision_tower().dtype == torch.float32


def test_eval_script_call_keeps_the_tower_in_float32(loaded):
    """``load_pretrained_model(path, None, name)`` with its defaults (``device_map="auto"``)."""
    _, model, _, _ = loaded("v1.5", dtype=None, device="auto")
    assert model.dtype == torch.float16
    assert model.get_model().mm_projector[0].weight.dtype == torch.float16
    assert model.get_vision_tower().dtype == torch.float32  # cast only when device_map != "auto"


def test_slow_and_fast_tokenizers_agree(loaded):
    slow, fast = loaded("v1.5")[0], loaded("mistral-v1.6")[0]
    config = loaded("v1.5")[1].config
    texts = [lt.prompt(q, config, conv) for q in lt.QUESTIONS for conv in ("vicuna_v1", "mistral_instruct")]
    texts += ["Red  circle,\n 42 über [INST] x</s>", "a", ""]
    for text in texts:
        assert slow(text).input_ids == fast(text).input_ids, text
        ids = slow(text).input_ids
        assert slow.decode(ids, skip_special_tokens=True) == fast.decode(ids, skip_special_tokens=True)


# -- inputs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", lt.KINDS)
def test_inputs_as_the_eval_script_builds_them(loaded, kind):
    tokenizer, model, processor, _ = loaded(kind, dtype=None)
    from llava.constants import IMAGE_TOKEN_INDEX

    assert lt.IMAGE_TOKEN_INDEX == IMAGE_TOKEN_INDEX
    one = lt.inputs(tokenizer, processor, model.config, [(32, 16)])
    ids = one["input_ids"]
    assert ids.shape[0] == 1 and ids[0, 0] == BOS and int((ids == lt.IMAGE_TOKEN_INDEX).sum()) == 1
    assert "attention_mask" not in one and one["image_sizes"] == [(32, 16)]
    assert one["images"].dtype == torch.float16
    side = lt.IMAGE_SIZE
    if kind == "v1.5":
        assert one["images"].shape == (1, 3, side, side)
    else:  # the base view plus the anyres crops; the eval script's collate_fn stacks to 5-D
        assert one["images"].shape == (1, 3, 3, side, side)
    batch = lt.inputs(tokenizer, processor, model.config, [(32, 16), (48, 16)])
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].shape == batch["input_ids"].shape
    assert (batch["attention_mask"][:, -1] == 1).all() and (batch["attention_mask"][:, 0] == 0).any()  # left
    if kind == "v1.5":
        assert batch["images"].shape == (2, 3, side, side)
    else:  # different crop counts: a list, as process_images returns it
        assert isinstance(batch["images"], list) and [t.shape[0] for t in batch["images"]] == [3, 4]


# -- visual tokens -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", lt.KINDS)
def test_visual_token_counts_match_the_package(loaded, kind):
    tokenizer, model, processor, _ = loaded(kind)
    counts = set()
    for size in ANYRES_SIZES:
        batch = lt.inputs(tokenizer, processor, model.config, [size], dtype=model.dtype)
        out = model.prepare_inputs_labels_for_multimodal(batch["input_ids"], None, None, None, None, batch["images"],
                                                         image_sizes=batch["image_sizes"])
        assert out[0] is None and out[1] is None and out[2] is None and out[5] is None
        n = out[4].shape[1] - text_tokens(batch)
        assert n == lt.visual_tokens(model.config, size)
        counts.add(n)
    if kind == "v1.5":
        assert counts == {16}  # 4 x 4 patches of the padded, resized image
    else:
        assert len(counts) >= 4, counts  # anyres: the count depends on the image's size


@pytest.mark.parametrize("kind", ["v1.6", "mistral-v1.6"])
def test_anyres_order_is_base_then_rows_each_ending_in_a_newline(loaded, kind):
    tokenizer, model, processor, _ = loaded(kind)
    size = (40, 30)
    batch = lt.inputs(tokenizer, processor, model.config, [size], dtype=model.dtype)
    embeds = model.prepare_inputs_labels_for_multimodal(batch["input_ids"], None, None, None, None, batch["images"],
                                                        image_sizes=batch["image_sizes"])[4][0]
    start = int((batch["input_ids"][0] == lt.IMAGE_TOKEN_INDEX).nonzero())
    n = lt.visual_tokens(model.config, size)
    visual = embeds[start:start + n]
    newline = model.get_model().image_newline
    is_newline = (visual == newline).all(-1)
    base = (lt.IMAGE_SIZE // lt.PATCH) ** 2
    assert not is_newline[:base].any()
    rows = int(is_newline.sum())
    width = (n - base) // rows - 1
    assert rows * (width + 1) == n - base
    expected = torch.zeros(n - base, dtype=torch.bool)
    expected[width::width + 1] = True
    assert torch.equal(is_newline[base:], expected)
    # the base view is the tower's features of the first crop (the whole image resized), projected
    features = model.encode_images(batch["images"][0][:1])[0] if torch.is_tensor(batch["images"]) else None
    assert features is not None and torch.allclose(visual[:base], features, atol=1e-6)


# -- generate ------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:`do_sample` is set to `False`")
@pytest.mark.parametrize("kind", lt.KINDS)
def test_generate_runs_in_float16_as_the_eval_script(loaded, needs_generate, kind):
    tokenizer, model, processor, _ = loaded(kind, dtype=None)
    batch = lt.inputs(tokenizer, processor, model.config, [(32, 16)], dtype=model.dtype)
    with torch.inference_mode():
        out = lt.generate(model, batch, max_new_tokens=5, do_sample=False, temperature=0, top_p=None, num_beams=1,
                          use_cache=True)
    assert out.shape == (1, 6)
    text = tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip()
    assert isinstance(text, str)


@pytest.mark.parametrize("kind", lt.KINDS)
def test_generate_returns_bos_then_the_greedy_tokens(loaded, needs_generate, kind):
    """transformers 4.37.2 starts the output with a BOS (its placeholder ``input_ids`` when only
    ``inputs_embeds`` are given); the prompt is not in it."""
    tokenizer, model, processor, _ = loaded(kind)
    batch = lt.inputs(tokenizer, processor, model.config, [(40, 30)], dtype=model.dtype)
    out = lt.generate(model, batch, max_new_tokens=6, do_sample=False)
    reference = lt.greedy(model, batch, 6, use_cache=False)
    assert out[:, 0].tolist() == [BOS]
    assert torch.equal(out[:, 1:], reference)
    assert len(set(reference[0].tolist())) > 1  # the scaled lm head makes answers not one repeated token


@pytest.mark.parametrize("kind", lt.KINDS)
def test_greedy_with_and_without_cache_agree(loaded, kind):
    """Through ``forward`` (works on every release): one splice then the cache, or every step anew."""
    tokenizer, model, processor, _ = loaded(kind)
    batch = lt.inputs(tokenizer, processor, model.config, [(16, 32)], dtype=model.dtype)
    assert torch.equal(lt.greedy(model, batch, 6, use_cache=True), lt.greedy(model, batch, 6, use_cache=False))


def test_generate_forces_the_cache(loaded, needs_generate):
    """With ``inputs_embeds`` 4.37.2's ``generate`` sets ``use_cache=True`` whatever it is given."""
    tokenizer, model, processor, _ = loaded("v1.5")
    batch = lt.inputs(tokenizer, processor, model.config, [(16, 16)], dtype=model.dtype)
    seen = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs.get("use_cache"), kwargs.get("past_key_values") is not None,
                                                  kwargs.get("images") is not None)), with_kwargs=True)
    try:
        without = lt.generate(model, batch, max_new_tokens=4, do_sample=False, use_cache=False)
    finally:
        handle.remove()
    assert torch.equal(without, lt.generate(model, batch, max_new_tokens=4, do_sample=False, use_cache=True))
    # prefill without a cache, then one token at a time with it; images never reach forward
    assert seen == [(True, False, False)] + [(True, True, False)] * 3


def test_generate_breaks_on_cache_position(loaded, generate_error):
    if TRANSFORMERS < Version("4.49"):
        pytest.skip(f"transformers {transformers.__version__}: the package's generate runs (measured on 4.37.2)")
    assert generate_error is not None and "cache_position" in generate_error


# -- padded batches ------------------------------------------------------------------------------

def scores(model, batch, n: int = 3):
    out = lt.generate(model, batch, max_new_tokens=n, do_sample=False, output_scores=True,
                      return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores, 1)


@pytest.mark.parametrize("key", ["v1.6", "v1.5-left", "mistral-v1.6"])
def test_left_repadded_batch_generates_what_each_sample_does_alone(loaded, needs_generate, key):
    tokenizer, model, processor, _ = loaded(key)
    sizes, questions = [(32, 16), (16, 16)], [lt.QUESTIONS[1], lt.QUESTIONS[0]]
    batch = lt.inputs(tokenizer, processor, model.config, sizes, questions, dtype=model.dtype)
    sequences, batch_scores = scores(model, batch)
    for i in range(2):
        alone = lt.inputs(tokenizer, processor, model.config, [sizes[i]], [questions[i]], seed=i, dtype=model.dtype)
        solo_sequences, solo_scores = scores(model, alone)
        assert torch.equal(sequences[i], solo_sequences[0])
        torch.testing.assert_close(batch_scores[i], solo_scores[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(sequences[:, 1:], lt.greedy(model, batch, 3, use_cache=True))


@pytest.mark.parametrize("key", ["v1.6", "mistral-v1.6"])
def test_left_repadded_batch_through_forward_matches_each_sample_alone(loaded, key):
    """The same through ``forward`` alone, so it runs where the package's ``generate`` breaks."""
    tokenizer, model, processor, _ = loaded(key)
    sizes, questions = [(32, 16), (16, 16)], [lt.QUESTIONS[1], lt.QUESTIONS[0]]
    batch = lt.inputs(tokenizer, processor, model.config, sizes, questions, dtype=model.dtype)
    together = lt.greedy(model, batch, 4, use_cache=True)
    for i in range(2):
        alone = lt.inputs(tokenizer, processor, model.config, [sizes[i]], [questions[i]], seed=i, dtype=model.dtype)
        assert torch.equal(together[i], lt.greedy(model, alone, 4, use_cache=True)[0])


@pytest.mark.parametrize("key", ["v1.5", "v1.6-right"])
def test_right_repadded_batch_spoils_the_shorter_sample(loaded, needs_generate, key):
    """``tokenizer_padding_side="right"`` (the released LLaVA-1.5 configs): the shorter row's first
    token is predicted at a padding position, so it differs from the row alone; the longest row does not."""
    tokenizer, model, processor, _ = loaded(key)
    sizes, questions = [(32, 16), (16, 16)], [lt.QUESTIONS[1], lt.QUESTIONS[0]]
    batch = lt.inputs(tokenizer, processor, model.config, sizes, questions, dtype=model.dtype)
    _, batch_scores = scores(model, batch)
    solo = [scores(model, lt.inputs(tokenizer, processor, model.config, [sizes[i]], [questions[i]], seed=i,
                                    dtype=model.dtype))[1][0] for i in range(2)]
    torch.testing.assert_close(batch_scores[0], solo[0], atol=1e-4, rtol=1e-4)
    assert (batch_scores[1, 0] - solo[1][0]).abs().max() > 1e-2


@pytest.mark.parametrize("key", ["v1.6", "v1.5"])
def test_input_padding_side_does_not_matter(loaded, needs_generate, key):
    """The package strips the padding with the mask and re-pads on the config's side."""
    tokenizer, model, processor, _ = loaded(key)
    sizes, questions = [(32, 16), (16, 16)], [lt.QUESTIONS[1], lt.QUESTIONS[0]]
    left, right = (lt.inputs(tokenizer, processor, model.config, sizes, questions, dtype=model.dtype,
                             padding_side=side) for side in ("left", "right"))
    assert not torch.equal(left["input_ids"], right["input_ids"])
    assert torch.equal(lt.generate(model, left, max_new_tokens=4, do_sample=False),
                       lt.generate(model, right, max_new_tokens=4, do_sample=False))


@pytest.mark.parametrize("key", ["v1.6", "v1.5"])
def test_prepare_inputs_repads_on_the_config_side(loaded, key):
    tokenizer, model, processor, _ = loaded(key)
    sizes, questions = [(32, 16), (16, 16)], [lt.QUESTIONS[1], lt.QUESTIONS[0]]
    batch = lt.inputs(tokenizer, processor, model.config, sizes, questions, dtype=model.dtype, padding_side="left")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    _, positions, new_mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
        ids, None, mask, None, None, batch["images"], image_sizes=batch["image_sizes"])
    assert positions is None and new_mask.dtype == mask.dtype  # None in, None out; the mask keeps its dtype
    lengths = [text_tokens(batch, i) + lt.visual_tokens(model.config, s) for i, s in enumerate(sizes)]
    assert new_mask.sum(1).tolist() == lengths and embeds.shape[1] == max(lengths)
    left = model.config.tokenizer_padding_side == "left"
    short = new_mask[1]
    pad = embeds.shape[1] - lengths[1]
    assert short[:pad].sum() == 0 if left else short[-pad:].sum() == 0
    # padding slots hold zero vectors
    assert (embeds[1, :pad] if left else embeds[1, -pad:]).abs().sum() == 0
    # with position_ids given, it returns 0..n-1 over each row's real tokens (0 at the padding)
    _, positions, _, _, _, _ = model.prepare_inputs_labels_for_multimodal(
        ids, torch.zeros_like(ids), mask, None, None, batch["images"], image_sizes=batch["image_sizes"])
    real = positions[1][short.bool()]
    assert torch.equal(real, torch.arange(lengths[1])) and (positions[1][~short.bool()] == 0).all()


def test_decoding_steps_skip_the_splice(loaded):
    """``prepare_inputs_labels_for_multimodal`` returns its inputs untouched for one new token."""
    tokenizer, model, processor, _ = loaded("v1.6")
    batch = lt.inputs(tokenizer, processor, model.config, [(32, 16)], dtype=model.dtype)
    token = torch.tensor([[5]])
    out = model.prepare_inputs_labels_for_multimodal(token, None, None, "past", None, batch["images"],
                                                     image_sizes=batch["image_sizes"])
    assert out[0] is token and out[3] == "past" and out[4] is None
    out = model.prepare_inputs_labels_for_multimodal(batch["input_ids"], None, None, None, None, None)
    assert out[0] is batch["input_ids"] and out[4] is None  # no images: nothing spliced either
