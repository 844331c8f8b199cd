"""The original ``llava`` package (PyPI ``llava-torch`` 1.2.2.post1: LLaVA-1.5 / 1.6), as loaded by
its ``llava.model.builder.load_pretrained_model``, on the legacy transformers line.

Facts, read from the installed package (``llava/model/llava_arch.py``,
``llava/model/language_model/llava_llama.py``, ``llava_mistral.py``, ``llava/constants.py``) and
measured on its tiny checkpoints (``sgl_patch/tiny/llava_torch.py``):

- ``LlavaLlamaForCausalLM`` / ``LlavaMistralForCausalLM`` (model types ``llava_llama`` /
  ``llava_mistral``) are transformers' ``LlamaForCausalLM`` / ``MistralForCausalLM`` plus the
  ``LlavaMetaForCausalLM`` mixin; decoder layers at ``model.layers``, attention at ``self_attn``.
- ``input_ids`` hold ``IMAGE_TOKEN_INDEX = -200`` once per image.  ``generate(inputs, images,
  image_sizes, **kwargs)`` (the prompt is its first parameter, ``inputs``) calls
  ``prepare_inputs_labels_for_multimodal`` once, which replaces each sentinel with the image's
  features (LLaVA-1.5: the tower's patches; 1.6 anyres: the base view's patches, then the unpadded
  grid with one ``image_newline`` per row), drops the padding and pads again on
  ``config.tokenizer_padding_side``, and returns ``inputs_embeds`` with no record of where the
  images went; ``generate`` then runs the language model from ``inputs_embeds``.  Decoding steps
  (one token) skip it.
- Where the images went is read from the method itself: given labels that are not
  ``IGNORE_INDEX`` on every text token, it returns ``IGNORE_INDEX`` exactly at the image features
  (and at padding, which the returned attention mask marks).
- The vision tower (``model.get_vision_tower()``, a CLIP model loaded from ``mm_vision_tower``)
  decides the patches per crop; ``image_aspect_ratio``, ``mm_patch_merge_type`` and
  ``image_grid_pinpoints`` decide the crops and the newline slots.
"""

from __future__ import annotations

import torch

from .base import Adapter, chosen_items, items_of_samples, sized
from .layout import WHOLE, TokenGrid, Unplaced, centre_square, covered, padded_square
from .llava_next import canvas_box, unpadded_grid

IMAGE_TOKEN_INDEX = -200  # llava.constants
IGNORE_INDEX = -100


def llava_image_layout(model, size, views: int) -> list | None:
    """Where ``prepare_inputs_labels_for_multimodal`` puts the features of one ``size`` (height,
    width) image of ``views`` views (0: a 4-D ``images``, one view that is never merged).

    ``process_images`` makes the views: ``pad`` pads the image to a square, ``anyres`` adds to a
    squashed base view the crops of the image fitted onto the best grid canvas, anything else is
    CLIP's shortest-edge resize and centre crop.  ``mm_patch_merge_type`` merges them: ``flat``
    concatenates every view's features, ``spatial`` lays the crops out as one map over the canvas,
    ``spatial_unpad`` also cuts the map's padding and ends each row with ``image_newline`` (and a
    single view with one).  None for what the package itself refuses (``spatial`` crops without anyres).
    """
    from llava.mm_utils import get_anyres_image_grid_shape
    from llava.model.llava_arch import unpad_image

    config, tower = model.config, model.get_vision_tower()
    side, crop, patch = tower.num_patches_per_side, tower.config.image_size, tower.config.patch_size
    seen = side * patch / crop   # the share of a view the tower's patches cover
    height, width = size
    merge = getattr(config, "mm_patch_merge_type", "flat")
    aspect = getattr(config, "image_aspect_ratio", "square")
    # the CLS token leads every view's features where it is kept (the spatial merges refuse it)
    cls = [Unplaced(1)] * (getattr(config, "mm_vision_select_feature", "patch") == "cls_patch")
    if views <= 1:
        single = padded_square(height, width) if aspect == "pad" else centre_square(height, width)
        newline = views == 1 and merge.startswith("spatial") and "unpad" in merge
        return cls + [TokenGrid(side, side, covered(single, seen))] + [Unplaced(1)] * newline
    if aspect != "anyres":
        return None
    cols, rows = get_anyres_image_grid_shape((width, height), config.image_grid_pinpoints, crop)
    base = cls + [TokenGrid(side, side, covered(WHOLE, seen))]   # anyres' base view: the whole image squashed

    def crop_box(left, top, right, bottom):
        return canvas_box(height, width, rows * crop, cols * crop, (left, top, right, bottom))

    if merge == "flat":
        return base + [segment for r in range(rows) for c in range(cols) for segment in
                       cls + [TokenGrid(side, side, crop_box(c * crop, r * crop, c * crop + side * patch,
                                                             r * crop + side * patch), view=1)]]
    if "unpad" not in merge:   # one map over the canvas, spaced evenly (a crop's uncovered edge is < 1 patch)
        return base + [TokenGrid(rows * side, cols * side, crop_box(0, 0, (cols - 1) * crop + side * patch,
                                                                      (rows - 1) * crop + side * patch), view=1)]
    return base + [unpadded_grid(unpad_image, (width, height), height, width, rows, cols, side, crop, patch)]


class LlavaTorchAdapter(Adapter):
    def visual_token_ids(self, model) -> list[int]:
        return [IMAGE_TOKEN_INDEX]

    def vision_geometry(self, model) -> dict:
        tower = model.get_vision_tower()
        out = super().vision_geometry(model)
        out.update({"vision_tower.image_size": tower.config.image_size,
                    "vision_tower.patch_size": tower.config.patch_size})
        return out

    def generate_arguments(self, inputs: dict) -> dict:
        # llava's generate names the prompt ``inputs``; ``input_ids=`` would bypass its image splice
        out = dict(inputs)
        if "input_ids" in out:
            out["inputs"] = out.pop("input_ids")
        return out

    def expand_placeholders(self, model, wrapped, args, kwargs):
        """Run ``prepare_inputs_labels_for_multimodal`` and say where the image features went."""
        from ..state import bind_arguments

        call = bind_arguments(wrapped, args, kwargs)
        input_ids = call.get("input_ids")
        if call.get("images") is None or input_ids is None or input_ids.shape[1] == 1:
            return wrapped(*args, **kwargs), None
        if call.get("labels") is not None:
            raise NotImplementedError("sgl_patch cannot follow llava's image splice when labels are given "
                                      "(training forwards); call the model without labels")
        call["labels"] = torch.zeros_like(input_ids)  # any id but IGNORE_INDEX marks a text token
        ids, position_ids, mask, past, embeds, labels = wrapped(**call)
        visual = labels == IGNORE_INDEX
        if mask is not None:
            visual &= mask.bool()
        # ids that mark the visual positions of the expanded sequence (text positions hold 0)
        marked = torch.where(visual, IMAGE_TOKEN_INDEX, 0)
        return (ids, position_ids, mask, past, embeds, None), marked

    def image_token_layout(self, model, inputs, row, image_sizes=None):
        images = inputs.get("images")
        if images is None:
            return None
        ids = inputs["input_ids"]
        owned = items_of_samples((ids == IMAGE_TOKEN_INDEX).sum(1).clamp(min=1), [1] * len(images))[row]
        if not (ids[row] == IMAGE_TOKEN_INDEX).any():
            return []   # the row's entry of ``images`` is consumed, not shown
        sizes = inputs.get("image_sizes")   # llava's are PIL (width, height)
        sizes = [tuple(sizes[i])[::-1] for i in owned] if sizes is not None else sized(image_sizes, len(owned))
        # a list or a 5-D tensor goes through the view-merging path (a 3-D entry is one view); a 4-D
        # tensor is one unmerged view per image
        merged = isinstance(images, list) or images.dim() == 5
        views = [(images[i].shape[0] if images[i].dim() == 4 else 1) if merged else 0 for i in owned]
        return [llava_image_layout(model, size, n) if size else None for size, n in zip(sizes, views)]

    def load_small(self, large, path):
        # the vision tower loads its weights in load_model(), which load_pretrained_model calls
        from llava.mm_utils import get_model_name_from_path
        from llava.model.builder import load_pretrained_model

        device = str(large.device)
        _, model, _, _ = load_pretrained_model(path, None, get_model_name_from_path(path), device_map=device,
                                               device=device)
        return model.to(large.dtype)

    def select_items(self, model, inputs, index, out):
        images = inputs.get("images")
        if images is None:
            return
        # one sentinel per image; a sample without one still takes one entry of ``images``
        per_sample = (inputs["input_ids"] == IMAGE_TOKEN_INDEX).sum(1).clamp(min=1)
        owners = items_of_samples(per_sample, [1] * len(images))
        items = chosen_items(owners, index)
        out["images"] = images[items] if isinstance(images, torch.Tensor) else [images[i] for i in items]
        sizes = inputs.get("image_sizes")
        if sizes is not None:
            out["image_sizes"] = sizes[items] if isinstance(sizes, torch.Tensor) else [sizes[i] for i in items]


ADAPTER = LlavaTorchAdapter(
    family="llava_torch",
    class_names=("LlavaLlamaForCausalLM", "LlavaMistralForCausalLM"),
    # llava-torch's own generate breaks on 4.49 (cache_position); 4.38-4.48 are untested
    transformers=">=4.37.2,<4.38",
    language_model_path="model",
    forward_path="model",
    visual_token_id_attrs=(),
    expands_placeholders=True,
    expansion_method="prepare_inputs_labels_for_multimodal",
    vision_geometry_attrs=("mm_vision_select_feature", "mm_vision_select_layer", "image_aspect_ratio",
                           "mm_patch_merge_type", "image_grid_pinpoints"),
    item_keys=("images", "image_sizes"),
)
