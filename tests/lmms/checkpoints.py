"""Tiny checkpoints that lmms-eval's model wrappers load as they load real ones.

``sgl_patch.tiny`` saves the native families' models only (``TinyFamily.saved_pair``); lmms-eval's
wrappers also load a processor (``AutoProcessor``) and often a tokenizer (``AutoTokenizer``) from the
model directory and render prompts with the processor's chat template.  ``save_processor`` writes
those beside a tiny model:

* a byte-level BPE ``PreTrainedTokenizerFast`` over the tiny models' 512 ids, whose first special
  tokens sit at the ids the tiny configs use (``sgl_patch.tiny.base``: PAD 0, BOS 1, EOS 2, vision
  start 3, vision end 4, image 5, video 6), named as the family's real tokenizer names them;
* the family's image (and video) processor with the tiny vision geometry, so a picture becomes as
  many placeholders as the tiny model has visual tokens for it;
* a chat template of the family's shape (ChatML for Qwen2-VL / OneVision / InternVL, USER/ASSISTANT
  for LLaVA-1.5), written here.

``saved(family, root)`` is the pair lmms-eval runs on: ``(small, large)`` directories with model,
processor and tokenizer.  Qwen2-VL's tokenizer is saved with ``padding_side="right"``, as the real
Qwen2-VL checkpoints have it (lmms-eval's ``qwen2_vl`` wrapper batches with the saved side).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from sgl_patch import tiny
from sgl_patch.tiny import base

# ids 0..7 by family; ids 0..6 are the tiny configs' (PAD, BOS, EOS, VISION_START, VISION_END, IMAGE, VIDEO)
CHATML = ["<|endoftext|>", "<|bos|>", "<|im_end|>"]
SPECIALS = {
    "qwen2_vl": CHATML + ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|im_start|>"],
    "llava": ["<pad>", "<s>", "</s>", "<unk>", "<unused>", "<image>", "<video>", "<unused2>"],
    "llava_onevision": CHATML + ["<|vision_start|>", "<|vision_end|>", "<image>", "<video>", "<|im_start|>"],
    "internvl": CHATML + ["<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<|im_start|>"],
}
SPECIALS["qwen2_5_vl"] = SPECIALS["qwen2_vl"]
assert all(len(s) == 8 for s in SPECIALS.values())

# ChatML as the Qwen2-VL / OneVision / InternVL chat templates lay it out; ``IMAGE`` is the family's
# image text (the processor expands it into the visual placeholders)
_CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}IMAGE"
    "{% elif part['type'] == 'video' or 'video' in part %}VIDEO"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_USER_ASSISTANT = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
CHAT_TEMPLATES = {
    "qwen2_vl": _CHATML.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>")
                       .replace("VIDEO", "<|vision_start|><|video_pad|><|vision_end|>"),
    "llava": _USER_ASSISTANT,
    "llava_onevision": _CHATML.replace("IMAGE", "<image>\n").replace("VIDEO", "<video>\n"),
    "internvl": _CHATML.replace("IMAGE", "<IMG_CONTEXT>\n").replace("VIDEO", "<video>\n"),
}
CHAT_TEMPLATES["qwen2_5_vl"] = CHAT_TEMPLATES["qwen2_vl"]

_WORDS = ("the a an is are what which how many colour color red green blue yellow square circle triangle "
          "picture image photo answer question single word phrase left right above below small large yes no "
          "system user assistant helpful you describe there shape one two three four").split()


def _corpus(seed: int = 0, lines: int = 400):
    """Fixed text the BPE merges are learnt from: prompt words and seeded pseudo-words (plenty of pairs)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(lines):
        words = [rng.choice(_WORDS) if rng.random() < 0.6
                 else "".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(12)]
        yield " ".join(words) + rng.choice([".", "?", "!", ","])


def build_tokenizer(family: str, padding_side: str = "left"):
    """A byte-level BPE tokenizer of exactly ``tiny.VOCAB`` ids with ``family``'s special tokens first."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=base.VOCAB, special_tokens=[AddedToken(s, special=True) for s in specials],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    assert tok.get_vocab_size() == base.VOCAB, tok.get_vocab_size()
    assert [tok.token_to_id(s) for s in specials] == list(range(len(specials)))
    llava = family == "llava"
    if llava:  # LLaVA-1.5's Llama tokenizer adds BOS
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", base.BOS)])
    kwargs = dict(pad_token=specials[base.PAD], eos_token=specials[base.EOS])
    if llava:
        kwargs.update(bos_token="<s>", unk_token="<unk>")
    if family == "internvl":  # what InternVLProcessor reads from the tokenizer
        kwargs["extra_special_tokens"] = {"start_image_token": "<img>", "end_image_token": "</img>",
                                          "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
    elif family in ("llava", "llava_onevision"):
        kwargs["extra_special_tokens"] = {"image_token": "<image>", "video_token": "<video>"}
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side=padding_side, model_max_length=4096,
                                   chat_template=CHAT_TEMPLATES[family], **kwargs)


def build_processor(family: str, padding_side: str = "left"):
    """``family``'s processor over the tiny vision geometry (``sgl_patch.tiny``'s constants)."""
    tokenizer = build_tokenizer(family, padding_side)
    template = CHAT_TEMPLATES[family]
    if family in ("qwen2_vl", "qwen2_5_vl"):
        from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

        from sgl_patch.tiny import qwen2_vl as q

        geometry = dict(patch_size=q.PATCH, temporal_patch_size=q.TEMPORAL_PATCH, merge_size=q.MERGE)
        size = {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}
        return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(size=size, **geometry),
                                video_processor=Qwen2VLVideoProcessor(size=size, **geometry),
                                tokenizer=tokenizer, chat_template=template)
    if family == "llava":
        from transformers import CLIPImageProcessor, LlavaProcessor

        from sgl_patch.tiny import llava as l

        image = CLIPImageProcessor(size={"shortest_edge": l.IMAGE_SIZE},
                                   crop_size={"height": l.IMAGE_SIZE, "width": l.IMAGE_SIZE})
        return LlavaProcessor(image_processor=image, tokenizer=tokenizer, patch_size=l.PATCH,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=template)
    if family == "llava_onevision":
        from transformers import (LlavaOnevisionImageProcessor, LlavaOnevisionProcessor,
                                  LlavaOnevisionVideoProcessor)

        from sgl_patch.tiny import llava_next as n

        crop = {"height": n.CROP, "width": n.CROP}
        image = LlavaOnevisionImageProcessor(size=crop, image_grid_pinpoints=n.ONEVISION_PINPOINTS)
        return LlavaOnevisionProcessor(image_processor=image, video_processor=LlavaOnevisionVideoProcessor(size=crop),
                                       tokenizer=tokenizer, num_image_tokens=(n.CROP // n.PATCH) ** 2,
                                       vision_feature_select_strategy="full", vision_aspect_ratio=n.ONEVISION_ASPECT,
                                       chat_template=template)
    if family == "internvl":
        from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

        from sgl_patch.tiny import internvl as i

        tile = {"height": i.TILE, "width": i.TILE}
        image = GotOcr2ImageProcessor(size=tile, crop_to_patches=True, min_patches=1, max_patches=4)
        return InternVLProcessor(image_processor=image, video_processor=InternVLVideoProcessor(size=tile),
                                 tokenizer=tokenizer, image_seq_length=i.InternVLFamily.tokens_per_tile(),
                                 chat_template=template)
    raise ValueError(f"no lmms-eval processor for family {family!r}; choose one of {', '.join(SPECIALS)}")


def save_processor(family: str, directory, padding_side: str | None = None) -> None:
    """Write ``family``'s processor and tokenizer into a saved tiny model's ``directory``."""
    side = padding_side or ("right" if family == "qwen2_vl" else "left")
    processor = build_processor(family, side)
    processor.save_pretrained(directory)
    processor.tokenizer.save_pretrained(directory)


def saved(family: str, root) -> tuple[str, str]:
    """``(small, large)`` tiny checkpoints of ``family`` under ``root`` with processors, as lmms-eval loads them."""
    root = Path(root)
    small, large = tiny.family(family).saved_pair(root)
    for directory in (small, large):
        save_processor(family, directory)
    return os.fspath(small), os.fspath(large)


def saved_mismatched_small(family: str, root) -> str:
    """A small ``family`` checkpoint whose vision geometry gives other visual-token counts
    (``TinyFamily.mismatched_config``): a pair ``sgl_patch.apply`` refuses."""
    kit = tiny.family(family)
    directory = os.fspath(Path(root) / "mismatched-small")
    kit.model(config=kit.mismatched_config()).save_pretrained(directory)
    save_processor(family, directory)
    return directory

