"""LLaVA-1.5 (native ``LlavaForConditionalGeneration``).

Each ``<image>`` placeholder is expanded by the processor into a fixed number of image tokens
(``(image_size / patch_size) ** 2``, plus CLIP's CLS token with the "full" feature strategy); the images of a
batch are stacked in ``pixel_values`` in prompt order.
"""

from __future__ import annotations

from .base import Adapter, chosen_items, items_of_samples, sized
from .layout import WHOLE, TokenGrid, Unplaced, centre_square


def _grid_side(config) -> int:
    """Patches along each side of an image (the tower's fixed input size)."""
    return config.vision_config.image_size // config.vision_config.patch_size


def _is_clip(config) -> bool:
    return config.vision_config.model_type.startswith("clip")


def _has_cls(config) -> bool:
    """Whether each image's tokens start with the tower's CLS token: a CLIP tower under the "full"
    strategy (SigLIP towers have none; "default" drops it)."""
    return _is_clip(config) and config.vision_feature_select_strategy == "full"


class LlavaAdapter(Adapter):
    def image_token_layout(self, model, inputs, row, image_sizes=None):
        config = model.config
        side, cls = _grid_side(config), _has_cls(config)
        tokens = int((inputs["input_ids"][row] == config.image_token_index).sum())
        if tokens % (side * side + cls):
            return None
        # llava-1.5-hf's CLIP processor resizes the shortest edge and crops the centre square;
        # SigLIP's (llava-interleave) squashes the whole image
        return [None if size is None else
                [Unplaced(1)] * cls + [TokenGrid(side, side, centre_square(*size) if _is_clip(config) else WHOLE)]
                for size in sized(image_sizes, tokens // (side * side + cls))]

    def select_items(self, model, inputs, index, out):
        pixels = inputs.get("pixel_values")
        if pixels is None:
            return
        config = model.config
        per_image = _grid_side(config) ** 2 + _has_cls(config)
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
