"""Tiny InternVL2 checkpoints (remote-code ``InternVLChatModel``) for the legacy transformers line.

InternVL2 -- the paper's headline pair is InternVL2-2B guiding InternVL2-26B -- runs on model code
shipped inside each checkpoint (``trust_remote_code``) on transformers 4.37.2 .. 4.49.  The project
writes that code's structure itself (``sgl_patch/tiny/internvl2_code``, see its modules'
docstrings); this module builds checkpoint directories with it, the way the hub has them::

    path = save_checkpoint(tmp / "small", llm="internlm2", size=SMALL)   # like InternVL2-2B
    model = load(path)                                                   # AutoModel, trust_remote_code
    tokenizer = load_tokenizer(path)
    model.chat(tokenizer, pixel_values, "<image>\\nWhat is this?", dict(max_new_tokens=5, do_sample=False))
    batch = inputs(model, [2, 1, None])        # what batch_chat hands to generate; sets img_context_token_id
    out = model.generate(**batch, max_new_tokens=4)

Language models by ``llm``: ``internlm2`` (2B/8B/26B, template ``internlm2-chat``), ``qwen2`` (1B,
``Hermes-2``), ``llama`` (40B, ``Hermes-2``), ``phi3`` (4B, ``phi3-chat``).  Every checkpoint shares
one tile geometry (16-px tiles of 2-px patches, pixel-shuffled by 0.5: 16 tokens a tile, where a
real 448-px tile gives 256) and, by default, one tokenizer, so any may guide any.  ``SMALL`` towers
look like InternViT-300M (layer norm, qkv bias), ``LARGE`` ones like InternViT-6B (RMS norm, q/k norm).

The tokenizer is a byte-level BPE ``PreTrainedTokenizerFast`` over the project's 512-id vocabulary
(``base.py``: PAD 0, BOS 1, EOS 2, then ``<img>`` 3, ``</img>`` 4, ``<IMG_CONTEXT>`` 5 -- the
other families' vision start / end / image ids), adding BOS like InternLM2's tokenizer.
``save_checkpoint(..., vocabulary="other")`` gives a checkpoint another one (640 ids, other
merges, every special token at another id), as the released sizes differ (1B: Qwen2's, 2B/8B/26B:
InternLM2's, 4B: Phi-3's, 40B: Yi's, 76B: Llama-3's).  Real checkpoints ship their own tokenizers
(InternLM2's sentencepiece one is remote code as well).

Weights are random (``build_model``): language models initialised with std 0.1 (real configs say
0.02; with that the tiny decoders' answers hardly depend on the image) and an lm head scaled by 8
(as ``TinyFamily.model`` does), and ``llm_config.suppress_tokens`` keeps ``<img>``, ``</img>`` and
``<IMG_CONTEXT>`` out of answers.  ``llama`` stands for InternVL2-40B (Hermes-2 template); the
76B's Llama-3 template is not among ``conversation.py``'s.

``InternVLChatFamily`` (``sgl_patch.tiny.family("internvl_chat")``, offered by ``tiny.names()`` on the
legacy line only) is the ``TinyFamily`` the demo and the benchmark run: InternLM2 small -> InternLM2
large by default (``with_llms`` for other kinds), models built with ``img_context_token_id`` set,
``batch_chat``'s inputs, and the calls that differ from the native classes' (saving and loading as
remote code, the prefill forward with ``image_flags``, the generated tokens after ``bos_columns``).
``for_tile_tokens(256)`` builds 64-px tiles, whose 32 x 32 patches shuffle into a real tile's 256 tokens.

What ``InternVLChatModel.generate`` returns depends on transformers, because it hands
``inputs_embeds`` to ``language_model.generate``: on 4.37.2 a BOS column and then the new tokens, on
4.49 only the new tokens (``bos_columns`` tells which).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import (BOS, EOS, IMAGE, LARGE, PAD, SMALL, VISION_END, VISION_START, VOCAB, TinyFamily, TinySize,
                   text_config)

CODE_DIR = Path(__file__).with_name("internvl2_code")
TILE, PATCH, DOWNSAMPLE = 16, 2, 0.5
KINDS = ("internlm2", "qwen2", "llama", "phi3")

IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN = "<img>", "</img>", "<IMG_CONTEXT>"
# ids 0..18, in this order; 0..5 match base.py (PAD, BOS, EOS, VISION_START, VISION_END, IMAGE)
SPECIAL_TOKENS = [
    "<pad>", "<s>", "</s>", IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN,
    "<|im_start|>", "<|im_end|>", "<|end|>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>",
    "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
]
assert SPECIAL_TOKENS.index(IMG_START_TOKEN) == VISION_START and SPECIAL_TOKENS.index(IMG_END_TOKEN) == VISION_END
assert SPECIAL_TOKENS.index(IMG_CONTEXT_TOKEN) == IMAGE and SPECIAL_TOKENS.index("<s>") == BOS



@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer's layout: how many ids, and the order its special tokens take the first ones."""

    name: str
    size: int
    specials: tuple[str, ...]

    def id(self, token: str) -> int:
        return self.specials.index(token)


VOCABULARIES = {
    # every checkpoint's by default: the 512 ids of base.py, shared with the other families
    "tiny": Vocabulary("tiny", VOCAB, tuple(SPECIAL_TOKENS)),
    # another tokenizer, as the released InternVL2 sizes have (1B: Qwen2's, 2B/8B/26B: InternLM2's,
    # 4B: Phi-3's, 40B: Yi's, 76B: Llama-3's): more ids, other merges, every special token elsewhere
    "other": Vocabulary("other", 640, tuple(SPECIAL_TOKENS[6:] + SPECIAL_TOKENS[:6])),
}

# per language model: architecture, chat template, the real checkpoints it stands for
LLMS = {
    "internlm2": ("InternLM2ForCausalLM", "internlm2-chat", "InternVL2-2B/8B/26B"),
    "qwen2": ("Qwen2ForCausalLM", "Hermes-2", "InternVL2-1B"),
    "llama": ("LlamaForCausalLM", "Hermes-2", "InternVL2-40B"),
    "phi3": ("Phi3ForCausalLM", "phi3-chat", "InternVL2-4B"),
}
ATTENTION = {  # attn_implementation values each language model's code accepts here
    "internlm2": ("eager", "flash_attention_2"),
    "phi3": ("eager", "flash_attention_2"),
    "qwen2": ("eager", "sdpa", "flash_attention_2"),
    "llama": ("eager", "sdpa", "flash_attention_2"),
}

QUESTIONS = [
    "What is this?",
    "What colour is the square in the picture?",
    "Describe the image.",
    "How many circles are there, and which one is the largest?",
    "Is there a red triangle next to the blue circle on the left?",
]
TEXT_QUESTIONS = ["Tell me a short story about a cat.", "What is two plus two?", "Name a colour."]

# text the BPE merges are learnt from (fixed, so every build gives the same tokenizer)
_CORPUS = """
What is this? What colour is the square in the picture? Describe the image in detail. How many circles
are there in the image? Is there a red triangle next to the blue circle on the left? The image shows a
small green square above a large yellow circle, and a purple triangle on the right side of the picture.
Answer the question using a single word or phrase. Please describe the chart, the document and the text
that you can read in this photo. There are two cats and one dog sitting on a bench in the park.
你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。
system user assistant The answer is yes. The answer is no. It is a photo of a street with cars and people.
"""


def tokens_per_tile(tile: int = TILE, downsample_ratio: float = DOWNSAMPLE) -> int:
    """Visual tokens one tile becomes: ``(tile / patch * ratio) ** 2`` (16 here; 256 for a real 448-px tile)."""
    return int(tile // PATCH * downsample_ratio) ** 2


# -- tokenizer -------------------------------------------------------------------------------------
def _byte_alphabet() -> list[str]:
    """The 256 characters byte-level BPE writes bytes as (GPT-2's table), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _learn_merges(pieces: list[str], count: int) -> list[tuple[str, str]]:
    """Plain BPE over pre-tokenized ``pieces``: the most frequent pair first, ties to the smaller pair."""
    words = Counter(pieces)
    splits = {w: list(w) for w in words}
    merges = []
    while len(merges) < count:
        pairs = Counter()
        for word, n in words.items():
            parts = splits[word]
            for pair in zip(parts, parts[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for word, parts in splits.items():
            i, out = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            splits[word] = out
    return merges


def build_tokenizer(vocabulary: str = "tiny"):
    """A tiny byte-level BPE tokenizer that adds BOS (``VOCABULARIES``: ``tiny``, every checkpoint's by
    default, or ``other``, a different one for pairs across tokenizers)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    layout = VOCABULARIES[vocabulary]
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    vocab = {token: i for i, token in enumerate(layout.specials)}
    for char in _byte_alphabet():
        vocab[char] = len(vocab)
    merges = _learn_merges([piece for piece, _ in pre.pre_tokenize_str(_CORPUS)], layout.size - len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    reserved = [f"<|reserved_{i}|>" for i in range(layout.size - len(vocab))]  # if the corpus ran out of pairs
    for token in reserved:
        vocab[token] = len(vocab)
    assert len(vocab) == layout.size, len(vocab)

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", layout.id("<s>"))])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in list(layout.specials) + reserved])
    image_tokens = [IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN]
    others = [t for t in layout.specials if t not in ("<pad>", "<s>", "</s>", *image_tokens)]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=image_tokens + others + reserved, padding_side="right", model_max_length=4096,
    )


# -- configs ----------------------------------------------------------------------------------------
def vision_config(size: TinySize, tile: int = TILE, patch: int = PATCH) -> dict:
    """InternViT settings: SMALL like InternViT-300M, anything larger like InternViT-6B."""
    like_6b = size.hidden > SMALL.hidden
    return dict(
        architectures=["InternVisionModel"], model_type="intern_vit_6b", num_channels=3, image_size=tile,
        patch_size=patch, hidden_size=size.vision_dim, intermediate_size=4 * size.vision_dim,
        num_attention_heads=size.vision_heads, num_hidden_layers=size.vision_depth, hidden_act="gelu",
        norm_type="rms_norm" if like_6b else "layer_norm", qkv_bias=not like_6b, qk_normalization=like_6b,
        initializer_factor=0.1 if like_6b else 1.0, layer_norm_eps=1e-6, use_flash_attn=False,
        drop_path_rate=0.0, dropout=0.0, attention_dropout=0.0,
    )


def llm_config(llm: str, size: TinySize, vocabulary: str = "tiny") -> dict:
    """The ``llm_config`` dict of a checkpoint's config.json for language model ``llm``."""
    architecture = LLMS[llm][0]
    layout = VOCABULARIES[vocabulary]
    # initializer_range 0.1 (real checkpoints say 0.02; it only seeds random weights): with 0.02 the tiny
    # decoders pass so little context to the last position that answers hardly depend on the image
    config = dict(text_config(size), architectures=[architecture], hidden_act="silu", attn_implementation="eager",
                  initializer_range=0.1, vocab_size=layout.size, bos_token_id=layout.id("<s>"),
                  eos_token_id=layout.id("</s>"), pad_token_id=layout.id("<pad>"),
                  # like real checkpoints, never emit image markers as answer text (language_model.generate
                  # reads its generation config from this llm_config)
                  suppress_tokens=[layout.id(t) for t in (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN)])
    if llm == "internlm2":
        config.update(model_type="internlm2", bias=False, rope_theta=1000000, rms_norm_eps=1e-5,
                      rope_scaling={"type": "dynamic", "factor": 2.0},
                      auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config",
                                "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                                "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"})
    elif llm == "qwen2":
        config.update(model_type="qwen2", rope_theta=1000000.0, rms_norm_eps=1e-6, use_sliding_window=False)
    elif llm == "llama":
        config.update(model_type="llama", rope_theta=5000000.0, rms_norm_eps=1e-5)
    elif llm == "phi3":
        half = size.hidden // size.heads // 2
        config.update(model_type="phi3", rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
                      original_max_position_embeddings=4096, sliding_window=262144,
                      rope_scaling={"type": "su", "short_factor": [1.0] * half,
                                    "long_factor": [1.0 + 0.5 * i for i in range(half)]})
    else:
        raise ValueError(f"unknown llm {llm!r}; choose one of {', '.join(LLMS)}")
    return config


def checkpoint_config(llm: str = "internlm2", size: TinySize = SMALL, tile: int = TILE, vocabulary: str = "tiny",
                      patch: int = PATCH):
    """An ``InternVLChatConfig`` (our code's class) as InternVL2's config.json has it."""
    from .internvl2_code.configuration_internvl_chat import InternVLChatConfig

    return InternVLChatConfig(
        vision_config=vision_config(size, tile, patch), llm_config=llm_config(llm, size, vocabulary), template=LLMS[llm][1],
        downsample_ratio=DOWNSAMPLE, force_image_size=tile, select_layer=-1, ps_version="v2",
        dynamic_image_size=True, use_thumbnail=True, min_dynamic_patch=1, max_dynamic_patch=12,
        architectures=["InternVLChatModel"],
        auto_map={"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                  "AutoModel": "modeling_internvl_chat.InternVLChatModel",
                  "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"},
    )


# -- checkpoints ------------------------------------------------------------------------------------
def build_model(llm: str = "internlm2", size: TinySize = SMALL, seed: int = 0, tile: int = TILE,
                attn_implementation: str = "eager", vocabulary: str = "tiny", patch: int = PATCH):
    """A tiny random ``InternVLChatModel`` (our package's classes), float32, eval mode.

    ``attn_implementation``: the language model's attention, one of ``ATTENTION[llm]`` but
    ``flash_attention_2`` (``eager`` everywhere, ``sdpa`` for Qwen2 / Llama).
    """
    from .internvl2_code.modeling_internvl_chat import InternVLChatModel

    if attn_implementation not in ATTENTION[llm] or attn_implementation == "flash_attention_2":
        raise ValueError(f"build_model builds {llm} language models with attention in "
                         f"{[a for a in ATTENTION[llm] if a != 'flash_attention_2']}, not {attn_implementation!r}")
    config = checkpoint_config(llm, size, tile, vocabulary, patch)
    # transformers' Qwen2/Llama read _attn_implementation when their layers are made (InternLM2 and
    # the Phi-3 code read the plain field InternVLChatModel.__init__ sets to eager here)
    config.llm_config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = InternVLChatModel(config, use_flash_attn=False)
    # Random init gives near-uniform next-token distributions; a larger lm head spread makes greedy
    # answers (and early-exit scores) meaningful instead of coin flips -- as TinyFamily.model does.
    with torch.no_grad():
        model.language_model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()


def save_checkpoint(directory, llm: str = "internlm2", size: TinySize = SMALL, seed: int = 0, tile: int = TILE,
                    vocabulary: str = "tiny", patch: int = PATCH) -> str:
    """Write a checkpoint directory as the hub has InternVL2's: config.json with ``auto_map``, the model
    code files, safetensors weights, a tokenizer (``VOCABULARIES``) and a generation config.  Returns the path."""
    from transformers import GenerationConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_model(llm, size, seed, tile, vocabulary=vocabulary, patch=patch).save_pretrained(directory)
    for source in sorted(CODE_DIR.glob("*.py")):
        if source.name != "__init__.py":
            shutil.copyfile(source, directory / source.name)
    build_tokenizer(vocabulary).save_pretrained(directory)
    # transformers 4.49 saves a fast tokenizer's class without "Fast" (4.37.2 keeps it); with that,
    # AutoTokenizer(use_fast=False), which InternVL's eval scripts call, builds the abstract base
    tokenizer_config = directory / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config.write_text(json.dumps(settings, indent=2))
    layout = VOCABULARIES[vocabulary]
    end_of_turn = layout.id("<|end|>" if llm == "phi3" else "<|im_end|>")
    GenerationConfig(bos_token_id=layout.id("<s>"), eos_token_id=[layout.id("</s>"), end_of_turn],
                     pad_token_id=layout.id("<pad>")).save_pretrained(directory)
    with open(directory / "config.json") as f:  # auto_map must name the copied files, which it does
        assert "auto_map" in json.load(f)
    return os.fspath(directory)


def load(directory, attn_implementation: str = "eager", remote_code: bool = True):
    """Load a saved checkpoint in eval mode.

    ``remote_code=True`` goes through ``AutoModel.from_pretrained(..., trust_remote_code=True)`` (the
    classes then live in ``transformers_modules.<dir>``, as for hub checkpoints); ``False`` uses the
    classes of ``sgl_patch.tiny.internvl2_code`` directly (as InternVL's own eval scripts import them).
    ``attn_implementation`` sets the language model's attention: ``eager`` everywhere, ``sdpa`` for
    Qwen2/Llama, ``flash_attention_2`` where the flash_attn package imports.
    """
    from transformers import AutoConfig, AutoModel

    if remote_code:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=True)
        model_class, extra = AutoModel, dict(trust_remote_code=True)
    else:
        from .internvl2_code.configuration_internvl_chat import InternVLChatConfig
        from .internvl2_code.modeling_internvl_chat import InternVLChatModel

        config = InternVLChatConfig.from_pretrained(directory)
        model_class, extra = InternVLChatModel, {}
    kind = next(k for k, v in LLMS.items() if v[0] == config.llm_config.architectures[0])
    if attn_implementation not in ATTENTION[kind]:
        raise ValueError(f"{kind} language models take attn_implementation in {ATTENTION[kind]}, "
                         f"not {attn_implementation!r}")
    flash = attn_implementation == "flash_attention_2"
    if flash:
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise ValueError("attn_implementation='flash_attention_2' needs the flash_attn package")
    # transformers' Qwen2/Llama and the Phi-3 code read _attn_implementation; InternLM2 reads the
    # plain attn_implementation field, which InternVLChatModel.__init__ sets from use_flash_attn
    config.llm_config._attn_implementation = attn_implementation
    model = model_class.from_pretrained(directory, config=config, use_flash_attn=flash, **extra)
    return model.eval()


def load_tokenizer(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, trust_remote_code=True)


# -- inputs -----------------------------------------------------------------------------------------
def chat_query(model, num_patches: int | None, question: str) -> str:
    """The prompt ``chat``/``batch_chat`` build for one question (``None`` patches: no image, as for text-only chat)."""
    from .internvl2_code.conversation import get_conv_template

    if num_patches is not None and "<image>" not in question:
        question = "<image>\n" + question
    template = get_conv_template(model.template)
    template.system_message = model.system_message
    template.append_message(template.roles[0], question)
    template.append_message(template.roles[1], None)
    query = template.get_prompt()
    if num_patches is not None:
        image = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * model.num_image_token * num_patches + IMG_END_TOKEN
        query = query.replace("<image>", image, 1)
    return query


def default_questions(samples, seed: int = 0) -> list[str]:
    """Questions of different lengths, one per sample (text-only samples get text questions)."""
    pools = [TEXT_QUESTIONS if n is None else QUESTIONS for n in samples]
    return [pool[(seed + i) % len(pool)] for i, pool in enumerate(pools)]


def inputs(model, samples, questions=None, *, tokenizer=None, seed: int = 0, padding_side: str = "left") -> dict:
    """What ``batch_chat`` hands to ``generate`` for ``samples`` (tile counts; None = text only).

    Returns ``input_ids`` and ``attention_mask`` (left padded) and, when any sample has tiles,
    ``pixel_values`` ``[sum(tiles), 3, tile, tile]`` in sample order; sets ``model.img_context_token_id``
    as ``batch_chat`` does, so ``model.generate(**inputs(model, ...), max_new_tokens=...)`` runs.
    ``model`` may also be ``Prompting`` (what a checkpoint's prompts depend on, without its weights).
    """
    tok = tokenizer if tokenizer is not None else build_tokenizer(vocabulary_of(model))
    model.img_context_token_id = tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    questions = list(questions) if questions is not None else default_questions(samples, seed)
    queries = [chat_query(model, n, q) for n, q in zip(samples, questions, strict=True)]
    tok.padding_side = padding_side
    encoded = tok(queries, return_tensors="pt", padding=True)
    batch = {"input_ids": encoded["input_ids"].to(model.device),
             "attention_mask": encoded["attention_mask"].to(model.device)}
    tiles = sum(n for n in samples if n)
    if tiles:
        side = model.config.force_image_size or model.config.vision_config.image_size
        pixels = torch.randn(tiles, 3, side, side, generator=torch.Generator().manual_seed(seed))
        batch["pixel_values"] = pixels.to(model.device, model.dtype)
    return batch


def vocabulary_of(model) -> str:
    """The ``VOCABULARIES`` entry a tiny model was built with (``Prompting``: the default)."""
    language_model = getattr(model, "language_model", None)
    if language_model is None:
        return "tiny"
    size = language_model.config.vocab_size
    return next(name for name, layout in VOCABULARIES.items() if layout.size == size)


class Prompting:
    """What ``chat_query`` and ``inputs`` read of an ``InternVLChatModel`` (template, system message,
    tokens and pixels per tile), for checkpoint settings without building the model."""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self, llm: str = "internlm2", tile: int = TILE):
        from types import SimpleNamespace

        from .internvl2_code.conversation import get_conv_template

        self.template = LLMS[llm][1]
        self.system_message = get_conv_template(self.template).system_message
        self.num_image_token = tokens_per_tile(tile)
        self.config = SimpleNamespace(force_image_size=tile, vision_config=SimpleNamespace(image_size=tile))
        self.img_context_token_id = None


def question_of(n_tokens: int, seed: int = 0, tokenizer=None) -> str:
    """An English question of about ``n_tokens`` tokens (a slice of the tokenizer's corpus, decoded)."""
    tok = tokenizer if tokenizer is not None else build_tokenizer()
    english = " ".join(line for line in _CORPUS.split("\n") if line.isascii())
    ids = tok(english, add_special_tokens=False)["input_ids"]
    ids = ids * (n_tokens // len(ids) + 2)
    start = (seed * 7) % (len(ids) - n_tokens)
    return tok.decode(ids[start:start + n_tokens]).strip() + "?"


def bos_columns(model) -> int:
    """Leading columns of ``InternVLChatModel.generate``'s output that are not generated tokens.

    ``generate`` passes ``inputs_embeds`` to ``language_model.generate``, which starts its output from
    ``[[bos]]`` on transformers 4.37.2 (1) and from an empty ``[batch, 0]`` on 4.49 (0).
    """
    lm = model.language_model
    start = lm._maybe_initialize_input_ids_for_generation(None, BOS, {"inputs_embeds": torch.zeros(1, 1, 1)})
    return int(start.shape[1])


# -- the family the demo and the benchmark run ------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _shared_tokenizer():
    return build_tokenizer()


def _kind_of(config) -> str:
    """The language-model kind (``KINDS``) of an ``InternVLChatConfig`` or of a checkpoint directory."""
    if isinstance(config, (str, os.PathLike)):
        with open(Path(config, "config.json")) as f:
            architecture = json.load(f)["llm_config"]["architectures"][0]
    else:
        architecture = config.llm_config.architectures[0]
    return next(k for k, v in LLMS.items() if v[0] == architecture)


def default_attention(llm: str) -> str:
    """SDPA where the language model's code has it (Qwen2, Llama), eager otherwise (InternLM2, Phi-3)."""
    return "sdpa" if "sdpa" in ATTENTION[llm] else "eager"


class InternVLChatFamily(TinyFamily):
    """InternVL2's original ``InternVLChatModel`` on the legacy transformers line (4.37.2 .. 4.49).

    ``inputs`` takes per sample a number of tiles (``None``: text only) and builds what
    ``batch_chat`` hands to ``generate``: the chat template of the *large* model's language model
    (``large_llm``) with its system message, ``num_image_token`` ``<IMG_CONTEXT>`` per tile, left
    padding, and random pixels.  The models it builds have ``img_context_token_id`` set (as
    ``chat`` sets it), so ``model.generate(pixel_values=, input_ids=, attention_mask=)`` runs.
    ``small_llm`` / ``large_llm`` are ``KINDS`` (default InternLM2 for both, like InternVL2-2B
    guiding InternVL2-26B); ``tile`` the tile side in pixels (16: 16 tokens a tile; 64: 256, a real
    448-px tile's count).
    """

    name, class_name = "internvl_chat", "InternVLChatModel"
    one = 2                  # 32 visual tokens
    mixed = [2, 1, 3]        # 32, 16, 48
    multi = None             # batch_chat: one image (of several tiles) per sample

    def __init__(self, small_llm: str = "internlm2", large_llm: str = "internlm2", tile: int = TILE):
        for llm in (small_llm, large_llm):
            if llm not in LLMS:
                raise ValueError(f"unknown InternVL2 language model {llm!r}; choose from {', '.join(KINDS)}")
        if tokens_per_tile(tile) * (PATCH / DOWNSAMPLE) ** 2 != tile * tile:
            raise ValueError(f"a tile of {tile} px is not whole {PATCH}-px patches shuffled by {DOWNSAMPLE}")
        self.small_llm, self.large_llm, self.tile = small_llm, large_llm, tile

    def with_llms(self, small_llm: str, large_llm: str | None = None) -> "InternVLChatFamily":
        """The same family with other language models (``KINDS``; ``large_llm`` defaults to ``small_llm``)."""
        return InternVLChatFamily(small_llm, large_llm or small_llm, self.tile)

    @property
    def tile_tokens(self) -> int:
        return tokens_per_tile(self.tile)

    @property
    def title(self) -> str:
        return f"{self.name}: {self.small_llm} small, {self.large_llm} large"

    def __repr__(self):
        return f"InternVLChatFamily({self.small_llm!r}, {self.large_llm!r}, tile={self.tile})"

    # -- models -------------------------------------------------------------------------------
    def config(self, size: TinySize = SMALL, llm: str | None = None):
        return checkpoint_config(llm or self.small_llm, size, self.tile)

    def model_class(self):
        from .internvl2_code.modeling_internvl_chat import InternVLChatModel

        return InternVLChatModel

    def model(self, size: TinySize = SMALL, seed: int = 0, attn_implementation: str | None = None, config=None,
              llm: str | None = None):
        """A tiny random model (``small_llm`` unless ``llm``), ready to generate: float32, eval mode."""
        if config is not None:
            raise ValueError("InternVLChatFamily builds its models from (llm, size, tile); pass llm=, not config=")
        llm = llm or self.small_llm
        model = build_model(llm, size, seed, self.tile, attn_implementation or default_attention(llm))
        return self._ready(model)

    def pair(self, small: TinySize = SMALL, large: TinySize = LARGE) -> tuple:
        return self.model(small, seed=0, llm=self.small_llm), self.model(large, seed=1, llm=self.large_llm)

    def saved_pair(self, root, small: TinySize = SMALL, large: TinySize = LARGE) -> tuple[str, str]:
        root = Path(root)
        return (save_checkpoint(root / "small", self.small_llm, small, 0, self.tile),
                save_checkpoint(root / "large", self.large_llm, large, 1, self.tile))

    def load(self, path, dtype=torch.float32):
        """A checkpoint loaded as the hub's are (``AutoModel``, ``trust_remote_code``), ready to generate."""
        model = load(path, default_attention(_kind_of(path)))
        if dtype != "auto":
            model = model.to(dtype)
        return self._ready(model)

    @staticmethod
    def _ready(model):
        model.img_context_token_id = IMAGE  # what chat() sets: the tokenizer's <IMG_CONTEXT> id
        return model.eval()

    def attention(self, model) -> str:
        lm_config = model.language_model.config
        if _kind_of(model.config) in ("internlm2", "phi3"):  # their code reads the plain field
            return lm_config.attn_implementation
        return lm_config._attn_implementation

    def with_attention(self, model, implementation: str):
        """``model`` itself when it already has that attention (nothing to switch), else a copy built
        with it (the legacy line cannot switch a built model's attention classes)."""
        if self.attention(model) == implementation:
            return model
        tile = model.config.force_image_size or model.config.vision_config.image_size
        other = build_model(_kind_of(model.config), _size_of(model), 0, tile, implementation)
        other.load_state_dict(model.state_dict())
        other.language_model.generation_config = copy.deepcopy(model.language_model.generation_config)
        return self._ready(other.to(model.device, model.dtype))

    # -- inputs --------------------------------------------------------------------------------
    def inputs(self, samples, prompt_lengths=None, *, seed: int = 0, padding_side: str = "left") -> dict:
        """``prompt_lengths``: per sample, the question's length in tokens (default: built-in questions)."""
        tok = _shared_tokenizer()
        questions = None
        if prompt_lengths is not None:
            questions = [question_of(n, seed + i, tok) for i, n in enumerate(prompt_lengths)]
        return inputs(Prompting(self.large_llm, self.tile), list(samples), questions, tokenizer=tok, seed=seed,
                      padding_side=padding_side)

    def visual_tokens(self, sample) -> int:
        # <IMG_CONTEXT> only: the tokenizer's id 6 (the other families' VIDEO) is <|im_start|> here
        return int((self.inputs([sample])["input_ids"] == IMAGE).sum())

    def describe(self, sample) -> str:
        return "text only" if not sample else f"{sample} tile{'s' if sample > 1 else ''}"

    def demo_samples(self) -> list:
        return [5, 3, 1, 7, None]  # 1 or n + 1 tiles, as dynamic_preprocess and its thumbnail make them

    def for_tile_tokens(self, tile_tokens: int) -> "InternVLChatFamily":
        side = 4 * math.isqrt(tile_tokens)  # (side / 2 patches x 0.5) ** 2 tokens
        if tokens_per_tile(side) != tile_tokens:
            return self
        return InternVLChatFamily(self.small_llm, self.large_llm, side)

    def tiled_sample(self, tiles: int, tile_tokens: int) -> int:
        """``tiles`` of this family's tiles when they hold ``tile_tokens``, else whole tiles making as many."""
        if tile_tokens % self.tile_tokens:
            raise ValueError(f"an InternVL2 tile of {self.tile} px holds {self.tile_tokens} tokens: build the family "
                             f"for {tile_tokens} (for_tile_tokens) or ask for a multiple of {self.tile_tokens}")
        return tiles * (tile_tokens // self.tile_tokens)

    def new_tokens(self, model, output: torch.Tensor, inputs: dict) -> torch.Tensor:
        # generate hands inputs_embeds to the language model: no prompt in the output (BOS on 4.37.2)
        return output[:, bos_columns(model):]

    # -- what the benchmark times ----------------------------------------------------------------
    def prefill(self, model, inputs: dict) -> None:
        """``InternVLChatModel.forward`` over the prompt with a fresh cache (it has no ``logits_to_keep``:
        the language model's head runs over every position, 0.4% of this prefill at the benchmark's shapes)."""
        features = inputs.get("visual_features")
        pixels = inputs.get("pixel_values")
        tiles = (features if features is not None else pixels).shape[0]
        flags = torch.ones(tiles, 1, dtype=torch.long, device=inputs["input_ids"].device)
        if features is not None:  # the language model alone: the encoder's output stands in for it
            model.extract_feature = lambda _pixels: features  # shadows the method for this call
        try:
            model(pixel_values=pixels, input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                  image_flags=flags, use_cache=True, return_dict=True)
        finally:
            model.__dict__.pop("extract_feature", None)

    def language_only(self, model, batch: dict) -> dict:
        """``batch`` with ``visual_features`` (``extract_feature``'s output, what ``generate`` also
        takes) in place of ``pixel_values``."""
        out = {k: v for k, v in batch.items() if k != "pixel_values"}
        with torch.no_grad():
            out["visual_features"] = model.extract_feature(batch["pixel_values"])
        return out


def _size_of(model) -> TinySize:
    text, vision = model.language_model.config, model.config.vision_config
    return TinySize(hidden=text.hidden_size, layers=text.num_hidden_layers, heads=text.num_attention_heads,
                    kv_heads=text.num_key_value_heads, vision_depth=vision.num_hidden_layers,
                    vision_dim=vision.hidden_size, vision_heads=vision.num_attention_heads,
                    intermediate=text.intermediate_size)


FAMILIES = {"internvl_chat": InternVLChatFamily()}


__all__ = [
    "ATTENTION", "DOWNSAMPLE", "FAMILIES", "IMG_CONTEXT_TOKEN", "IMG_END_TOKEN", "IMG_START_TOKEN", "KINDS", "LARGE",
    "LLMS", "PATCH", "SMALL", "SPECIAL_TOKENS", "TILE", "VOCABULARIES", "InternVLChatFamily", "Prompting",
    "Vocabulary", "bos_columns", "vocabulary_of",
    "build_model", "build_tokenizer", "chat_query", "checkpoint_config", "default_attention", "default_questions",
    "inputs", "llm_config", "load", "load_tokenizer", "question_of", "save_checkpoint", "tokens_per_tile",
    "vision_config",
]
