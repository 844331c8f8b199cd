"""InternVL2.5 / 3 / 3.5 ``-hf`` checkpoints (native ``InternVLForConditionalGeneration``).

Facts, read from transformers 5.23 ``models/internvl/``:

- ``modeling_internvl.py`` (``InternVLModel.get_placeholder_mask``): visual tokens are
  ``input_ids == config.image_token_id`` and nothing else.  Videos have no placeholder of their own:
  ``processing_internvl.py`` (``replace_video_token``) writes every frame as one tile of image
  placeholders between ``<img>`` / ``</img>``, and ``__call__`` merges image tiles and video frames
  into one ``pixel_values`` in prompt order.
- ``InternVLModel.get_image_features`` / ``pixel_shuffle``: each tile ``[3, H, W]`` becomes a
  square grid of ``image_size / patch_size`` patches per side (the CLS token is dropped with the
  ``"default"`` feature strategy; ``"full"`` would keep it and break the square reshape), which the
  pixel shuffle shrinks by ``downsample_ratio`` per side.  So every tile gives the same number of
  tokens, ``(image_size / patch_size * downsample_ratio) ** 2`` (448 / 14 * 0.5 -> 256).
- ``processing_internvl.py``: ``pixel_values`` is ``[sum(tiles), 3, H, W]``; the processor pops
  ``num_patches``, so a sample's tiles are only known as its placeholder count over tokens per tile.
- The language model (``model.language_model``) is Qwen2 / Qwen3 / Llama and receives
  ``inputs_embeds`` only.  Real checkpoints set ``use_sliding_window: false`` (all layer types
  ``full_attention``); a config that turns it on is refused by ``prune.check_full_attention``.
"""

from __future__ import annotations

import torch

from .base import Adapter, chosen_items, items_of_samples, sized
from .layout import TokenGrid, tiles


def tokens_per_tile(config) -> int:
    """Visual tokens of one tile (or video frame) under ``config`` (an ``InternVLConfig``)."""
    rows, cols = tile_grid(config)
    return rows * cols


def tile_grid(config) -> tuple[int, int]:
    """Token rows and columns of one tile: the tower's patch grid after the pixel shuffle, whose
    tokens stay in raster order (each merges a square of patches)."""
    vision = config.vision_config
    # image_size / patch_size are normalised to (height, width) pairs by InternVLVisionConfig
    return tuple(int(int(size // patch) * config.downsample_ratio)
                 for size, patch in zip(vision.image_size, vision.patch_size))


def image_runs(is_visual: torch.Tensor) -> list[int]:
    """Lengths of the runs of visual tokens in one row: one per image, as ``<img>`` / ``</img>``
    enclose each image's tiles."""
    flags = is_visual.long().tolist()
    runs, length = [], 0
    for flag in flags + [0]:
        if flag:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


def tiled_layouts(runs, grid, image_sizes, thumbnail: bool) -> list:
    """Layouts of a row's images from their runs of ``rows x cols``-token tiles (an image tiled
    without its size in ``image_sizes`` gets None)."""
    per_tile = grid[0] * grid[1]
    return [tiled_image(run // per_tile, *grid, size, thumbnail) for run, size in zip(runs, sized(image_sizes, len(runs)))]


def tile_arrangement(n_tiles: int, height: int, width: int) -> tuple[int, int]:
    """``(rows, cols)`` of InternVL's dynamic tiling (``dynamic_preprocess`` of the InternVL
    checkpoints, ``crop_image_to_patches`` of transformers' InternVL processor) that cut an image of
    ``height x width`` into ``n_tiles``: both pick the arrangement whose ``cols / rows`` is closest to
    the image's aspect ratio; the tile count, read from the prompt, narrows the choice to its
    factorisations.  (Where two factorisations lie exactly as close, which the processors break by
    their iteration order, the one with fewer columns is taken.)"""
    aspect = width / height
    arrangements = [(n_tiles // cols, cols) for cols in range(1, n_tiles + 1) if n_tiles % cols == 0]
    return min(arrangements, key=lambda rc: abs(aspect - rc[1] / rc[0]))


def tiled_image(n_tiles: int, rows: int, cols: int, image_size=None, thumbnail: bool = True) -> list | None:
    """InternVL's layout of one image cut into ``n_tiles`` tiles of ``rows x cols`` tokens: the tiles
    row after row (each the image resized to the arrangement and cut), then, when there are several
    and ``thumbnail``, the whole image squashed into one more.  None where the arrangement needs the
    image's size and ``image_size`` (height, width) is not given."""
    if n_tiles == 1:
        return [TokenGrid(rows, cols)]
    crops = n_tiles - thumbnail
    if image_size is None:
        return None
    grid_rows, grid_cols = tile_arrangement(crops, *image_size)
    layout = [TokenGrid(rows, cols, box, view=1) for box in tiles(grid_rows, grid_cols)]
    return layout + [TokenGrid(rows, cols)] * thumbnail


class InternVLAdapter(Adapter):
    def image_token_layout(self, model, inputs, row, image_sizes=None):
        # the processor tiles with a thumbnail (crop_to_patches); a video frame is one tile
        runs = image_runs(inputs["input_ids"][row] == model.config.image_token_id)
        return tiled_layouts(runs, tile_grid(model.config), image_sizes, thumbnail=True)

    def select_items(self, model, inputs, index, out):
        pixels = inputs.get("pixel_values")
        if pixels is None:
            return
        tokens = (inputs["input_ids"] == model.config.image_token_id).sum(1)
        owners = items_of_samples(tokens, [tokens_per_tile(model.config)] * pixels.shape[0])
        items = chosen_items(owners, index)
        if items:  # generate() rejects pixel keys that are present but None
            out["pixel_values"] = pixels[items]


ADAPTER = InternVLAdapter(
    family="internvl",
    class_names=("InternVLForConditionalGeneration",),
    language_model_path="model.language_model",
    visual_token_id_attrs=("image_token_id",),
    transformers=">=5.0,<6",  # native class; facts checked on transformers 5.23
    vision_geometry_attrs=("vision_config.image_size", "vision_config.patch_size", "downsample_ratio",
                           "vision_feature_select_strategy"),
    item_keys=("pixel_values",),
)
