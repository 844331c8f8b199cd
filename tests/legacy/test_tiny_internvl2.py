"""The tiny InternVL2 checkpoints themselves (remote-code structure, no plugin): loading, caching, batching, chat.

Runs on the legacy transformers line (4.37.2 and 4.49.0); see ``sgl_patch/tiny/internvl2.py``.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import transformers

from sgl_patch.tiny import LARGE, SMALL
from sgl_patch.tiny import internvl2 as iv
from sgl_patch.tiny.base import BOS, EOS, IMAGE, PAD

KINDS = iv.KINDS
MIXED = [2, 1, None, 3]          # tiles per sample; None = text only
# what InternVLChatModel.generate returns before the new tokens, measured per transformers release
BOS_COLUMNS = {"4.37.2": 1, "4.49.0": 0}


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("internvl2")
    paths = {}

    def get(kind, size=SMALL):
        key = (kind, size.hidden)
        if key not in paths:
            paths[key] = iv.save_checkpoint(root / f"{kind}_{size.hidden}", llm=kind, size=size)
        return paths[key]
    return get


@pytest.fixture(scope="module")
def loaded(saved):
    models = {}

    def get(kind, attn="eager"):
        if (kind, attn) not in models:
            models[kind, attn] = iv.load(saved(kind), attn_implementation=attn)
        return models[kind, attn]
    return get


@pytest.fixture(scope="module")
def tokenizer(saved):
    return iv.load_tokenizer(saved("internlm2"))


def until_eos(row, eos=EOS):
    row = list(row)
    return row[:row.index(eos) + 1] if eos in row else row


def new_tokens(model, output):
    return output[:, iv.bos_columns(model):]


def prompt_embeds(model, batch):
    """The embeddings InternVLChatModel.generate hands to the language model."""
    embeds = model.language_model.get_input_embeddings()(batch["input_ids"])
    if "pixel_values" in batch:
        selected = batch["input_ids"] == model.img_context_token_id
        embeds[selected] = model.extract_feature(batch["pixel_values"]).reshape(-1, embeds.shape[-1])
    return embeds


@torch.no_grad()
def greedy_without_cache(model, batch, steps):
    """Greedy decoding by full forward passes over the whole sequence each step (no KV cache)."""
    lm = model.language_model
    embeds, mask = prompt_embeds(model, batch), batch["attention_mask"]
    suppress = list(lm.generation_config.suppress_tokens or [])
    tokens = []
    for _ in range(steps):
        positions = mask.long().cumsum(-1) - 1
        positions.masked_fill_(mask == 0, 1)
        logits = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False).logits[:, -1]
        logits[:, suppress] = -float("inf")
        step = logits.argmax(-1)
        tokens.append(step)
        embeds = torch.cat([embeds, lm.get_input_embeddings()(step)[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(tokens, dim=1)


# -- loading and structure --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_loads_as_remote_code_and_from_the_package(kind, saved):
    path = saved(kind)
    files = set(os.listdir(path))
    code = {"configuration_intern_vit.py", "modeling_intern_vit.py", "configuration_internlm2.py",
            "modeling_internlm2.py", "configuration_phi3.py", "modeling_phi3.py", "configuration_internvl_chat.py",
            "modeling_internvl_chat.py", "conversation.py"}
    assert code | {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                   "generation_config.json"} <= files
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    assert config["auto_map"]["AutoModel"] == "modeling_internvl_chat.InternVLChatModel"
    assert config["auto_map"]["AutoConfig"] == "configuration_internvl_chat.InternVLChatConfig"
    assert config["llm_config"]["architectures"] == [iv.LLMS[kind][0]] and config["template"] == iv.LLMS[kind][1]

    remote = iv.load(path)
    direct = iv.load(path, remote_code=False)
    assert type(remote).__name__ == type(direct).__name__ == "InternVLChatModel"
    assert type(remote).__module__.startswith("transformers_modules.")
    assert type(remote).__module__.endswith(".modeling_internvl_chat")
    assert type(direct).__module__ == "sgl_patch.tiny.internvl2_code.modeling_internvl_chat"
    assert remote.img_context_token_id is None  # set by chat / batch_chat / the caller, on the instance
    a, b = remote.state_dict(), direct.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # weights survive the round trip: the checkpoint is the model build_model makes
    fresh = iv.build_model(kind).state_dict()
    assert all(torch.equal(fresh[k], a[k]) for k in a)


@pytest.mark.parametrize("kind", KINDS)
def test_module_tree_and_attributes(kind, loaded):
    model = loaded(kind)
    assert model.num_image_token == iv.tokens_per_tile() == 16
    assert model.template == iv.LLMS[kind][1] and model.ps_version == "v2" and model.select_layer == -1
    assert isinstance(model.mlp1, torch.nn.Sequential) and len(model.mlp1) == 4
    assert model.mlp1[0].normalized_shape == (4 * model.config.vision_config.hidden_size,)
    vision = model.vision_model
    assert type(vision).__name__ == "InternVisionModel"
    assert isinstance(vision.embeddings.patch_embedding, torch.nn.Conv2d)
    assert vision.embeddings.class_embedding.shape == (1, 1, vision.config.hidden_size)
    assert vision.embeddings.position_embedding.shape == (1, 1 + (iv.TILE // iv.PATCH) ** 2, vision.config.hidden_size)
    assert hasattr(vision.encoder.layers[0].attn, "qkv") and hasattr(vision.encoder.layers[0].attn, "proj")
    features = model.extract_feature(torch.randn(3, 3, iv.TILE, iv.TILE))
    assert features.shape == (3, 16, model.config.llm_config.hidden_size)

    lm = model.language_model
    assert type(lm).__name__ == iv.LLMS[kind][0]
    layers = lm.model.layers
    assert len(layers) == SMALL.layers
    if kind == "internlm2":
        attn = layers[0].attention
        assert type(attn).__name__ == "InternLM2Attention" and type(layers[0]).__name__ == "InternLM2DecoderLayer"
        heads, kv, d = attn.num_heads, attn.num_key_value_heads, attn.head_dim
        assert attn.wqkv.out_features == (heads + 2 * kv) * d and attn.wo.in_features == heads * d
        assert type(attn.rotary_emb).__name__ == "InternLM2DynamicNTKScalingRotaryEmbedding"
        assert lm.get_output_embeddings() is lm.output and lm.model.tok_embeddings is lm.get_input_embeddings()
        assert {"w1", "w2", "w3"} <= dict(layers[0].feed_forward.named_children()).keys()
        assert lm.config.attn_implementation == "eager"
    elif kind == "phi3":
        attn = layers[0].self_attn
        assert type(attn).__name__ == "Phi3Attention" and attn.layer_idx == 0 and layers[3].self_attn.layer_idx == 3
        assert attn.qkv_proj.out_features == (attn.num_heads + 2 * attn.num_key_value_heads) * attn.head_dim
        assert type(attn.rotary_emb).__name__ == "Phi3SuScaledRotaryEmbedding"
        assert lm.get_output_embeddings() is lm.lm_head and hasattr(layers[0].mlp, "gate_up_proj")
    else:
        assert type(lm).__module__.startswith(f"transformers.models.{kind}.")  # transformers' own classes
        assert hasattr(layers[0].self_attn, "q_proj") and lm.get_output_embeddings() is lm.lm_head
        assert lm.config._attn_implementation == "eager"
        if hasattr(sys.modules[type(lm).__module__], f"{kind.upper()}_ATTENTION_CLASSES"):  # 4.37: a class per backend
            assert type(layers[0].self_attn).__name__ == f"{'Llama' if kind == 'llama' else 'Qwen2'}Attention"


def test_checkpoints_share_tokenizer_and_tile_geometry(saved):
    small, large = iv.load(saved("internlm2")), iv.load(saved("phi3", LARGE))
    assert small.num_image_token == large.num_image_token
    assert small.config.force_image_size == large.config.force_image_size == iv.TILE
    a, b = iv.load_tokenizer(saved("internlm2")), iv.load_tokenizer(saved("phi3", LARGE))
    assert a.get_vocab() == b.get_vocab() and len(a) == 512
    specials = ["<pad>", "<s>", "</s>", "<img>", "</img>", "<IMG_CONTEXT>"]
    assert a.convert_tokens_to_ids(specials) == [PAD, BOS, EOS, 3, 4, IMAGE]
    # the large tower is InternViT-6B-like, the small one InternViT-300M-like
    assert small.config.vision_config.norm_type == "layer_norm" and large.config.vision_config.qk_normalization
    text = "<|im_start|>user\n<img><IMG_CONTEXT></img>\nWhat is this?<|im_end|>"
    assert a(text).input_ids == b(text).input_ids and a(text).input_ids[0] == BOS
    assert a.decode(a(text).input_ids, skip_special_tokens=True) == "user\n\nWhat is this?"


def test_flash_and_sdpa_choices(saved):
    with pytest.raises(ValueError):
        iv.load(saved("internlm2"), attn_implementation="sdpa")
    sdpa = iv.load(saved("qwen2"), attn_implementation="sdpa")
    assert sdpa.language_model.config._attn_implementation == "sdpa"
    if transformers.__version__.startswith("4.37"):
        assert type(sdpa.language_model.model.layers[0].self_attn).__name__ == "Qwen2SdpaAttention"
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ValueError):
            iv.load(saved("internlm2"), attn_implementation="flash_attention_2")


# -- generation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_generate_output_layout(kind, loaded):
    model = loaded(kind)
    batch = iv.inputs(model, MIXED)
    assert batch["pixel_values"].shape == (6, 3, iv.TILE, iv.TILE)
    assert (batch["input_ids"] == model.img_context_token_id).sum() == 6 * 16
    assert (batch["attention_mask"][:, -1] == 1).all() and (batch["attention_mask"][:, 0] == 0).any()  # left padded
    out = model.generate(**batch, max_new_tokens=5)
    prefix = iv.bos_columns(model)
    if transformers.__version__ in BOS_COLUMNS:
        assert prefix == BOS_COLUMNS[transformers.__version__]
    assert out.shape == (len(MIXED), prefix + 5) or (out[:, prefix:] == EOS).any()
    assert (out[:, :prefix] == BOS).all()
    assert not ((out[:, prefix:] == IMAGE) | (out[:, prefix:] == 3) | (out[:, prefix:] == 4)).any()  # suppressed


@pytest.mark.parametrize("kind", KINDS)
def test_generate_with_cache_equals_greedy_without_cache(kind, loaded):
    model = loaded(kind)
    batch = iv.inputs(model, MIXED, seed=1)
    steps = 6
    cached = new_tokens(model, model.generate(**batch, max_new_tokens=steps))
    uncached = greedy_without_cache(model, batch, steps)
    for row_cached, row_uncached in zip(cached.tolist(), uncached.tolist()):
        assert until_eos(row_cached) == until_eos(row_uncached)[:len(until_eos(row_cached))]
    # answers depend on the image and on the sample (not one degenerate answer for everything)
    assert len({tuple(r) for r in cached.tolist()}) > 1


@pytest.mark.parametrize("kind", KINDS)
def test_left_padded_batch_gives_each_sample_its_answer_alone(kind, loaded):
    model = loaded(kind)
    questions = iv.default_questions(MIXED, seed=2)
    batch = iv.inputs(model, MIXED, questions, seed=2)
    together = new_tokens(model, model.generate(**batch, max_new_tokens=6)).tolist()
    first_tile = 0
    for i, (sample, question) in enumerate(zip(MIXED, questions)):
        alone = iv.inputs(model, [sample], [question])
        if sample:
            alone["pixel_values"] = batch["pixel_values"][first_tile:first_tile + sample]
            first_tile += sample
        row = new_tokens(model, model.generate(**alone, max_new_tokens=6))[0].tolist()
        assert until_eos(together[i]) == until_eos(row), f"sample {i}"


@pytest.mark.parametrize("kind", KINDS)
def test_chat_and_batch_chat_agree_with_generate(kind, loaded, tokenizer):
    model = loaded(kind)
    pixels = iv.inputs(model, [2, 1], seed=3)["pixel_values"]
    config = dict(max_new_tokens=5, do_sample=False)
    sep = model.conv_template.sep
    eos = tokenizer.convert_tokens_to_ids(sep)

    answer = model.chat(tokenizer, pixels[:2], "<image>\nWhat is this?", dict(config))
    assert model.img_context_token_id == IMAGE
    batch = iv.inputs(model, [2], ["What is this?"], tokenizer=tokenizer)
    batch["pixel_values"] = pixels[:2]
    out = model.generate(**batch, **dict(config, eos_token_id=eos))
    assert answer == tokenizer.batch_decode(out, skip_special_tokens=True)[0].split(sep)[0].strip()
    # the question gets "<image>\n" in front when it has none
    assert model.chat(tokenizer, pixels[:2], "What is this?", dict(config)) == answer
    # multi-turn history and return_history
    answer2, history = model.chat(tokenizer, pixels[:2], "And now?", dict(config), history=[("<image>\nHi", "Hello")],
                                  return_history=True)
    assert history[-1] == ("And now?", answer2)

    questions = ["What is this?", "Describe the image."]
    answers = model.batch_chat(tokenizer, pixels, questions, dict(config), num_patches_list=[2, 1])
    alone = [model.chat(tokenizer, pixels[:2], questions[0], dict(config)),
             model.chat(tokenizer, pixels[2:], questions[1], dict(config))]
    assert answers == alone
    assert tokenizer.padding_side == "left"  # batch_chat leaves the tokenizer left-padding, as upstream


def test_chat_prompt_layout(loaded, tokenizer):
    model = loaded("internlm2")
    query = iv.chat_query(model, 2, "What is this?")
    system = model.system_message
    assert query == (f"<|im_start|>system\n{system}<|im_end|><|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 32
                     + "</img>\nWhat is this?<|im_end|><|im_start|>assistant\n")
    phi3 = loaded("phi3")
    assert iv.chat_query(phi3, None, "Hi") == f"<|system|>\n{system}<|end|><|user|>\nHi<|end|><|assistant|>\n"
    assert iv.chat_query(loaded("qwen2"), None, "Hi").startswith("<|im_start|>system\n")


@pytest.mark.parametrize("kind", KINDS)
def test_training_forward(kind, loaded):
    model = loaded(kind)
    batch = iv.inputs(model, [1, 2], seed=4)
    out = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"], image_flags=torch.ones(3, 1, dtype=torch.long),
                labels=batch["input_ids"])
    positions = batch["attention_mask"].cumsum(-1) - 1
    positions.masked_fill_(batch["attention_mask"] == 0, 1)
    with torch.no_grad():
        reference = model.language_model(inputs_embeds=prompt_embeds(model, batch),
                                         attention_mask=batch["attention_mask"], position_ids=positions).logits
    real = batch["attention_mask"].bool()
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.logits[real], reference[real], atol=1e-4, rtol=1e-4)


# -- what attention sees: masks, caches, rotary ---------------------------------------------------
def record_attention_calls(model):
    """Forward pre-hooks on every attention module of the language model; returns (calls, handles)."""
    calls, handles = [], []
    for i, layer in enumerate(model.language_model.model.layers):
        attn = layer.attention if hasattr(layer, "attention") else layer.self_attn

        def hook(module, args, kwargs, i=i):
            # the cache object is mutated later: note its length now
            past = kwargs.get("past_key_value")
            if isinstance(past, transformers.cache_utils.Cache):
                kwargs = dict(kwargs, past_length=past.get_seq_length(i))
            calls.append((i, kwargs))
        handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
    return calls, handles


@pytest.mark.parametrize("kind", KINDS)
def test_eager_4d_masks_and_caches_during_generate(kind, loaded):
    model = loaded(kind)
    batch = iv.inputs(model, [2, None], seed=5)
    n, b = batch["input_ids"].shape[1], batch["input_ids"].shape[0]
    calls, handles = record_attention_calls(model)
    try:
        model.generate(**batch, max_new_tokens=3, min_new_tokens=3)
    finally:
        for h in handles:
            h.remove()
    layers = len(model.language_model.model.layers)
    assert len(calls) == 3 * layers
    for step in range(3):
        for i, kwargs in calls[step * layers:(step + 1) * layers]:
            q = n if step == 0 else 1
            mask, past = kwargs["attention_mask"], kwargs.get("past_key_value")
            if kind in ("internlm2", "phi3") or transformers.__version__.startswith("4.37"):
                assert mask.shape == (b, 1, q, n + step)  # 4D additive, built once per forward by the model
                assert mask.dtype == torch.float32 and (mask <= 0).all()
            else:  # 4.49 Qwen2/Llama: the mask may be as wide as the cache allows; rotary comes in precomputed
                assert mask.dim() == 4 and mask.shape[:3] == (b, 1, q) and mask.shape[-1] >= n + step
                assert "position_embeddings" in kwargs
            if kind == "internlm2":
                if step == 0:
                    assert past is None
                else:  # a (key, value) tuple per layer, [b, kv_heads, len, head_dim]
                    assert isinstance(past, tuple) and len(past) == 2
                    assert past[0].shape == (b, SMALL.kv_heads, n + step - 1, SMALL.hidden // SMALL.heads)
                assert kwargs["position_ids"].shape == (b, q)
            elif kind == "phi3" or transformers.__version__.startswith("4.37"):
                # transformers' Cache object, the same one for every layer (empty at the first step when
                # 4.4x generate creates it; None then on 4.37)
                if past is not None:
                    assert isinstance(past, transformers.cache_utils.DynamicCache)
                    assert kwargs["past_length"] == (0 if step == 0 else n + step - 1)
                else:
                    assert step == 0
                assert kwargs["position_ids"].shape == (b, q)


@pytest.mark.parametrize("kind", ["internlm2", "phi3"])
def test_language_model_returns_tuple_caches_and_reads_past_length_from_layer0(kind, loaded):
    model = loaded(kind)
    lm = model.language_model
    ids = torch.randint(20, 500, (2, 9))
    full = lm(input_ids=ids, use_cache=True)
    cache = full.past_key_values
    assert isinstance(cache, tuple) and len(cache) == SMALL.layers
    assert all(isinstance(layer, tuple) and len(layer) == 2 and layer[0].shape[2] == 9 for layer in cache)
    # decoding one token from a prefix cache equals the full forward's last position
    prefix = lm(input_ids=ids[:, :8], use_cache=True).past_key_values
    step = lm(input_ids=ids[:, 8:], past_key_values=prefix, use_cache=True)
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], atol=1e-4, rtol=1e-4)
    assert step.past_key_values[0][0].shape[2] == 9

    # layers >= 1 holding fewer tokens than layer 0 (what pruning leaves behind) break the upstream code:
    # positions and the mask width come from layer 0's length
    short = (prefix[0],) + tuple((k[:, :, 3:], v[:, :, 3:]) for k, v in prefix[1:])
    if kind == "internlm2":
        # the rotary table is sliced to the layer's own kv_seq_len (5 + 1) and indexed at position 8
        with pytest.raises(IndexError):
            lm(input_ids=ids[:, 8:], past_key_values=short, use_cache=True)
    else:
        # rotary comes from position_ids, but the 4D mask [b, 1, 1, 9] does not fit kv_seq_len 6
        with pytest.raises(ValueError, match="Attention mask should be of size"):
            lm(input_ids=ids[:, 8:], past_key_values=short, use_cache=True)


def test_internlm2_wqkv_is_grouped_per_kv_head(loaded):
    model = loaded("internlm2")
    attn = model.language_model.model.layers[0].attention
    b, s = 2, 5
    x = torch.randn(b, s, attn.hidden_size)
    positions = torch.arange(s)[None].expand(b, s)
    with torch.no_grad():
        out, weights, present = attn(x, position_ids=positions, output_attentions=True, use_cache=True)
        kv, groups, d = attn.num_key_value_heads, attn.num_key_value_groups, attn.head_dim
        w = attn.wqkv.weight.view(kv, groups + 2, d, -1)  # per kv head: its query heads, its key, its value
        q = torch.einsum("bsh,kgdh->bkgsd", x, w[:, :groups]).reshape(b, kv * groups, s, d)
        k = torch.einsum("bsh,kdh->bksd", x, w[:, groups])
        v = torch.einsum("bsh,kdh->bksd", x, w[:, groups + 1])
        cos, sin = attn.rotary_emb(v, seq_len=s)
        mod = sys.modules[type(attn).__module__]
        q, k = mod.apply_rotary_pos_emb(q, k, cos, sin, positions)
        torch.testing.assert_close(present[0], k)
        scores = q @ k.repeat_interleave(groups, dim=1).transpose(-1, -2) / d ** 0.5
        probs = scores.softmax(-1)  # no mask given: full attention, as upstream does without one
        ref = (probs @ v.repeat_interleave(groups, dim=1)).transpose(1, 2).reshape(b, s, -1)
        torch.testing.assert_close(weights, probs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, attn.wo(ref), atol=1e-5, rtol=1e-5)


# -- the flash classes, run on pure-torch stand-ins for the flash_attn kernels ---------------------------
def _attend(q, k, v, causal, scale):
    """One sequence: q ``[sq, h, d]``, k/v ``[sk, hk, d]``; causal aligned bottom-right (flash-attn >= 2.1)."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * (scale or q.shape[-1] ** -0.5)
    if causal:
        allowed = torch.ones(q.shape[0], k.shape[0], dtype=torch.bool).tril(k.shape[0] - q.shape[0])
        scores = scores.masked_fill(~allowed, -float("inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
    return torch.stack([_attend(q[i], k[i], v[i], causal, softmax_scale) for i in range(q.shape[0])])


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, **_):
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    return torch.cat([_attend(q[cq[i]:cq[i + 1]], k[ck[i]:ck[i + 1]], v[ck[i]:ck[i + 1]], causal, softmax_scale)
                      for i in range(len(cq) - 1)])


def index_first_axis(x, indices):
    return x[indices]


def pad_input(x, indices, batch, seqlen):
    out = x.new_zeros(batch * seqlen, *x.shape[1:])
    out[indices] = x
    return out.view(batch, seqlen, *x.shape[1:])


def unpad_input(hidden, mask):
    seqlens = mask.sum(-1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten()).flatten()
    cu = torch.nn.functional.pad(seqlens.cumsum(0, dtype=torch.int32), (1, 0))
    return hidden.reshape(-1, *hidden.shape[2:])[indices], indices, cu, int(seqlens.max())


@pytest.mark.parametrize("kind", ["internlm2", "phi3"])
def test_flash_attention_classes_on_reference_kernels(kind, loaded, monkeypatch):
    import copy

    eager = loaded(kind).language_model
    module = sys.modules[type(eager).__module__]
    for name, fn in dict(flash_attn_func=flash_attn_func, flash_attn_varlen_func=flash_attn_varlen_func,
                         index_first_axis=index_first_axis, pad_input=pad_input, unpad_input=unpad_input).items():
        monkeypatch.setattr(module, name, fn, raising=False)
    config = copy.deepcopy(eager.config)
    if kind == "internlm2":
        monkeypatch.setattr(module, "has_flash_attn", True)
        monkeypatch.setattr(module, "_import_flash_attn", lambda: None)
        config.attn_implementation = "flash_attention_2"
        expected = "InternLM2FlashAttention2"
    else:
        monkeypatch.setattr(module, "_flash_supports_window_size", True)
        config._attn_implementation = "flash_attention_2"
        # PreTrainedModel.__init__ checks that the flash_attn package is installed (4.37 and 4.49)
        monkeypatch.setattr(module.Phi3PreTrainedModel, "_check_and_enable_flash_attn_2",
                            classmethod(lambda cls, config, *args, **kwargs: config))
        expected = "Phi3FlashAttention2"
    flash = type(eager)(config).eval()
    flash.load_state_dict(eager.state_dict())
    flash.generation_config = eager.generation_config
    layer = flash.model.layers[0]
    assert type(layer.attention if kind == "internlm2" else layer.self_attn).__name__ == expected

    model = loaded(kind)
    batch = iv.inputs(model, [2, None, 1], seed=6)
    embeds, mask = prompt_embeds(model, batch), batch["attention_mask"]
    positions = mask.cumsum(-1) - 1
    positions.masked_fill_(mask == 0, 1)
    calls = []
    attn = layer.attention if kind == "internlm2" else layer.self_attn
    handle = attn.register_forward_pre_hook(lambda m, a, k: calls.append(k["attention_mask"]), with_kwargs=True)
    try:
        with torch.no_grad():
            got = flash(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
            want = eager(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
            tokens_flash = flash.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4)
            tokens_eager = eager.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4)
    finally:
        handle.remove()
    assert calls[0].shape == mask.shape  # flash gets the 2D padding mask
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)
    assert tokens_flash.tolist() == tokens_eager.tolist()
