"""Tiny checkpoints for the original ``llava`` package (PyPI ``llava-torch==1.2.2.post1``).

The LLaVA repository's eval scripts (``llava.eval.model_vqa_loader`` and its siblings) load
``LlavaLlamaForCausalLM`` / ``LlavaMistralForCausalLM`` through
``llava.model.builder.load_pretrained_model`` and call the package's own ``generate``.  This module
writes checkpoints those scripts load unchanged, with random weights and the project's tiny sizes:

* a CLIP vision tower saved with ``save_pretrained`` beside its ``CLIPImageProcessor``, in a folder
  the checkpoint's ``mm_vision_tower`` names (the package needs the path on disk and loads the tower
  from there in ``load_model()``, not from the checkpoint's weights).  16-px crops of 4-px patches,
  so one crop is 4 x 4 = 16 features, as the native tiny LLaVA-1.5 (``tiny/llava.py``);
* the LLaVA checkpoint: config with the ``mm_*`` fields the package reads, weights, a
  sentencepiece ``LlamaTokenizer`` trained here (the project's 512-token vocabulary, ``<pad>`` 0,
  ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, byte fallback) plus the equivalent ``tokenizer.json`` (the
  Mistral branch of the builder asks ``AutoTokenizer`` for a fast tokenizer, and converting
  sentencepiece offline needs ``protobuf``, which the legacy environments lack).

Three kinds, named like the released checkpoints (the builder dispatches on the folder name: it must
contain ``llava``, and ``mistral`` selects ``LlavaMistralForCausalLM``):

==================  ===========================  ==============  ==============================
kind                class                        aspect ratio    patch merge
==================  ===========================  ==============  ==============================
``"v1.5"``          ``LlavaLlamaForCausalLM``    ``pad``         ``flat`` (16 tokens an image)
``"v1.6"``          ``LlavaLlamaForCausalLM``    ``anyres``      ``spatial_unpad``
``"mistral-v1.6"``  ``LlavaMistralForCausalLM``  ``anyres``      ``spatial_unpad``
==================  ===========================  ==============  ==============================

``save_checkpoint(root, kind, size)`` writes ``root/<clip tower>/`` (shared by every checkpoint of
one vision geometry under ``root``) and ``root/<checkpoint>/``, and returns the checkpoint's path.
``load(path)`` goes through ``load_pretrained_model`` as the eval scripts do; ``inputs(...)`` builds
what those scripts pass to ``model.generate``.  The ``llava`` package is imported only inside the
functions, so importing this module needs nothing beyond the project's own requirements.

What the package does with them (measured on transformers 4.37.2 and 4.49.0,
``tests/legacy/test_tiny_llava_torch.py``):

* ``generate(inputs, images, image_sizes, **kw)`` calls ``prepare_inputs_labels_for_multimodal``
  once, then ``GenerationMixin.generate(inputs_embeds=..., attention_mask=..., position_ids=...)``;
  ``images`` never reach ``forward``, whose own splice returns early (no images, or one token).
  The prompt goes positionally (``generate(input_ids=...)`` fails).  4.37.2 returns ``[BOS] +``
  new tokens and forces ``use_cache=True``; on 4.49.0 it raises ``TypeError`` (``cache_position``
  passed to ``forward``).  ``greedy`` below is a ``forward``-only reference for both.
* The splice drops padding by ``attention_mask`` and re-pads with zero vectors on
  ``config.tokenizer_padding_side`` (default "right"); it returns the new mask in the input's dtype,
  ``position_ids`` only if given (then 0..n-1 per row), ``None`` for ``input_ids``.  Only "left"
  lets a batch generate what each sample does alone.  A row without ``<image>`` still consumes one
  image of ``images``.
* Per image: 1.5 (``flat``) the tower's 16 features; 1.6 the base view's 16 features, then the
  anyres grid (``get_anyres_image_grid_shape``), unpadded (``llava_arch.unpad_image``), row by row,
  each row followed by ``image_newline`` (``visual_tokens`` counts it with those helpers).
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import shutil
from pathlib import Path

import torch

from .base import BOS, EOS, PAD, SMALL, VOCAB, TinySize, text_config
from .llava import IMAGE_SIZE, PATCH, clip_config

UNK = 3  # sentencepiece needs an unknown piece; the project keeps ids below 10 for special tokens
KINDS = ("v1.5", "v1.6", "mistral-v1.6")
IMAGE_TOKEN_INDEX = -200  # llava.constants.IMAGE_TOKEN_INDEX, restated so the tests can check it

# (width, height) in pixels, multiples of the 16-px crop: the released LLaVA-1.6 list
# [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]] with 336 -> 16
PINPOINTS = [[16, 32], [32, 16], [32, 32], [48, 16], [16, 48]]

# the conversation template the LLaVA scripts pass (``--conv-mode``) for each kind
CONV_MODES = {"v1.5": "vicuna_v1", "v1.6": "vicuna_v1", "mistral-v1.6": "mistral_instruct"}

# ``tokenizer_padding_side`` written into each kind's config: the side
# ``prepare_inputs_labels_for_multimodal`` re-pads a batch on.  The released LLaVA-1.5 configs say
# "right" (the training tokenizer's side; the eval scripts run one sample at a time); "left" for
# LLaVA-1.6 follows the released 1.6 configs as remembered (not checkable offline).  Left is the only
# side on which a batch generates what each sample generates alone; pass ``padding_side=`` to choose.
PADDING_SIDES = {"v1.5": "right", "v1.6": "left", "mistral-v1.6": "left"}

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP's normalisation, as the real processor
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

QUESTIONS = ["What is in the image?",
             "What colour is the large shape at the top left of the picture?",
             "How many objects are there?",
             "Describe the picture."]


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown llava-torch kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return kind


# -- tokenizer -----------------------------------------------------------------------------------

def _corpus() -> list[str]:
    """Deterministic text the tokenizer is trained on: the prompt templates and random sentences."""
    rng = random.Random(0)
    templates = [
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions.",
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions.",
    ]
    words = ("a the of and to in is it that for on with as was at by an be this are or from but not have "
             "what which who where when how why color colour shape image picture photo red green blue yellow "
             "black white orange purple circle square triangle star left right top bottom center middle there "
             "one two three four five six seven eight nine ten yes no answer question describe count many "
             "number object objects small large big tiny near far above below next single word phrase "
             "using").split()
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "zu", "ba", "de", "fi", "go", "hu"]
    lines = []
    for i in range(3000):
        n = rng.randint(3, 14)
        toks = []
        for _ in range(n):
            r = rng.random()
            if r < 0.7:
                toks.append(rng.choice(words))
            elif r < 0.85:
                toks.append("".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))))
            else:
                toks.append(str(rng.randint(0, 999)))
        sentence = " ".join(toks)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice(".?!,:")
        if i % 10 == 0:  # the chat templates' words become pieces of their own
            sentence = f"{rng.choice(templates)} USER: {sentence} ASSISTANT: [INST] {sentence} [/INST]"
        lines.append(sentence)
    return lines


@functools.lru_cache(maxsize=1)
def _sentencepiece_model() -> bytes:
    """A 512-piece unigram sentencepiece model (Llama's conventions: byte fallback, no normalisation)."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=out, vocab_size=VOCAB, model_type="unigram",
        pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK,
        pad_piece="<pad>", bos_piece="<s>", eos_piece="</s>", unk_piece="<unk>",
        byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, split_digits=True, character_coverage=1.0,
        num_threads=1, minloglevel=2)
    return out.getvalue()


def _fast_tokenizer_json(model: bytes) -> str:
    """``tokenizer.json`` equivalent to the sentencepiece model, built without ``protobuf``."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers, processors

    sp = spm.SentencePieceProcessor(model_proto=model)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=UNK, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", BOS)])
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(sp.id_to_piece(i), special=True, normalized=False)
                            for i in (PAD, BOS, EOS, UNK)])
    return tok.to_str()


def save_tokenizer(directory: str | os.PathLike) -> None:
    """Write the tiny tokenizer: ``tokenizer.model`` (slow ``LlamaTokenizer``) and ``tokenizer.json``.

    Every call writes the same files, so every tiny checkpoint (small, large, any kind) shares one
    tokenizer.  ``legacy=True`` is required offline: ``legacy=False`` rewrites the sentencepiece
    model through ``protobuf``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = _sentencepiece_model()
    (directory / "tokenizer.model").write_bytes(model)
    (directory / "tokenizer.json").write_text(_fast_tokenizer_json(model))
    # written by hand, not by save_pretrained, so that the files do not depend on the transformers
    # release that wrote them (4.49 adds "add_prefix_space", which makes LlamaTokenizerFast convert
    # from the slow tokenizer, which needs protobuf)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    config = dict(special, tokenizer_class="LlamaTokenizer", add_bos_token=True, add_eos_token=False,
                  legacy=True, clean_up_tokenization_spaces=False, model_max_length=4096,
                  padding_side="right", sp_model_kwargs={}, use_default_system_prompt=False)
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


# -- vision tower ----------------------------------------------------------------------------------

def tower_name(size: TinySize = SMALL, image_size: int = IMAGE_SIZE, patch: int = PATCH) -> str:
    return f"clip-vit-tiny-d{size.vision_dim}-l{size.vision_depth + 1}-p{patch}-{image_size}"


def save_vision_tower(directory: str | os.PathLike, size: TinySize = SMALL, *, image_size: int = IMAGE_SIZE,
                      patch: int = PATCH, seed: int = 0) -> str:
    """A tiny ``CLIPVisionModel`` and its ``CLIPImageProcessor``, saved with ``save_pretrained``."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    settings = {k: v for k, v in clip_config(size, image_size, patch).items() if k != "model_type"}
    torch.manual_seed(seed)
    tower = CLIPVisionModel(CLIPVisionConfig(**settings)).eval()
    tower.save_pretrained(str(directory), safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                       do_center_crop=True, do_resize=True, resample=3, image_mean=CLIP_MEAN,
                       image_std=CLIP_STD, do_convert_rgb=True).save_pretrained(str(directory))
    return str(directory)


# -- checkpoints -----------------------------------------------------------------------------------

def checkpoint_name(kind: str, size: TinySize = SMALL) -> str:
    """The folder name: ``llava`` (and ``mistral``) in it, as the builder's dispatch needs."""
    prefix = {"v1.5": "llava-v1.5-tiny", "v1.6": "llava-v1.6-vicuna-tiny",
              "mistral-v1.6": "llava-v1.6-mistral-tiny"}[_check_kind(kind)]
    return f"{prefix}-h{size.hidden}-l{size.layers}"


def llava_config(kind: str, tower_path: str, size: TinySize = SMALL, *, padding_side: str | None = None,
                 select_layer: int = -2, select_feature: str = "patch"):
    """The checkpoint's config object (``LlavaConfig`` / ``LlavaMistralConfig`` of the package)."""
    from transformers import CLIPVisionConfig

    _check_kind(kind)
    vision = CLIPVisionConfig.from_pretrained(tower_path)
    anyres = kind != "v1.5"
    fields = dict(
        text_config(size),
        hidden_act="silu", rms_norm_eps=1e-5, initializer_range=0.02, use_cache=True,
        # what llava_arch / clip_encoder / mm_utils / builder read
        mm_vision_tower=str(tower_path), mm_hidden_size=vision.hidden_size, mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=select_layer, mm_vision_select_feature=select_feature,
        image_aspect_ratio="anyres" if anyres else "pad",
        mm_patch_merge_type="spatial_unpad" if anyres else "flat",
        mm_use_im_start_end=False, mm_use_im_patch_token=False,
        tokenizer_padding_side=padding_side or PADDING_SIDES[kind],
        tokenizer_model_max_length=4096 if anyres else 2048,
        # written by the training script, read by nothing at inference
        use_mm_proj=True, tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False, mm_projector_lr=None,
        unfreeze_mm_vision_tower=False,
    )
    if anyres:
        fields["image_grid_pinpoints"] = [list(p) for p in PINPOINTS]
        fields["image_crop_resolution"] = vision.image_size
        fields["image_split_resolution"] = vision.image_size
    if kind == "mistral-v1.6":
        from llava.model.language_model.llava_mistral import LlavaMistralConfig

        return LlavaMistralConfig(**fields, sliding_window=None, rope_theta=1e6)
    from llava.model.language_model.llava_llama import LlavaConfig

    return LlavaConfig(**fields, rope_theta=1e4, pretraining_tp=1)


def model_class(kind: str):
    if _check_kind(kind) == "mistral-v1.6":
        from llava.model.language_model.llava_mistral import LlavaMistralForCausalLM

        return LlavaMistralForCausalLM
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    return LlavaLlamaForCausalLM


def save_checkpoint(directory: str | os.PathLike, kind: str = "v1.5", size: TinySize = SMALL, seed: int = 0, *,
                    name: str | None = None, padding_side: str | None = None, image_size: int = IMAGE_SIZE,
                    patch: int = PATCH, select_layer: int = -2, lm_head_scale: float = 8.0) -> str:
    """Write a tiny LLaVA checkpoint of ``kind`` under ``directory`` and return its path.

    ``directory`` is a root: the CLIP tower goes to ``directory/tower_name(...)`` (written once,
    then reused by every checkpoint of that vision geometry), the checkpoint to
    ``directory/(name or checkpoint_name(kind, size))``.  Weights are random (``seed``) and saved in
    float32; the lm head is scaled by ``lm_head_scale`` as ``TinyFamily.model`` does, so greedy
    answers are not coin flips.  ``padding_side`` sets ``tokenizer_padding_side`` (default:
    ``PADDING_SIDES[kind]``).
    """
    _check_kind(kind)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    tower = root / tower_name(size, image_size, patch)
    if not (tower / "config.json").exists():
        save_vision_tower(tower, size, image_size=image_size, patch=patch)
    path = root / (name or checkpoint_name(kind, size))
    if "llava" not in path.name.lower() or ("mistral" in path.name.lower()) != (kind == "mistral-v1.6"):
        raise ValueError(f"load_pretrained_model dispatches on the folder name: {path.name!r} does not fit {kind}")
    if path.exists():
        shutil.rmtree(path)

    config = llava_config(kind, str(tower.resolve()), size, padding_side=padding_side, select_layer=select_layer)
    torch.manual_seed(seed)
    model = model_class(kind)(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(lm_head_scale)
        newline = getattr(model.get_model(), "image_newline", None)
        if newline is not None:  # created with torch.empty by the package; training would fill it
            newline.copy_(torch.randn(newline.shape) / config.hidden_size ** 0.5)
    generation = model.generation_config
    generation.bos_token_id, generation.eos_token_id, generation.pad_token_id = BOS, EOS, PAD
    model.save_pretrained(str(path), safe_serialization=True)
    save_tokenizer(path)
    return str(path)


# -- loading and inputs ----------------------------------------------------------------------------

def load(directory: str | os.PathLike, device: str = "cpu", dtype: str | torch.dtype | None = None):
    """``(tokenizer, model, image_processor, context_len)`` from ``load_pretrained_model``.

    As ``llava/eval/model_vqa_loader.py``: ``load_pretrained_model(model_path, None,
    get_model_name_from_path(model_path))``.  ``device="auto"`` is exactly that call (its defaults
    ``device_map="auto", device="cuda"``: accelerate places the model, the vision tower stays float32);
    any other device passes ``device_map=device, device=device`` (the builder then puts the tower on
    that device in float16 too).  The builder always loads the language model in float16 (it
    overwrites any ``torch_dtype`` in its kwargs), so ``dtype="float32"`` casts the loaded model
    (tower included) afterwards; ``None`` keeps what the builder gives.
    """
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    model_path = os.path.expanduser(str(directory))
    model_name = get_model_name_from_path(model_path)
    if device == "auto":
        tokenizer, model, processor, context_len = load_pretrained_model(model_path, None, model_name)
    else:
        tokenizer, model, processor, context_len = load_pretrained_model(model_path, None, model_name,
                                                                         device_map=device, device=device)
    if dtype is not None:
        model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    return tokenizer, model.eval(), processor, context_len


def images(image_sizes, seed: int = 0):
    """Random RGB PIL images of the given ``(width, height)`` sizes."""
    import numpy as np
    from PIL import Image

    out = []
    for i, (width, height) in enumerate(image_sizes):
        pixels = np.random.default_rng(seed + i).integers(0, 256, (height, width, 3), dtype=np.uint8)
        out.append(Image.fromarray(pixels, "RGB"))
    return out


def prompt(question: str, config, conv_mode: str | None = None, kind: str | None = None) -> str:
    """The eval script's prompt: ``<image>\\n`` + question in the conversation template."""
    from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
    from llava.conversation import conv_templates

    if getattr(config, "mm_use_im_start_end", False):
        question = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN + "\n" + question
    else:
        question = DEFAULT_IMAGE_TOKEN + "\n" + question
    conv = conv_templates[conv_mode or CONV_MODES[kind or kind_of(config)]].copy()
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def kind_of(config) -> str:
    """The kind a loaded config was written as."""
    if config.model_type == "llava_mistral":
        return "mistral-v1.6"
    return "v1.6" if getattr(config, "image_aspect_ratio", None) == "anyres" else "v1.5"


def inputs(tokenizer, image_processor, config, image_sizes, questions=None, *, conv_mode: str | None = None,
           seed: int = 0, padding_side: str = "left", dtype: torch.dtype = torch.float16,
           device: str | torch.device = "cpu") -> dict:
    """What the eval scripts pass to ``model.generate``, one image per sample.

    ``image_sizes``: one PIL ``(width, height)`` per sample; ``questions``: one per sample (default:
    ``QUESTIONS`` in turn, of different lengths so batches pad).  Returns ``input_ids`` (one
    ``IMAGE_TOKEN_INDEX`` sentinel per sample, from ``tokenizer_image_token``), ``images`` (from
    ``process_images``: ``[n, 3, H, W]`` for 1.5; for anyres ``[n, crops, 3, H, W]`` when every image
    has as many crops, else a list of ``[crops_i, 3, H, W]``), ``image_sizes`` (list of ``(w, h)``)
    and, for several samples, ``attention_mask``.  Padding (``tokenizer.pad_token_id``) goes on
    ``padding_side``: ``prepare_inputs_labels_for_multimodal`` strips it with the mask and re-pads on
    ``config.tokenizer_padding_side``, so the side of ``input_ids`` does not change what the image
    path generates; left is the default because it is the side a text-only ``generate`` (no
    ``images``: embeddings taken as they are) needs.  ``dtype`` must be the model's (the eval script
    casts images to float16): the tower casts them to its own dtype but hands back features of theirs.
    """
    from llava.mm_utils import process_images, tokenizer_image_token

    questions = questions or [QUESTIONS[i % len(QUESTIONS)] for i in range(len(image_sizes))]
    if len(questions) != len(image_sizes):
        raise ValueError("one question per image")
    pictures = images(image_sizes, seed)
    rows = [tokenizer_image_token(prompt(q, config, conv_mode), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
            for q in questions]
    # per sample as the eval script's dataset, then stacked as its collate_fn when shapes agree
    tensors = [process_images([p], image_processor, config)[0] for p in pictures]
    if all(t.shape == tensors[0].shape for t in tensors):
        pixel = torch.stack(tensors).to(dtype=dtype, device=device)
    else:
        pixel = [t.to(dtype=dtype, device=device) for t in tensors]
    out = {"images": pixel, "image_sizes": [p.size for p in pictures]}
    if len(rows) == 1:
        out["input_ids"] = rows[0][None].to(device)
        return out
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
        ids[i, span] = row
        mask[i, span] = 1
    out["input_ids"], out["attention_mask"] = ids.to(device), mask.to(device)
    return out


def visual_tokens(config, image_size, *, tower_config=None) -> int:
    """How many embeddings ``prepare_inputs_labels_for_multimodal`` puts in place of one image.

    Computed with the package's own helpers: ``get_anyres_image_grid_shape`` (grid of crops from
    ``image_grid_pinpoints``) and ``llava_arch.unpad_image`` (rows / columns left after removing the
    padding of the ``(width, height)`` image), plus one ``image_newline`` per remaining row and the
    base view's features.  ``flat`` (1.5): the tower's features per image.
    """
    from transformers import CLIPVisionConfig

    vision = tower_config or CLIPVisionConfig.from_pretrained(config.mm_vision_tower)
    side = vision.image_size // vision.patch_size
    base = side * side + (getattr(config, "mm_vision_select_feature", "patch") == "cls_patch")
    merge = getattr(config, "mm_patch_merge_type", "flat")
    if merge == "flat" or getattr(config, "image_aspect_ratio", None) != "anyres":
        return base
    from llava.mm_utils import get_anyres_image_grid_shape
    from llava.model.llava_arch import unpad_image

    cols, rows = get_anyres_image_grid_shape(image_size, config.image_grid_pinpoints, vision.image_size)
    grid = torch.zeros(1, rows * side, cols * side)
    if "unpad" in merge:
        grid = unpad_image(grid, image_size)
        return base + grid.shape[1] * (grid.shape[2] + 1)
    return base + rows * cols * side * side


# -- generating ------------------------------------------------------------------------------------

def generate(model, batch: dict, **kwargs):
    """``model.generate`` called as the eval scripts call it, on a batch from ``inputs``.

    The package's ``generate(inputs, images, image_sizes, **kwargs)`` names the prompt ``inputs``:
    ``generate(input_ids=...)`` lands in ``**kwargs`` and fails (``prepare_inputs_labels_for_multimodal``
    gets ``None``), so ``generate(**batch)`` does not work; this passes it positionally.
    """
    extra = {"attention_mask": batch["attention_mask"]} if "attention_mask" in batch else {}
    return model.generate(batch["input_ids"], images=batch["images"], image_sizes=batch["image_sizes"],
                          **extra, **kwargs)


@torch.no_grad()
def greedy(model, batch: dict, max_new_tokens: int, use_cache: bool = True) -> torch.Tensor:
    """Greedy new tokens ``[batch, max_new_tokens]`` through ``forward`` alone (no ``generate``).

    A reference that works on every transformers release the package loads on (its ``generate``
    breaks on 4.49).  ``use_cache=False`` calls ``forward(input_ids, images=...)`` on the whole
    sequence every step (``prepare_inputs_labels_for_multimodal`` runs every step);
    ``use_cache=True`` splices once, then feeds one token at a time with the cache.  Positions count
    real tokens only, as ``generate`` derives them from the attention mask.  Batches of several
    samples need ``tokenizer_padding_side == "left"`` (logits are read at the last column).  No
    stopping at EOS.
    """
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    if ids.shape[0] > 1 and getattr(model.config, "tokenizer_padding_side", "right") != "left":
        raise ValueError("greedy() reads the last column: a batch needs tokenizer_padding_side='left'")
    mask = torch.ones_like(ids) if mask is None else mask
    images, sizes = batch["images"], batch["image_sizes"]
    out = []
    if not use_cache:
        for _ in range(max_new_tokens):
            # a position_ids tensor (any values) makes the package return per-row positions of real tokens
            logits = model(input_ids=ids, attention_mask=mask, position_ids=torch.zeros_like(ids), images=images,
                           image_sizes=sizes).logits[:, -1]
            token = logits.argmax(-1, keepdim=True)
            out.append(token)
            ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
        return torch.cat(out, 1)
    _, positions, mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
        ids, torch.zeros_like(ids), mask, None, None, images, image_sizes=sizes)
    result = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    for step in range(max_new_tokens):
        token = result.logits[:, -1].argmax(-1, keepdim=True)
        out.append(token)
        if step + 1 == max_new_tokens:
            break
        mask = torch.cat([mask, torch.ones_like(token)], 1)
        positions = positions[:, -1:] + 1
        result = model(input_ids=token, attention_mask=mask, position_ids=positions,
                       past_key_values=result.past_key_values, use_cache=True)
    return torch.cat(out, 1)
