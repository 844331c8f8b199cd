"""Checks that a token layout (``sgl_patch.adapters.layout``) names the regions a processor really gave
the tokens: an image whose colour encodes the position (red grows left to right, green top to
bottom, blue 255 on the image and 0 on black padding), run through the processor without rescaling
or normalising, pooled to tokens and compared with what each token's region should show."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sgl_patch.adapters.layout import TokenGrid


def coordinate_image(height: int, width: int) -> Image.Image:
    x = (np.arange(width) + 0.5) / width * 255
    y = (np.arange(height) + 0.5) / height * 255
    pixels = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y[:, None], (height, width)),
                       np.full((height, width), 255.0)], -1)
    return Image.fromarray(pixels.round().astype(np.uint8), "RGB")


def pooled(pixels, rows: int, cols: int) -> np.ndarray:
    """Mean colour of each of ``rows x cols`` cells of ``pixels`` ``[3, H, W]`` -> ``[rows, cols, 3]``."""
    pixels = np.asarray(pixels, dtype=np.float64)
    c, h, w = pixels.shape
    return pixels.reshape(c, rows, h // rows, cols, w // cols).mean((2, 4)).transpose(1, 2, 0)


def expected_colours(grid: TokenGrid) -> np.ndarray:
    """The colour each token of ``grid`` shows if its region is right: red and green encode its cell's
    centre, blue the share of the cell that lies on the image (the processors pad with black)."""
    left, top, right, bottom = grid.box
    edges_x = left + np.arange(grid.cols + 1) * (right - left) / grid.cols
    edges_y = top + np.arange(grid.rows + 1) * (bottom - top) / grid.rows

    def on_image(edges):
        return (np.minimum(edges[1:], 1) - np.maximum(edges[:-1], 0)).clip(0) / (edges[1:] - edges[:-1])

    centre_x, centre_y = (edges_x[1:] + edges_x[:-1]) / 2, (edges_y[1:] + edges_y[:-1]) / 2
    shape = (grid.rows, grid.cols)
    return np.stack([np.broadcast_to(centre_x * 255, shape), np.broadcast_to(centre_y[:, None] * 255, shape),
                     on_image(edges_y)[:, None] * on_image(edges_x)[None, :] * 255], -1)


def assert_matches(grid: TokenGrid, pixels) -> None:
    """``pixels`` (what the processor gave the tokens of ``grid``) show the regions ``grid`` says."""
    got, want = pooled(pixels, grid.rows, grid.cols), expected_colours(grid)
    assert np.abs(got[..., 2] - want[..., 2]).max() < 0.2 * 255, (grid, got[..., 2], want[..., 2])
    inside = want[..., 2] > 254.9
    assert inside.any()
    # a cell's centre may be off by a fraction of a token from resampling, never by a whole one
    step = np.array([255 * (grid.box[2] - grid.box[0]) / grid.cols, 255 * (grid.box[3] - grid.box[1]) / grid.rows])
    error = np.abs(got[inside][:, :2] - want[inside][:, :2]) / step
    assert error.max() < 0.35, (grid, error.max())
