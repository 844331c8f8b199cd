"""Token layouts for ``sgl-patch show`` on the original codebases (legacy transformers).

llava (llava-torch): the layout of each kind is checked against the package's own
``process_images`` pixels (LLaVA-1.5 pads to a square, 1.6 adds an anyres grid to a squashed base
view) and against where ``prepare_inputs_labels_for_multimodal`` puts ``image_newline``.  InternVL2
(``InternVLChatModel``): one run of ``<IMG_CONTEXT>`` tokens per image, cut into tiles with a
thumbnail only where the checkpoint says so; the tiling geometry itself is shared with the native
InternVL adapter and checked against transformers' InternVL processor in ``tests/test_show.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sgl_patch.adapters.internvl import image_runs
from sgl_patch.adapters.internvl_chat import ADAPTER as CHAT
from sgl_patch.adapters.layout import TokenGrid, Unplaced, token_count, token_places
from sgl_patch.tiny import internvl2

from layout_checks import assert_matches, coordinate_image, pooled

# PIL (width, height), as llava's image_sizes: square, wide, tall, and unevenly padded grids
SIZES = [(16, 16), (32, 16), (16, 32), (48, 16), (40, 30), (50, 21)]


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    pytest.importorskip("llava.model.builder", reason="the llava package (llava-torch) is not installed")
    from sgl_patch.tiny import llava_torch as lt

    root = tmp_path_factory.mktemp("llava_show")
    return {kind: lt.load(lt.save_checkpoint(root, kind), dtype="float32") for kind in ("v1.5", "v1.6")}


def raw_processor(processor):
    """The checkpoint's CLIP processor giving pixels in 0..255, padding in black."""
    out = copy.deepcopy(processor)
    out.do_rescale = out.do_normalize = False
    out.image_mean = [0.0, 0.0, 0.0]   # expand2square's background colour
    return out


@pytest.mark.parametrize("size", [s for s in SIZES if max(s) <= 2 * min(s)])   # a 4 x 4 view: a token row inside
def test_llava_15_view_is_the_image_padded_to_a_square(llava, size):
    from llava.mm_utils import process_images

    from sgl_patch.adapters.llava_torch import ADAPTER
    from sgl_patch.tiny import llava_torch as lt

    tokenizer, model, processor, _ = llava["v1.5"]
    batch = lt.inputs(tokenizer, processor, model.config, [size], dtype=model.dtype)
    [[grid]] = ADAPTER.image_token_layout(model, batch, 0)
    assert token_count([grid]) == lt.visual_tokens(model.config, size)
    width, height = size
    pixels = process_images([coordinate_image(height, width)], raw_processor(processor), model.config)[0]
    assert_matches(grid, pixels.numpy())


@pytest.mark.parametrize("size", SIZES)
def test_llava_16_base_view_and_unpadded_grid_show_their_regions(llava, size):
    from llava.mm_utils import get_anyres_image_grid_shape, process_images
    from llava.model.llava_arch import unpad_image

    from sgl_patch.adapters.llava_torch import ADAPTER
    from sgl_patch.tiny import llava_torch as lt

    tokenizer, model, processor, _ = llava["v1.6"]
    batch = lt.inputs(tokenizer, processor, model.config, [size], dtype=model.dtype)
    [layout] = ADAPTER.image_token_layout(model, batch, 0)
    base, grid = layout
    assert token_count(layout) == lt.visual_tokens(model.config, size)
    width, height = size
    crops = process_images([coordinate_image(height, width)], raw_processor(processor), model.config)[0].numpy()
    assert_matches(base, crops[0])
    tower = model.get_vision_tower()
    crop, patch = tower.config.image_size, tower.config.patch_size
    cols, rows = get_anyres_image_grid_shape(size, model.config.image_grid_pinpoints, crop)
    canvas = crops[1:].reshape(rows, cols, 3, crop, crop).transpose(2, 0, 3, 1, 4).reshape(3, rows * crop, cols * crop)
    features = pooled(canvas, rows * crop // patch, cols * crop // patch).transpose(2, 0, 1)
    unpadded = unpad_image(torch.from_numpy(features.copy()), size).numpy()
    assert unpadded.shape[1:] == (grid.rows, grid.cols)
    assert_matches(grid, np.kron(unpadded, np.ones((1, patch, patch))))


def test_llava_16_newlines_lie_where_the_splice_puts_image_newline(llava):
    from sgl_patch.adapters.llava_torch import ADAPTER
    from sgl_patch.tiny import llava_torch as lt

    tokenizer, model, processor, _ = llava["v1.6"]
    for size in SIZES:
        batch = lt.inputs(tokenizer, processor, model.config, [size], dtype=model.dtype)
        embeds = model.prepare_inputs_labels_for_multimodal(batch["input_ids"], None, None, None, None,
                                                            batch["images"], image_sizes=batch["image_sizes"])[4][0]
        [layout] = ADAPTER.image_token_layout(model, batch, 0)
        start = int((batch["input_ids"][0] == lt.IMAGE_TOKEN_INDEX).nonzero())
        visual = embeds[start:start + token_count(layout)]
        is_newline = (visual == model.get_model().image_newline).all(-1)
        assert is_newline.tolist() == [place is None for place in token_places(layout)]


def test_llava_layouts_of_a_padded_batch(llava):
    """Rows of a left-padded batch get their own image; a 1.5 image without its size has no layout."""
    from sgl_patch.adapters.llava_torch import ADAPTER
    from sgl_patch.tiny import llava_torch as lt

    tokenizer, model, processor, _ = llava["v1.6"]
    batch = lt.inputs(tokenizer, processor, model.config, SIZES[:3], dtype=model.dtype)
    counts = [token_count(ADAPTER.image_token_layout(model, batch, row)[0]) for row in range(3)]
    assert counts == [lt.visual_tokens(model.config, size) for size in SIZES[:3]]
    tokenizer, model, processor, _ = llava["v1.5"]
    batch = lt.inputs(tokenizer, processor, model.config, SIZES[:2], dtype=model.dtype)
    del batch["image_sizes"]
    assert ADAPTER.image_token_layout(model, batch, 1) == [None]
    assert ADAPTER.image_token_layout(model, batch, 1, image_sizes=[(16, 32)]) == [
        [TokenGrid(4, 4, (0.0, -0.5, 1.0, 1.5))]]
    # images as a list of 3-D tensors: each one view through the merging path ("flat": no newline)
    batch["images"] = list(batch["images"])
    assert ADAPTER.image_token_layout(model, batch, 1, image_sizes=[(16, 32)]) == [
        [TokenGrid(4, 4, (0.0, -0.5, 1.0, 1.5))]]


@pytest.mark.parametrize("merge", ["flat", "spatial", "spatial_unpad"])
def test_llava_16_merges_count_what_the_splice_writes(llava, merge):
    """Every ``mm_patch_merge_type`` of an anyres checkpoint: the layout has as many tokens as the
    package's splice writes for the image, and under ``flat`` each crop's grid shows its region."""
    from llava.mm_utils import process_images

    from sgl_patch.adapters.llava_torch import ADAPTER
    from sgl_patch.tiny import llava_torch as lt

    tokenizer, model, processor, _ = llava["v1.6"]
    saved = model.config.mm_patch_merge_type
    model.config.mm_patch_merge_type = merge
    try:
        for size in SIZES:
            batch = lt.inputs(tokenizer, processor, model.config, [size], dtype=model.dtype)
            embeds = model.prepare_inputs_labels_for_multimodal(batch["input_ids"], None, None, None, None,
                                                                batch["images"], image_sizes=batch["image_sizes"])[4]
            [layout] = ADAPTER.image_token_layout(model, batch, 0)
            text = int((batch["input_ids"][0] != lt.IMAGE_TOKEN_INDEX).sum())
            assert token_count(layout) == embeds.shape[1] - text, (merge, size)
            if merge == "flat":
                width, height = size
                crops = process_images([coordinate_image(height, width)], raw_processor(processor),
                                       model.config)[0].numpy()
                assert len(layout) == len(crops)
                for grid, pixels in zip(layout, crops):
                    assert_matches(grid, pixels)
    finally:
        model.config.mm_patch_merge_type = saved


def test_internvl2_tiles_follow_the_runs_and_the_thumbnail_setting():
    model = internvl2.build_model()
    samples = [5, 1, None, 3]                     # 4 tiles + thumbnail; one tile; text; 2 + thumbnail
    batch = internvl2.inputs(model, samples)
    per_tile = int(model.num_image_token)
    side = int(per_tile ** 0.5)
    sizes = {0: [(90, 100)], 1: [(50, 50)], 2: [], 3: [(40, 100)]}
    for row, tiles in enumerate(samples):
        layouts = CHAT.image_token_layout(model, batch, row, image_sizes=sizes[row])
        runs = image_runs(CHAT.visual_mask(model, batch["input_ids"])[row])
        assert [token_count(layout) for layout in layouts] == runs == ([tiles * per_tile] if tiles else [])
    [four] = CHAT.image_token_layout(model, batch, 0, image_sizes=sizes[0])
    assert [g.box for g in four[:4]] == [(0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5), (0, 0.5, 0.5, 1), (0.5, 0.5, 1, 1)]
    assert four[4] == TokenGrid(side, side)                         # the thumbnail, last
    [two] = CHAT.image_token_layout(model, batch, 3, image_sizes=sizes[3])
    assert [g.box for g in two[:2]] == [(0, 0, 0.5, 1), (0.5, 0, 1, 1)]   # wide: side by side
    model.config.use_thumbnail = False             # then three tiles are three crops, no thumbnail
    [three] = CHAT.image_token_layout(model, batch, 3, image_sizes=[(100, 40)])
    assert [g.box for g in three] == [(0, 0, 1, 1 / 3), (0, 1 / 3, 1, 2 / 3), (0, 2 / 3, 1, 1)]
    model.ps_version = "v1"                        # column-major tokens: no layout rather than a wrong one
    assert CHAT.image_token_layout(model, batch, 3, image_sizes=sizes[3]) is None
    assert Unplaced not in {type(s) for s in four}
