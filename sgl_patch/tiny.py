"""Tiny random models of each supported family, built from configs on CPU in milliseconds.

They carry the real classes and the real loading paths (``save_pretrained`` / ``from_pretrained``),
so the demo and the tests exercise exactly what users run, only smaller.  Token ids follow one
small shared vocabulary so that a "small" and a "large" tiny model can guide each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

VOCAB = 512
PAD, BOS, EOS = 0, 1, 2
VISION_START, VISION_END, IMAGE, VIDEO = 3, 4, 5, 6
FIRST_TEXT_ID = 10  # ids below are special

PATCH = 2           # vision patch size in pixels (tiny, so pixel_values stay small)
TEMPORAL_PATCH = 2
MERGE = 2           # spatial merge: 2x2 patches -> one visual token


@dataclass(frozen=True)
class TinySize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    vision_depth: int = 1
    vision_dim: int = 16
    vision_heads: int = 2
    intermediate: int | None = None  # default: 2 x hidden


SMALL = TinySize(hidden=64, layers=4, heads=4, kv_heads=2)
LARGE = TinySize(hidden=96, layers=6, heads=6, kv_heads=2)


def qwen2_vl_config(size: TinySize = SMALL, family: str = "qwen2_vl"):
    """A Qwen2-VL (or Qwen2.5-VL, ``family="qwen2_5_vl"``) config with tiny dimensions."""
    from transformers import Qwen2VLConfig, Qwen2_5_VLConfig

    head_dim = size.hidden // size.heads
    half = head_dim // 2
    # M-RoPE sections (temporal, height, width) must sum to head_dim / 2.
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = dict(
        vocab_size=VOCAB, hidden_size=size.hidden, intermediate_size=size.intermediate or size.hidden * 2,
        num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": mrope},
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )
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
    from transformers import Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

    cls = Qwen2_5_VLForConditionalGeneration if family == "qwen2_5_vl" else Qwen2VLForConditionalGeneration
    torch.manual_seed(seed)
    model = cls._from_config(qwen2_vl_config(size, family), attn_implementation=attn_implementation)
    # Random init gives near-uniform next-token distributions; a larger lm_head spread makes
    # greedy answers and early-exit scores meaningful instead of coin flips.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    model.generation_config.do_sample = False
    # like real checkpoints, never emit vision placeholders as answer text
    model.generation_config.suppress_tokens = [VISION_START, VISION_END, IMAGE, VIDEO]
    return model.eval()


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
