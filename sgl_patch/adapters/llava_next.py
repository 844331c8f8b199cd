"""LLaVA-NeXT / LLaVA-1.6 (native ``LlavaNextForConditionalGeneration``): "anyres" images.

Facts, read from transformers 5.23 ``models/llava_next/``:

- ``configuration_llava_next.py``: the placeholder id is ``image_token_index`` (``image_token_id`` is
  an ``attribute_map`` alias of it); ``image_grid_pinpoints`` lists the (height, width) resolutions
  an image may be resized and padded to before it is cut into crops of the vision ``image_size``.
- ``modeling_llava_next.py``, ``LlavaNextModel.get_image_features``: ``pixel_values`` is
  ``[n_images, max_crops, 3, H, W]`` zero-padded (or the crops concatenated, 4-D); image ``i`` uses its
  first ``image_size_to_num_patches(image_sizes[i], image_grid_pinpoints, vision image_size)`` crops:
  one base view of the whole image plus the anyres grid.  The images of a batch are stacked in prompt
  order, sample after sample.
- ``LlavaNextModel.pack_image_features``: every crop gives ``side**2`` features
  (``side = image_size // patch_size``; the "default" strategy drops CLIP's CLS token, and anything but
  ``side**2`` per crop cannot be reshaped into the grid).  The grid ``get_anyres_image_grid_shape``
  (rows, cols of crops) becomes a ``rows*side x cols*side`` feature map, ``unpad_image`` cuts the rows or
  columns the image processor had padded, and every remaining feature row ends with one
  ``image_newline`` embedding.  So an image is ``side**2 + h * (w + 1)`` placeholders, ``(h, w)`` the
  unpadded map.  ``processing_llava_next.py`` (``_get_number_of_features``) writes the same count of
  ``<image>`` tokens, newline slots included.
- ``get_placeholder_mask``: image tokens are ``input_ids == config.image_token_id``, and the model
  raises when their count differs from the features.  The language model (``model.language_model``,
  Llama / Mistral / Vicuna) receives ``inputs_embeds`` only.

Newline slots are prunable visual tokens here: they sit at placeholder positions, the processor and the
model count them as image tokens, and past layer 0 their hidden states carry what they attended to in
their row, so the small model's attention ranks them like any other visual token.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .base import Adapter, chosen_items, items_of_samples, take_spans
from .layout import WHOLE, TokenGrid, Unplaced, covered, padded_square, token_count


def crop_side(config) -> int:
    """Features per side of one crop (``vision_config.image_size // patch_size``)."""
    return config.vision_config.image_size // config.vision_config.patch_size


def crops_per_image(config, image_size, patched: bool = True) -> int:
    """Crops the model reads from ``pixel_values`` for one image (base view + anyres grid)."""
    if not patched:
        return 1
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    return image_size_to_num_patches(list(image_size), config.image_grid_pinpoints, config.vision_config.image_size)


def canvas_box(height: int, width: int, canvas_h: int, canvas_w: int, region) -> tuple[float, float, float, float]:
    """The box of ``region`` (left, top, right, bottom in pixels of a ``canvas_h x canvas_w`` canvas) in
    fractions of a ``height x width`` image that was resized to fit the canvas, aspect ratio kept, and
    centred on it: the anyres canvas of LLaVA-1.6 (``resize_and_pad_image``) and of transformers'
    LLaVA-NeXT / OneVision processors (``get_patch_output_size``, then centred padding)."""
    if canvas_w / width < canvas_h / height:
        new_w, new_h = canvas_w, min(math.ceil(height * canvas_w / width), canvas_h)
    else:
        new_w, new_h = min(math.ceil(width * canvas_h / height), canvas_w), canvas_h
    pad_x, pad_y = (canvas_w - new_w) // 2, (canvas_h - new_h) // 2
    left, top, right, bottom = region
    return ((left - pad_x) / new_w, (top - pad_y) / new_h, (right - pad_x) / new_w, (bottom - pad_y) / new_h)


def unpadded_grid(unpad, original_size, height: int, width: int, rows: int, cols: int, side: int, crop: int,
                  patch: int) -> TokenGrid:
    """LLaVA-NeXT's unpadded anyres grid of a ``height x width`` image cut into ``rows x cols`` crops of
    ``crop`` pixels, each ``side x side`` features of ``patch`` pixels: ``unpad`` is the codebase's
    ``unpad_image``, called with ``original_size`` in its own convention on a map of that shape; it
    cuts as many rows (or columns) from each end, so the offset follows from the shapes.  Each kept
    row ends with a newline token; a grid unpadding leaves empty has none."""
    grid_h, grid_w = unpad(torch.empty(0, rows * side, cols * side), original_size).shape[1:]
    if not grid_h or not grid_w:
        return TokenGrid(0, 0, WHOLE, newlines=True, view=1)
    top, left = (rows * side - grid_h) // 2, (cols * side - grid_w) // 2

    def edge(feature: int) -> int:   # canvas pixel where a feature starts: crops tile the canvas, patches a crop
        return crop * (feature // side) + patch * (feature % side)

    box = canvas_box(height, width, rows * crop, cols * crop,
                     (edge(left), edge(top), edge(left + grid_w - 1) + patch, edge(top + grid_h - 1) + patch))
    return TokenGrid(grid_h, grid_w, box, newlines=True, view=1)


def image_layout(config, image_size, patched: bool = True, max_patches: int | None = None) -> list:
    """Where the tokens of one image of ``image_size`` (height, width) lie in it (``layout``): the base
    view (the whole image squashed to one crop), then the anyres grid, unpadded, a newline ending
    each row.

    ``patched=False`` is LLaVA-OneVision's multi-image case (the image padded to a square, base view
    only, then one newline); ``max_patches`` its ``anyres_max_N`` downsampling of large grids.  The
    grid arithmetic is the model's own: ``get_anyres_image_grid_shape`` and ``unpad_image`` from
    ``modeling_llava_next``; where the image lies on the canvas the crops were cut from is the image
    processors' (``canvas_box``).
    """
    # module-level helpers of modeling_llava_next, imported here because transformers before 4.39
    # has no llava_next and ``import sgl_patch`` must work there
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    side, crop, patch = crop_side(config), config.vision_config.image_size, config.vision_config.patch_size
    seen = side * patch / crop   # the share of a crop its patches cover
    height, width = (int(s) for s in image_size)
    if not patched:
        return [TokenGrid(side, side, covered(padded_square(height, width), seen)), Unplaced(1)]
    rows, cols = get_anyres_image_grid_shape([height, width], config.image_grid_pinpoints, crop)
    grid = unpadded_grid(unpad_image, [height, width], height, width, rows, cols, side, crop, patch)
    if max_patches is not None:
        # LlavaOnevisionModel.pack_image_features: grids over anyres_max_N crops of features are
        # interpolated down to int(h // ratio) x int(w // ratio) (ratio > 1.1 only); same region
        ratio = math.sqrt(grid.rows * grid.cols / (max_patches * side * side))
        if ratio > 1.1:
            grid = dataclasses.replace(grid, rows=int(grid.rows // ratio), cols=int(grid.cols // ratio))
    return [TokenGrid(side, side, covered(WHOLE, seen)), grid]


class LlavaNextAdapter(Adapter):
    """Splits anyres image batches; the NeXT-Video and OneVision adapters extend it."""

    # -- per family -------------------------------------------------------------------------
    def patched_images(self, inputs: dict, n_images: int) -> list[bool]:
        """Which images are cut into an anyres grid: all of them in LLaVA-NeXT."""
        return [True] * n_images

    def image_layout(self, config, image_size, patched: bool) -> list:
        return image_layout(config, image_size, patched)

    def image_tokens(self, config, image_size, patched: bool) -> int:
        return token_count(self.image_layout(config, image_size, patched))

    def video_tokens(self, config, n_frames: int) -> int:
        raise NotImplementedError(f"{self.family} takes no videos")

    def select_image_extras(self, inputs: dict, owners: list[range], index: torch.Tensor, out: dict) -> None:
        """Per-image inputs beyond pixels and sizes (OneVision's ``batch_num_images``)."""

    # -- shared -----------------------------------------------------------------------------
    def image_token_layout(self, model, inputs, row, image_sizes=None):
        config, sizes = model.config, inputs.get("image_sizes")
        video_id = getattr(config, "video_token_id", None)
        if sizes is None or (video_id is not None and (inputs["input_ids"][row] == video_id).any()):
            return None  # a video's tokens may come before or between the images: images only
        patched = self.patched_images(inputs, sizes.shape[0])
        layouts = [self.image_layout(config, s.tolist(), p) for s, p in zip(sizes, patched)]
        tokens = (inputs["input_ids"] == config.image_token_id).sum(1)
        return [layouts[i] for i in items_of_samples(tokens, [token_count(l) for l in layouts])[row]]

    def select_items(self, model, inputs, index, out):
        config = model.config
        pixels, sizes = inputs.get("pixel_values"), inputs.get("image_sizes")
        if pixels is not None and sizes is not None:
            patched = self.patched_images(inputs, sizes.shape[0])
            per_image = [self.image_tokens(config, s.tolist(), p) for s, p in zip(sizes, patched)]
            tokens = (inputs["input_ids"] == config.image_token_id).sum(1)
            owners = items_of_samples(tokens, per_image)
            items = chosen_items(owners, index)
            if items:  # generate() rejects pixel keys that are present but None
                crops = [crops_per_image(config, s.tolist(), p) for s, p in zip(sizes, patched)]
                if pixels.dim() == 5:
                    # keep the zero padding only up to the chosen images' largest crop count, as the
                    # processor pads a batch of just these images (the model ignores the padding)
                    out["pixel_values"] = pixels[items, :max(crops[i] for i in items)]
                else:  # crops concatenated image after image
                    out["pixel_values"] = take_spans(pixels, crops, items)
                out["image_sizes"] = sizes[items]
                self.select_image_extras(inputs, owners, index, out)
        videos = inputs.get("pixel_values_videos")
        if videos is not None:
            per_video = self.video_tokens(config, videos.shape[1])
            tokens = (inputs["input_ids"] == config.video_token_id).sum(1)
            items = chosen_items(items_of_samples(tokens, [per_video] * videos.shape[0]), index)
            if items:
                out["pixel_values_videos"] = videos[items]
                # OneVision's forward also takes per-video frame sizes (unused by the model)
                if inputs.get("image_sizes_videos") is not None:
                    out["image_sizes_videos"] = inputs["image_sizes_videos"][items]


ADAPTER = LlavaNextAdapter(
    family="llava_next",
    class_names=("LlavaNextForConditionalGeneration",),
    language_model_path="model.language_model",
    visual_token_id_attrs=("image_token_index",),
    transformers=">=5.0,<6",  # native class; facts checked on transformers 5.23
    vision_geometry_attrs=("vision_config.image_size", "vision_config.patch_size",
                           "vision_feature_select_strategy", "image_grid_pinpoints"),
    item_keys=("pixel_values", "image_sizes"),
)
