"""Where an image's visual tokens lie in it: the vocabulary of ``Adapter.image_token_layout``.

An image becomes a sequence of *segments*, in token order: grids of tokens that each cover a region
of the image (a whole-image view, a crop, a tile), and tokens that lie nowhere in it (CLIP's CLS
token, LLaVA-NeXT's row-ending newlines, OneVision's trailing newline).  Regions are fractions of
the image as it was given to the processor, so a picture can be drawn over the original without
knowing how the processor resized it; they reach beyond 0..1 where the processor padded the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WHOLE = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class TokenGrid:
    """``rows x cols`` tokens in raster order, evenly covering ``box`` (left, top, right, bottom as
    fractions of the image's width and height).  ``newlines``: one token that lies nowhere ends every
    row.  ``view``: grids that tile the same picture of the image share one (a base view and its
    high-resolution crops are two)."""

    rows: int
    cols: int
    box: tuple[float, float, float, float] = WHOLE
    newlines: bool = False
    view: int = 0

    @property
    def tokens(self) -> int:
        return self.rows * (self.cols + self.newlines)


@dataclass(frozen=True)
class Unplaced:
    """``count`` tokens that lie nowhere in the image."""

    count: int = 1

    @property
    def tokens(self) -> int:
        return self.count


def token_count(segments) -> int:
    return sum(segment.tokens for segment in segments)


def token_places(segments) -> list:
    """Per token of the image, in order: ``(grid, row, col)`` with ``grid`` an index into
    ``segments``, or None for a token that lies nowhere."""
    places = []
    for index, segment in enumerate(segments):
        if isinstance(segment, Unplaced):
            places += [None] * segment.count
            continue
        for row in range(segment.rows):
            places += [(index, row, col) for col in range(segment.cols)]
            if segment.newlines:
                places.append(None)
    return places


def padded_square(height: int, width: int) -> tuple[float, float, float, float]:
    """The box of an image padded to a square around its centre (LLaVA's ``expand2square``)."""
    side = max(height, width)
    dx, dy = (side - width) / 2 / width, (side - height) / 2 / height
    return (-dx, -dy, 1 + dx, 1 + dy)


def centre_square(height: int, width: int) -> tuple[float, float, float, float]:
    """The box of the largest centred square (CLIP's shortest-edge resize, then centre crop)."""
    side = min(height, width)
    dx, dy = (width - side) / 2 / width, (height - side) / 2 / height
    return (dx, dy, 1 - dx, 1 - dy)


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


def covered(box, share: float) -> tuple[float, float, float, float]:
    """The top-left ``share`` of ``box`` per side: what a tower whose patches do not divide its input
    sees of it (SigLIP's 27 patches of 14 pixels cover 378 of a 384-pixel crop)."""
    left, top, right, bottom = box
    return (left, top, left + (right - left) * share, top + (bottom - top) * share)


def unpadded_grid(unpad, original_size, height: int, width: int, rows: int, cols: int, side: int, crop: int,
                  patch: int) -> TokenGrid:
    """LLaVA-NeXT's unpadded anyres grid of a ``height x width`` image cut into ``rows x cols`` crops of
    ``crop`` pixels, each ``side x side`` features of ``patch`` pixels: ``unpad`` is the codebase's
    ``unpad_image``, called with ``original_size`` in its own convention on a map of that shape; it
    cuts as many rows (or columns) from each end, so the offset follows from the shapes.  Each kept
    row ends with a newline token; a grid unpadding leaves empty has none."""
    import torch

    grid_h, grid_w = unpad(torch.empty(0, rows * side, cols * side), original_size).shape[1:]
    if not grid_h or not grid_w:
        return TokenGrid(0, 0, WHOLE, newlines=True, view=1)
    top, left = (rows * side - grid_h) // 2, (cols * side - grid_w) // 2

    def edge(feature: int) -> int:   # canvas pixel where a feature starts: crops tile the canvas, patches a crop
        return crop * (feature // side) + patch * (feature % side)

    box = canvas_box(height, width, rows * crop, cols * crop,
                     (edge(left), edge(top), edge(left + grid_w - 1) + patch, edge(top + grid_h - 1) + patch))
    return TokenGrid(grid_h, grid_w, box, newlines=True, view=1)


def tiles(rows: int, cols: int, box=WHOLE) -> list[tuple[float, float, float, float]]:
    """Boxes of a ``rows x cols`` cut of ``box``, row after row."""
    left, top, right, bottom = box
    w, h = (right - left) / cols, (bottom - top) / rows
    return [(left + c * w, top + r * h, left + (c + 1) * w, top + (r + 1) * h) for r in range(rows) for c in range(cols)]


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
