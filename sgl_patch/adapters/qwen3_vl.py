"""Qwen3-VL and Qwen3-VL-MoE (native transformers classes).

Facts from transformers 5.23, ``models/qwen3_vl/modeling_qwen3_vl.py`` and
``models/qwen3_vl_moe/modeling_qwen3_vl_moe.py``:

* Pixels arrive as in Qwen2-VL: every image's / video's patches flattened into one
  ``pixel_values`` / ``pixel_values_videos`` tensor, ``prod(grid_thw)`` rows per item, each item
  ``prod(grid_thw) / spatial_merge_size**2`` placeholder tokens (``Qwen3VLModel.get_image_features``
  splits by exactly that), so the Qwen2-VL adapter's batch splitting applies unchanged.  A video's
  tokens are split into one span per frame with timestamp text between them
  (``processing_qwen3_vl.py``, ``replace_video_token``); the count per video is the same.
* The interleaved M-RoPE is recombined inside ``Qwen3VLTextRotaryEmbedding``, so decoder layers
  receive ordinary per-token ``(cos, sin)`` that the core gathers like any other.
* DeepStack: ``Qwen3VLTextModel.forward`` calls ``self._deepstack_process(hidden_states,
  visual_pos_masks, visual_embeds)`` after each of the first ``len(deepstack_visual_embeds)``
  decoder layers of a prefill, adding one row of ``visual_embeds`` per True position of the
  ``[batch, seq]`` mask, in ``mask.nonzero()`` order.  Named here as a masked addition so that
  the core remaps mask and rows when layers >= K see only the kept tokens.
* The text configs have no sliding-window or other non-full-attention layers (no
  ``layer_types``; ``Qwen3VLMoeTextConfig`` sets ``sliding_window = None``; real checkpoints such
  as Qwen3-VL-4B-Instruct carry none either).
"""

from __future__ import annotations

from .base import MaskedAddition
from .qwen2_vl import Qwen2VLAdapter

ADAPTER = Qwen2VLAdapter(
    family="qwen3_vl",
    class_names=("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration"),
    language_model_path="model.language_model",
    visual_token_id_attrs=("image_token_id", "video_token_id"),
    transformers=">=5.0,<6",  # native class; facts checked on transformers 5.23
    # required by get_rope_index whenever grids are given (without it generate silently falls back
    # to text positions); zero for text appended after the prompt
    token_aligned_keys=("mm_token_type_ids",),
    item_keys=("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"),
    # Qwen3VLVisionConfig / Qwen3VLMoeVisionConfig
    vision_geometry_attrs=("vision_config.patch_size", "vision_config.spatial_merge_size",
                           "vision_config.temporal_patch_size"),
    masked_additions=(MaskedAddition("_deepstack_process", mask="visual_pos_masks", values="visual_embeds"),),
)
