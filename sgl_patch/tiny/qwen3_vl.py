"""Tiny Qwen3-VL and Qwen3-VL-MoE models: Qwen2-VL's patch grids, interleaved M-RoPE, DeepStack.

Facts from transformers 5.23 (``models/qwen3_vl/``, ``models/qwen3_vl_moe/``):

* ``Qwen3VLTextConfig`` takes ``head_dim`` and ``rope_parameters`` whose ``mrope_section``
  (temporal, height, width) sums to ``head_dim / 2``; ``Qwen3VLTextRotaryEmbedding`` interleaves
  the sections (real checkpoints also say ``mrope_interleaved: true``).
* ``Qwen3VLVisionConfig.deepstack_visual_indexes`` names vision blocks whose merged features are
  added to the text hidden states after decoder layers ``0 .. len(indexes) - 1``.  Here every
  vision block feeds DeepStack, so it covers decoder layers 0-2 and pruning at K = 0, 1 or 2 has
  to follow it (the suite prunes at those).  ``num_position_embeddings`` must be a square (a
  learned grid, resampled to each image).
* Images are laid out as in Qwen2-VL, so ``qwen2_vl_inputs_for_config`` builds them.  A video is
  not: ``Qwen3VLProcessor.replace_video_token`` writes per frame a timestamp ("<0.5 seconds>",
  plain text) and ``<vision_start> frame tokens <vision_end>``, and ``get_rope_index`` consumes
  one ``[1, h, w]`` grid per such span (``video_grid_thw`` itself stays ``[t, h, w]`` per video).
"""

from __future__ import annotations

import torch

from .base import (BOS, FIRST_TEXT_ID, IMAGE, PAD, SMALL, VIDEO, VIDEO_TYPE, VISION_END, VISION_START, VOCAB,
                   TinySize, text_config)
from .qwen2_vl import MERGE, PATCH, TEMPORAL_PATCH, Qwen2VLFamily, qwen2_vl_inputs_for_config

DEEPSTACK_LAYERS = 3   # vision blocks, each feeding DeepStack: decoder layers 0, 1, 2 get visual features
POSITION_GRID = 4      # learned vision position grid is POSITION_GRID x POSITION_GRID
FRAMES = 2             # a video sample has two temporal patches (frames after temporal merging)
TIMESTAMP_TOKENS = 2   # text tokens of a frame's "<t seconds>"
EXPERTS, EXPERTS_PER_TOKEN = 4, 2


def qwen3_vl_config(size: TinySize = SMALL, family: str = "qwen3_vl"):
    """A Qwen3-VL (or Qwen3-VL-MoE, ``family="qwen3_vl_moe"``) config with tiny dimensions."""
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    head_dim = size.hidden // size.heads
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = text_config(size, head_dim=head_dim, rope_parameters={
        "rope_type": "default", "rope_theta": 1e4, "mrope_section": mrope, "mrope_interleaved": True})
    vision = dict(
        depth=DEEPSTACK_LAYERS, hidden_size=size.vision_dim, intermediate_size=2 * size.vision_dim,
        num_heads=size.vision_heads, out_hidden_size=size.hidden, patch_size=PATCH, spatial_merge_size=MERGE,
        temporal_patch_size=TEMPORAL_PATCH, num_position_embeddings=POSITION_GRID ** 2,
        deepstack_visual_indexes=list(range(DEEPSTACK_LAYERS)),
    )
    if family == "qwen3_vl_moe":
        # every decoder layer sparse (decoder_sparse_step=1), a few tiny experts
        text.update(num_experts=EXPERTS, num_experts_per_tok=EXPERTS_PER_TOKEN,
                    moe_intermediate_size=size.hidden // 2, decoder_sparse_step=1)
        cls = Qwen3VLMoeConfig
    else:
        cls = Qwen3VLConfig
    return cls(text_config=text, vision_config=vision, image_token_id=IMAGE, video_token_id=VIDEO,
               vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)


def qwen3_vl_video_inputs(config, videos, prompt_lengths=None, *, seed: int = 0, padding_side: str = "left"):
    """A processed batch of videos for a Qwen3-VL config, in the processor's per-frame layout.

    ``videos``: per sample one ``(h, w)`` in patches (a video of ``FRAMES`` frames, ``h * w /
    spatial_merge_size**2`` tokens each), a list of them, or ``None`` for a text-only sample.
    Each frame becomes ``<timestamp text> <vision_start> frame tokens <vision_end>``.
    """
    vision = config.vision_config
    merge, patch, temporal = vision.spatial_merge_size, vision.patch_size, vision.temporal_patch_size
    gen = torch.Generator().manual_seed(seed)

    def text(n):
        return torch.randint(FIRST_TEXT_ID, VOCAB, (n,), generator=gen).tolist()

    prompt_lengths = prompt_lengths or [6] * len(videos)
    rows, types, pixels, grids = [], [], [], []
    for sample, n_text in zip(videos, prompt_lengths):
        ids = [BOS] + text(3)
        kinds = [0] * len(ids)
        for h, w in [] if sample is None else [sample] if isinstance(sample[0], int) else list(sample):
            if h % merge or w % merge:
                raise ValueError(f"video sides {(h, w)} must be multiples of spatial_merge_size={merge}")
            per_frame = h * w // (merge * merge)
            for _ in range(FRAMES):
                ids += text(TIMESTAMP_TOKENS) + [VISION_START] + [VIDEO] * per_frame + [VISION_END]
                kinds += [0] * (TIMESTAMP_TOKENS + 1) + [VIDEO_TYPE] * per_frame + [0]
            grids.append([FRAMES, h, w])
            pixels.append(torch.randn(FRAMES * h * w, vision.in_channels * temporal * patch * patch, generator=gen))
        ids += text(n_text)
        kinds += [0] * n_text
        rows.append(ids)
        types.append(kinds)
    length = max(len(r) for r in rows)
    batch = {key: torch.full((len(rows), length), fill, dtype=torch.long)
             for key, fill in (("input_ids", PAD), ("attention_mask", 0), ("mm_token_type_ids", 0))}
    for i, (row, kinds) in enumerate(zip(rows, types)):
        span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
        batch["input_ids"][i, span] = torch.tensor(row)
        batch["attention_mask"][i, span] = 1
        batch["mm_token_type_ids"][i, span] = torch.tensor(kinds)
    if pixels:
        batch["pixel_values_videos"] = torch.cat(pixels)
        batch["video_grid_thw"] = torch.tensor(grids)
    return batch


class Qwen3VLFamily(Qwen2VLFamily):
    """Samples as for Qwen2-VL: per sample one ``(h, w)`` in patches (``h * w / 4`` tokens) or a list;
    ``video=True`` makes each a ``FRAMES``-frame video (``FRAMES * h * w / 4`` tokens)."""

    # one, mixed, multi, video, describe, demo_samples and mismatched_config (spatial_merge_size=1)
    # are Qwen2-VL's: the same grids give the same token counts

    def config(self, size: TinySize = SMALL):
        return qwen3_vl_config(size, self.name)

    def inputs(self, samples, prompt_lengths=None, *, seed: int = 0, padding_side: str = "left",
               video: bool = False) -> dict:
        if video:
            return qwen3_vl_video_inputs(self.config(), samples, prompt_lengths, seed=seed,
                                         padding_side=padding_side)
        return qwen2_vl_inputs_for_config(self.config(), samples, prompt_lengths, seed=seed,
                                          padding_side=padding_side)


FAMILIES = {
    "qwen3_vl": Qwen3VLFamily("qwen3_vl", "Qwen3VLForConditionalGeneration"),
    "qwen3_vl_moe": Qwen3VLFamily("qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration"),
}
