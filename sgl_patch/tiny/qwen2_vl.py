"""Tiny Qwen2-VL and Qwen2.5-VL models (one image or video is a grid of patches, 2x2 merged)."""

from __future__ import annotations

import math

import torch

from .base import (BOS, EOS, FIRST_TEXT_ID, IMAGE, PAD, SMALL, VIDEO, VISION_END, VISION_START,
                   TinyFamily, TinySize, text_config)

PATCH = 2           # vision patch size in pixels (tiny, so pixel_values stay small)
TEMPORAL_PATCH = 2
MERGE = 2           # spatial merge: 2x2 patches -> one visual token


def qwen2_vl_config(size: TinySize = SMALL, family: str = "qwen2_vl"):
    """A Qwen2-VL (or Qwen2.5-VL, ``family="qwen2_5_vl"``) config with tiny dimensions."""
    from transformers import Qwen2VLConfig, Qwen2_5_VLConfig

    head_dim = size.hidden // size.heads
    half = head_dim // 2
    # M-RoPE sections (temporal, height, width) must sum to head_dim / 2.
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = text_config(size, rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": mrope})
    vision = dict(
        depth=size.vision_depth, embed_dim=size.vision_dim, hidden_size=size.hidden,
        num_heads=size.vision_heads, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL_PATCH,
    )
    if family == "qwen2_5_vl":
        vision.update(intermediate_size=size.vision_dim * 2, out_hidden_size=size.hidden,
                      window_size=2 * PATCH * MERGE, fullatt_block_indexes=[0])
        vision.pop("embed_dim"); vision["hidden_size"] = size.vision_dim
        cls = Qwen2_5_VLConfig
    else:
        cls = Qwen2VLConfig
    return cls(
        text_config=text, vision_config=vision, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )


def qwen2_vl_model(size: TinySize = SMALL, family: str = "qwen2_vl", seed: int = 0,
                   attn_implementation: str = "sdpa"):
    """A tiny random Qwen2-VL / Qwen2.5-VL model in eval mode, float32, on CPU."""
    return FAMILIES[family].model(size, seed=seed, attn_implementation=attn_implementation)


def qwen2_vl_inputs(image_sides, prompt_lengths=None, *, seed: int = 0, video: bool = False,
                    padding_side: str = "left"):
    """A processed batch for a Qwen2-VL tiny model, as its processor would return it.

    ``image_sides`` gives one image per sample as (height, width) in visual tokens before merging
    is applied, i.e. ``(h, w)`` -> ``h * w / 4`` visual tokens; ``None`` makes a text-only sample.
    Samples are padded to one length on ``padding_side``.
    """
    return qwen2_vl_inputs_for_config(qwen2_vl_config(), image_sides, prompt_lengths, seed=seed,
                                      video=video, padding_side=padding_side)


def qwen2_vl_inputs_for_config(config, image_sides, prompt_lengths=None, *, seed: int = 0,
                               video: bool = False, padding_side: str = "left"):
    """``qwen2_vl_inputs`` for any Qwen2-VL / Qwen2.5-VL config, e.g. of a real checkpoint.

    Token ids (image, video, vision start/end, bos, pad), the vocabulary size and the vision
    geometry (``patch_size``, ``temporal_patch_size``, ``spatial_merge_size``, input channels) are
    read from ``config`` instead of this module's constants.  ``image_sides`` are in patches, as
    for ``qwen2_vl_inputs``: ``(h, w)`` gives ``h * w / spatial_merge_size**2`` visual tokens, so
    both must be multiples of ``spatial_merge_size``.  Text ids are drawn below the lowest special
    id at or above ``FIRST_TEXT_ID``, so random text never collides with a special token.  For the
    tiny configs of this module it returns exactly what ``qwen2_vl_inputs`` returns.
    """
    text_config = getattr(config, "text_config", None) or config
    vision = config.vision_config

    def token_id(name):
        # vision ids live on the VLM config; text ids (bos, eos, pad) on its text config
        sources = (config, text_config) if name.startswith(("image", "video", "vision")) else (text_config, config)
        for source in sources:
            value = getattr(source, name, None)
            if value is not None:
                return value[0] if isinstance(value, (list, tuple)) else int(value)
        return None

    image_id, video_id = token_id("image_token_id"), token_id("video_token_id")
    start_id, end_id = token_id("vision_start_token_id"), token_id("vision_end_token_id")
    bos = token_id("bos_token_id")
    pad = token_id("pad_token_id")
    if pad is None:
        pad = token_id("eos_token_id") or 0
    vocab = getattr(text_config, "vocab_size", None) or config.vocab_size
    patch = vision.patch_size
    temporal = vision.temporal_patch_size
    merge = vision.spatial_merge_size
    channels = getattr(vision, "in_channels", None) or getattr(vision, "in_chans", None) or 3
    special = {i for i in (image_id, video_id, start_id, end_id, bos, pad, token_id("eos_token_id")) if i is not None}
    text_high = min([i for i in special if i >= FIRST_TEXT_ID] + [vocab])

    gen = torch.Generator().manual_seed(seed)
    prompt_lengths = prompt_lengths or [6] * len(image_sides)
    rows, types, pixels, grids = [], [], [], []
    key = "pixel_values_videos" if video else "pixel_values"
    grid_key = "video_grid_thw" if video else "image_grid_thw"
    token = video_id if video else image_id
    for sides, n_text in zip(image_sides, prompt_lengths):
        sys_prompt = torch.randint(FIRST_TEXT_ID, text_high, (3,), generator=gen).tolist()
        question = torch.randint(FIRST_TEXT_ID, text_high, (n_text,), generator=gen).tolist()
        row_ids = ([bos] if bos is not None else []) + sys_prompt
        kind = [0] * len(row_ids)
        # one (h, w) image per sample, or a list of them (several images / tiles)
        images = [] if sides is None else [sides] if isinstance(sides[0], int) else list(sides)
        for h, w in images:
            if h % merge or w % merge:
                raise ValueError(f"image sides {(h, w)} must be multiples of spatial_merge_size={merge}")
            t = 2 if video else 1
            n_visual = t * h * w // (merge * merge)
            row_ids += [start_id] + [token] * n_visual + [end_id]
            kind += [0] + [2 if video else 1] * n_visual + [0]
            grids.append([t, h, w])
            pixels.append(torch.randn(t * h * w, channels * temporal * patch * patch, generator=gen))
        row_ids += question
        kind += [0] * len(question)
        rows.append(row_ids)
        types.append(kind)
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    mm_types = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (row, kind) in enumerate(zip(rows, types)):
        span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
        mm_types[i, span] = torch.tensor(kind)
    batch = {"input_ids": input_ids, "attention_mask": mask, "mm_token_type_ids": mm_types}
    if pixels:
        batch[key] = torch.cat(pixels)
        batch[grid_key] = torch.tensor(grids)
    return batch


class Qwen2VLFamily(TinyFamily):
    """``inputs`` takes per sample one ``(h, w)`` in patches (``h * w / 4`` tokens) or a list of them."""

    one = (8, 12)                        # 24 visual tokens
    mixed = [(8, 8), (4, 8), (8, 12)]    # 16, 8 and 24
    multi = [[(4, 4), (4, 8)], [(8, 8)]]  # two images (4 + 8 tokens), one image (16)
    video = [(4, 4), (4, 8)]             # two frames each: 8 and 16 tokens
    token_aligned_keys = ("mm_token_type_ids",)

    def __init__(self, name: str, class_name: str):
        self.name, self.class_name = name, class_name

    def config(self, size: TinySize = SMALL):
        return qwen2_vl_config(size, self.name)

    def inputs(self, samples, prompt_lengths=None, *, seed: int = 0, padding_side: str = "left",
               video: bool = False) -> dict:
        return qwen2_vl_inputs_for_config(self.config(), samples, prompt_lengths, seed=seed, video=video,
                                          padding_side=padding_side)

    def describe(self, sample) -> str:
        if sample is None:
            return "text only"
        images = [sample] if isinstance(sample[0], int) else sample
        return " + ".join(f"{h}x{w}" for h, w in images)

    def demo_samples(self) -> list:
        return [(16, 16), (12, 16), (8, 8), (16, 8), None]

    def tiled_sample(self, tiles: int, tile_tokens: int):
        """``tiles`` square images of exactly ``tile_tokens`` tokens each: 16 -> 8 x 8 patches, 256 -> 32 x 32."""
        side = math.isqrt(tile_tokens)
        if side * side != tile_tokens:
            raise ValueError(f"a Qwen2-VL tile is a square of merged patches: {tile_tokens} tokens is not a square")
        return [(side * MERGE, side * MERGE)] * tiles

    def mismatched_config(self, size: TinySize = SMALL):
        config = self.config(size)
        config.vision_config.spatial_merge_size = 1  # 4x the tokens for the same pixels
        return config


FAMILIES = {
    "qwen2_vl": Qwen2VLFamily("qwen2_vl", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": Qwen2VLFamily("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
}
