"""Qwen2-VL and Qwen2.5-VL (native transformers classes).

Visual tokens are ``image_token_id`` / ``video_token_id`` placeholders in ``input_ids``.  The
processor flattens every image's patches into one ``pixel_values`` tensor (``prod(grid_thw)``
rows per image) and each image becomes ``prod(grid_thw) / spatial_merge_size**2`` tokens, so
splitting a batch into samples walks the images in order.
"""

from __future__ import annotations

import torch

from .base import Adapter, chosen_items, items_of_samples, take_spans
from .layout import TokenGrid

# per modality: (placeholder id attribute, patches key, grid key, other per-item keys)
_MODALITIES = (
    ("image_token_id", "pixel_values", "image_grid_thw", ()),
    ("video_token_id", "pixel_values_videos", "video_grid_thw", ("second_per_grid_ts",)),
)


class Qwen2VLAdapter(Adapter):
    def select_items(self, model, inputs, index, out):
        merge = model.config.vision_config.spatial_merge_size ** 2
        for token_attr, patches_key, grid_key, extra_keys in _MODALITIES:
            grid = inputs.get(grid_key)
            if grid is None:
                continue
            patches_per_item = grid.prod(-1).tolist()
            tokens = (inputs["input_ids"] == getattr(model.config, token_attr)).sum(1)
            items = chosen_items(items_of_samples(tokens, [n // merge for n in patches_per_item]), index)
            if not items:  # generate() rejects pixel keys that are present but None
                continue
            if inputs.get(patches_key) is not None:
                out[patches_key] = take_spans(inputs[patches_key], patches_per_item, items)
            out[grid_key] = grid[items]
            for key in extra_keys:
                if inputs.get(key) is not None:
                    out[key] = inputs[key][items]

    def image_token_layout(self, model, inputs, row, image_sizes=None):
        grid = inputs.get("image_grid_thw")
        if grid is None or inputs.get("video_grid_thw") is not None:
            return None  # frames of videos interleave with images in the token order: images only
        merge = model.config.vision_config.spatial_merge_size
        per_item = [t * h * w // merge ** 2 for t, h, w in grid.tolist()]
        tokens = (inputs["input_ids"] == model.config.image_token_id).sum(1)
        items = items_of_samples(tokens, per_item)[row]
        # the processor resizes the whole image (no crop, no padding) to the grid's size
        return [[TokenGrid(int(grid[i, 1]) // merge, int(grid[i, 2]) // merge)] for i in items]


ADAPTER = Qwen2VLAdapter(
    family="qwen2_vl",
    class_names=("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
    language_model_path="model.language_model",
    visual_token_id_attrs=("image_token_id", "video_token_id"),
    transformers=">=5.0,<6",  # native class; facts checked on transformers 5.23
    token_aligned_keys=("mm_token_type_ids",),
    item_keys=tuple(k for m in _MODALITIES for k in (m[1], m[2], *m[3])),
    vision_geometry_attrs=("vision_config.patch_size", "vision_config.spatial_merge_size",
                           "vision_config.temporal_patch_size"),
)
