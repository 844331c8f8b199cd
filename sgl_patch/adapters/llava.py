"""LLaVA-1.5 (native ``LlavaForConditionalGeneration``).

Each ``<image>`` placeholder is expanded by the processor into a fixed number of image tokens
(``(image_size / patch_size) ** 2``, plus one with the "full" feature strategy); the images of a
batch are stacked in ``pixel_values`` in prompt order.
"""

from __future__ import annotations

from .base import Adapter, chosen_items, items_of_samples
from .layout import WHOLE, TokenGrid, Unplaced, centre_square


def _grid_side(config) -> int:
    """Patches along each side of an image (the tower's fixed input size)."""
    return config.vision_config.image_size // config.vision_config.patch_size


class LlavaAdapter(Adapter):
    def image_token_layout(self, model, inputs, row, image_sizes=None):
        config = model.config
        side = _grid_side(config)
        cls = config.vision_feature_select_strategy == "full"   # the CLS token leads each image's tokens
        images = int((inputs["input_ids"][row] == config.image_token_index).sum()) // (side * side + cls)
        sizes = image_sizes or [None] * images
        # llava-1.5-hf's CLIP processor: shortest edge resized, then the centre square cropped
        return [[Unplaced(1)] * cls + [TokenGrid(side, side, centre_square(*size) if size else WHOLE)]
                for size in sizes]

    def select_items(self, model, inputs, index, out):
        pixels = inputs.get("pixel_values")
        if pixels is None:
            return
        config = model.config
        per_image = _grid_side(config) ** 2 + (config.vision_feature_select_strategy == "full")
        tokens = (inputs["input_ids"] == config.image_token_index).sum(1)
        items = chosen_items(items_of_samples(tokens, [per_image] * pixels.shape[0]), index)
        if items:
            out["pixel_values"] = pixels[items]


ADAPTER = LlavaAdapter(
    family="llava",
    class_names=("LlavaForConditionalGeneration",),
    language_model_path="model.language_model",
    visual_token_id_attrs=("image_token_index",),
    transformers=">=5.0,<6",  # native class; facts checked on transformers 5.23
    vision_geometry_attrs=("vision_config.image_size", "vision_config.patch_size",
                           "vision_feature_select_strategy"),
    item_keys=("pixel_values",),
)
