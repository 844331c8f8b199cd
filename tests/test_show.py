"""Token layouts for ``sgl-patch show`` on the native families (transformers 5).

Each layout is checked against what produced the tokens: the real image processor's pixels (run
without rescaling or normalising, on an image whose colour encodes the position: red grows left to
right, green top to bottom) and the model's own anyres helpers, so a region that is off by one token
fails.  Token counts are checked against the placeholders of padded multi-image batches of every
family, and the picture against its layout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import sgl_patch
from sgl_patch import tiny
from sgl_patch.adapters import adapter_for
from sgl_patch.adapters.internvl import ADAPTER as INTERNVL
from sgl_patch.adapters.internvl import image_runs
from sgl_patch.adapters.layout import TokenGrid, Unplaced, centre_square, padded_square, token_count, token_places
from sgl_patch.adapters.llava import ADAPTER as LLAVA
from sgl_patch.adapters.llava_next import image_layout
from sgl_patch.prune import keep_count
from sgl_patch.show import DIM, outline_kept, picture_of_kept

from layout_checks import assert_matches, coordinate_image, expected_colours, pooled

# (height, width): wide, tall, square, and sizes whose anyres canvases are padded unevenly
SIZES = [(40, 90), (90, 40), (64, 64), (33, 70), (70, 33), (30, 200)]
CROP, PATCH = 32, 4   # 8 x 8 features a crop: fine enough for a one-token error to show


def next_config(pinpoints, crop: int = CROP, patch: int = PATCH, **extra):
    from transformers import LlavaNextConfig

    return LlavaNextConfig(vision_config=dict(model_type="clip_vision_model", image_size=crop, patch_size=patch,
                                              hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                              num_attention_heads=1),
                           text_config=dict(model_type="llama", hidden_size=8, intermediate_size=8,
                                            num_hidden_layers=1, num_attention_heads=1, vocab_size=32),
                           image_grid_pinpoints=pinpoints, **extra)


PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]


def crop_features(crop_pixels, side: int, patch: int) -> np.ndarray:
    """``[3, side, side]`` mean colours of a crop's patches: the tower's convolution covers its top-left
    ``side * patch`` pixels (all of them where the patch divides the crop)."""
    return pooled(crop_pixels[:, :side * patch, :side * patch], side, side).transpose(2, 0, 1)


# (crop, patch): patches that divide the crop, and patches that leave an edge uncovered (SigLIP's 384 / 14)
@pytest.mark.parametrize("crop,patch", [(CROP, PATCH), (30, 4)])
@pytest.mark.parametrize("size", SIZES)
def test_llava_next_base_view_and_unpadded_grid_show_their_regions(size, crop, patch):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    height, width = size
    pinpoints = [[h * crop // CROP, w * crop // CROP] for h, w in PINPOINTS]
    processor = LlavaNextImageProcessorPil(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop},
                                           image_grid_pinpoints=pinpoints, do_rescale=False, do_normalize=False)
    crops = np.asarray(processor(images=[coordinate_image(height, width)], return_tensors="np")["pixel_values"][0])
    base, grid = image_layout(next_config(pinpoints, crop, patch), size)
    side = crop // patch
    assert (base.rows, base.cols) == (side, side) and grid.newlines and grid.view == 1
    assert_matches(base, np.kron(crop_features(crops[0], side, patch), np.ones((1, patch, patch))))
    # the crops' features stitched into the canvas's map and unpadded by the model's own helper
    rows, cols = get_anyres_image_grid_shape(size, pinpoints, crop)
    features = np.concatenate([np.concatenate([crop_features(crops[1 + r * cols + c], side, patch) for c in range(cols)], 2)
                               for r in range(rows)], 1)
    unpadded = unpad_image(torch.from_numpy(features.copy()), list(size)).numpy()
    assert unpadded.shape[1:] == (grid.rows, grid.cols)
    assert_matches(grid, np.kron(unpadded, np.ones((1, patch, patch))))


def test_an_image_that_unpadding_empties_is_its_base_view():
    """A sliver of an image leaves no row of its anyres map: the model reads the base view alone, and the
    layout says so (no crash in the pruning path, which counts tokens by the layout)."""
    family = tiny.family("llava_next")
    large = family.model()
    inputs = family.inputs([(1, 100), (8, 16)])
    [layout] = adapter_for(large).image_token_layout(large, inputs, 0)
    assert token_count(layout) == 16 and layout[1].tokens == 0
    adapter = adapter_for(large)
    with torch.no_grad():   # split as early exit splits a batch; the model checks its features' count
        for row in (0, 1):
            large.generate(**adapter.select_samples(large, inputs, torch.tensor([row])), max_new_tokens=1)
    assert outline_kept(coordinate_image(1, 100), layout, range(16)).size == (512, 512)


@pytest.mark.parametrize("size", SIZES[:3])
def test_onevision_multi_image_view_is_the_image_padded_to_a_square(size):
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    height, width = size
    processor = LlavaOnevisionImageProcessorPil(size={"height": CROP, "width": CROP}, image_grid_pinpoints=PINPOINTS,
                                                do_rescale=False, do_normalize=False, image_mean=[0, 0, 0])
    batch = processor(images=[[coordinate_image(height, width)] * 2], return_tensors="np")   # two images: no grid
    config = next_config(PINPOINTS)
    view, newline = image_layout(config, size, patched=False)
    assert newline == Unplaced(1)
    assert_matches(view, batch["pixel_values"][0][0])


@pytest.mark.parametrize("size", SIZES)
def test_internvl_tiles_and_thumbnail_show_their_regions(size):
    from transformers import InternVLConfig
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    height, width = size
    processor = GotOcr2ImageProcessorPil(size={"height": CROP, "width": CROP}, crop_to_patches=True, min_patches=1,
                                         max_patches=12, do_rescale=False, do_normalize=False)
    tiles = processor(images=[coordinate_image(height, width)], return_tensors="np")["pixel_values"]
    config = InternVLConfig(vision_config=dict(image_size=CROP, patch_size=PATCH, hidden_size=8, intermediate_size=8,
                                               num_hidden_layers=1, num_attention_heads=1),
                            text_config=dict(model_type="qwen2", hidden_size=8, intermediate_size=8,
                                             num_hidden_layers=1, num_attention_heads=1, vocab_size=32),
                            image_token_id=7)
    per_tile = (CROP // PATCH // 2) ** 2
    ids = torch.tensor([[1, 2] + [7] * per_tile * len(tiles) + [3, 4]])
    [layout] = INTERNVL.image_token_layout(SimpleNamespace(config=config), {"input_ids": ids}, 0, image_sizes=[size])
    assert len(layout) == len(tiles) and token_count(layout) == per_tile * len(tiles)
    for grid, pixels in zip(layout, tiles):
        assert_matches(grid, pixels)
    if len(tiles) > 1:  # the thumbnail comes last and is the whole image
        assert layout[-1] == TokenGrid(4, 4) and {g.view for g in layout[:-1]} == {1}
    if len(tiles) > 1:  # without the image's size a tiled image has no layout (its arrangement is unknown)
        assert INTERNVL.image_token_layout(SimpleNamespace(config=config), {"input_ids": ids}, 0) == [None]
    # a second image after it, its size not given: the first still has its layout (``picture_of_kept``)
    two = torch.cat([ids, ids], 1)
    assert INTERNVL.image_token_layout(SimpleNamespace(config=config), {"input_ids": two}, 0, image_sizes=[size]) == \
        [layout, layout if len(tiles) == 1 else None]


@pytest.mark.parametrize("size", SIZES[:3])
def test_llava_view_is_the_centre_square(size):
    from transformers import LlavaConfig
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    height, width = size
    processor = CLIPImageProcessorPil(size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP},
                                      do_center_crop=True, do_rescale=False, do_normalize=False)
    pixels = processor(images=[coordinate_image(height, width)], return_tensors="np")["pixel_values"][0]
    config = LlavaConfig(vision_config=dict(model_type="clip_vision_model", image_size=CROP, patch_size=PATCH),
                         image_token_index=7, vision_feature_select_strategy="default")
    ids = torch.tensor([[1] + [7] * (CROP // PATCH) ** 2 + [2]])
    [[grid]] = LLAVA.image_token_layout(SimpleNamespace(config=config), {"input_ids": ids}, 0, image_sizes=[size])
    assert_matches(grid, pixels)
    config.vision_feature_select_strategy = "full"   # the CLS token first, lying nowhere
    ids = torch.tensor([[1] + [7] * ((CROP // PATCH) ** 2 + 1) + [2]])
    assert LLAVA.image_token_layout(SimpleNamespace(config=config), {"input_ids": ids}, 0, image_sizes=[size]) == \
        [[Unplaced(1), grid]]


IMAGE_FAMILIES = [name for name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "llava_next", "llava_next_video",
                                    "llava_onevision", "internvl") if tiny.supported(name)]


@pytest.mark.parametrize("name", IMAGE_FAMILIES)
def test_layouts_account_for_every_visual_token_of_a_padded_batch(name):
    """Per row of a left-padded batch of samples with one, several and no images: the layouts' token
    counts add up to the row's image placeholders, image by image in prompt order."""
    family = tiny.family(name)
    model = family.model()
    samples = [*family.multi, None] if getattr(family, "multi", None) else [*family.mixed, None]
    inputs = family.inputs(samples)
    adapter = adapter_for(model)
    image_id = getattr(model.config, "image_token_id", None) or model.config.image_token_index
    for row in range(len(samples)):
        is_image = inputs["input_ids"][row] == image_id
        runs = image_runs(is_image)
        layouts = adapter.image_token_layout(model, inputs, row, image_sizes=[(60, 90)] * len(runs))
        assert layouts is not None
        assert sum(token_count(layout) for layout in layouts) == int(is_image.sum())
        assert all(len(token_places(layout)) == token_count(layout) for layout in layouts)
        if name.startswith("internvl") or name.startswith("llava_next") or name == "llava_onevision":
            assert [token_count(layout) for layout in layouts] == runs   # each image is one run


def test_picture_of_two_views_outlines_kept_tokens_and_skips_newlines():
    """A base view and a grid with newlines: kept tokens of each view are bright in their panel,
    dropped ones dimmed; a kept newline is drawn nowhere."""
    layout = [TokenGrid(2, 2), TokenGrid(2, 3, (0.0, 0.0, 1.0, 1.0), newlines=True, view=1)]
    places = token_places(layout)
    assert places[4:] == [(1, 0, 0), (1, 0, 1), (1, 0, 2), None, (1, 1, 0), (1, 1, 1), (1, 1, 2), None]
    image = Image.new("RGB", (60, 40), (200, 180, 160))
    kept = [0, 3, 5, 7, 10]          # base (0,0), (1,1); grid (0,1); a newline; grid (1,2)
    picture = np.asarray(outline_kept(image, layout, kept)).astype(int)
    base_cell, grid_cell = -(-512 // 2), -(-512 // 3)
    assert picture.shape[:2] == (2 * base_cell, 2 * base_cell + 16 + 3 * grid_cell)

    def centre(x0, cell, r, c):
        return picture[r * cell + cell // 2, x0 + c * cell + cell // 2]

    for (r, c), bright in {(0, 0): True, (0, 1): False, (1, 0): False, (1, 1): True}.items():
        assert (centre(0, base_cell, r, c) == (200, 180, 160)).all() == bright
    x0 = 2 * base_cell + 16
    for (r, c), bright in {(0, 0): False, (0, 1): True, (0, 2): False, (1, 2): True, (1, 0): False}.items():
        pixel = centre(x0, grid_cell, r, c)
        assert (pixel == (200, 180, 160)).all() if bright else (pixel <= np.array([200, 180, 160]) * DIM + 1).all()


def kept_by_sgl(large, small, inputs, retain: float = 0.25) -> list:
    """Per sample, the visual tokens SGL kept from layer 1 in a real ``generate``."""
    sgl_patch.apply(large, small, layer=1, retain=retain)
    try:
        with torch.no_grad(), sgl_patch.kept_visual_tokens() as kept:
            large.generate(**inputs, max_new_tokens=2, do_sample=False)
    finally:
        sgl_patch.remove(large)
    return kept


def test_picture_of_kept_on_a_tiny_llava_next_batch():
    """SGL's kept tokens of a real generate on an anyres image land in its two views."""
    family = tiny.family("llava_next")
    small, large = family.pair()
    inputs = family.inputs([family.one])
    kept = kept_by_sgl(large, small, inputs)
    height, width = family.one
    [layout] = adapter_for(large).image_token_layout(large, inputs, 0)
    assert len(kept[0]) == keep_count(token_count(layout), 0.25)
    picture = picture_of_kept(large, inputs, Image.new("RGB", (width * 8, height * 8), (90, 200, 30)), kept[0])
    assert picture.width > picture.height   # two views side by side


def test_llava_layout_places_every_kept_token_in_an_image():
    """LLaVA-1.5's layout: one ``side x side`` grid of patches per image, as many as the row's
    images; what SGL keeps indexes into them."""
    family = tiny.family("llava")
    small, large = family.pair()
    inputs = family.inputs([1, 3])                      # left-padded: 16 and 48 visual tokens
    adapter = sgl_patch.adapters.adapter_for(large)
    side = large.config.vision_config.image_size // large.config.vision_config.patch_size
    square = [(30, 30)] * 3
    assert [adapter.image_token_layout(large, inputs, row, square) for row in (0, 1)] == [[[TokenGrid(side, side)]],
                                                                                          [[TokenGrid(side, side)]] * 3]
    assert adapter.image_token_layout(large, inputs, 1) == [None] * 3   # the centre crop needs the sizes
    kept = kept_by_sgl(large, small, inputs)
    for row, images in ((0, 1), (1, 3)):
        assert len(kept[row]) == keep_count(images * side * side, 0.25)
        assert all(0 <= i < images * side * side for i in kept[row])


def save_llava_next_processor(path) -> None:
    """A real ``LlavaNextProcessor`` for the tiny LLaVA-NeXT family, saved beside its weights: a word-level
    tokenizer whose ``<image>`` is the family's placeholder id, the PIL anyres image processor with the
    family's crops and pinpoints, and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlavaNextProcessor, PreTrainedTokenizerFast
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from sgl_patch.tiny.base import IMAGE
    from sgl_patch.tiny.llava_next import CROP as TINY_CROP
    from sgl_patch.tiny.llava_next import NEXT_PINPOINTS
    from sgl_patch.tiny.llava_next import PATCH as TINY_PATCH

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<image>": IMAGE}
    vocab.update({w: 8 + i for i, w in enumerate("what colour is the shape ?".split())})
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    images = LlavaNextImageProcessorPil(size={"shortest_edge": TINY_CROP},
                                        crop_size={"height": TINY_CROP, "width": TINY_CROP},
                                        image_grid_pinpoints=NEXT_PINPOINTS)
    template = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
                "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}")
    # CLIP towers: the processor counts the CLS token, then drops it for the "default" strategy
    LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=TINY_PATCH,
                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                       chat_template=template).save_pretrained(path)


def test_cli_show_on_a_saved_llava_next_pair_with_its_processor(tmp_path):
    """``sgl-patch show --model``: from_pretrained pair and processor, a tall picture; the processor's
    placeholder count, the model's features and the layout agree, and the PNG holds both views."""
    from transformers import LlavaNextConfig

    small, large = tiny.family("llava_next").saved_pair(tmp_path)
    save_llava_next_processor(large)
    image = tmp_path / "tall.png"
    coordinate_image(90, 40).save(image)
    out = tmp_path / "kept.png"
    run = subprocess.run([sys.executable, "-m", "sgl_patch", "show", "--model", large, "--small", small,
                          "--image", str(image), "--question", "what colour is the shape ?", "--layer", "1",
                          "--retain", "0.25", "--out", str(out)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert run.returncode == 0, run.stderr
    total = token_count(image_layout(LlavaNextConfig.from_pretrained(large), (90, 40)))
    assert f"kept {keep_count(total, 0.25)} of {total} visual tokens from layer 1" in run.stdout
    picture = Image.open(out)
    assert picture.width > picture.height   # the base view and the grid, side by side


def test_llava_with_a_siglip_tower_has_no_cls_token():
    """llava-interleave's layout: SigLIP has no CLS token, so "full" is the patches alone, over the whole
    (squashed) image; the batch splitter counts the same tokens per image."""
    from transformers import LlavaConfig

    config = LlavaConfig(vision_config=dict(model_type="siglip_vision_model", image_size=CROP, patch_size=PATCH),
                         image_token_index=7, vision_feature_select_strategy="full")
    model = SimpleNamespace(config=config)
    per_image = (CROP // PATCH) ** 2
    ids = torch.tensor([[7] * per_image + [1, 2], [1, 2] + [7] * per_image])
    assert LLAVA.image_token_layout(model, {"input_ids": ids}, 1, [(40, 90)]) == [[TokenGrid(8, 8)]]
    assert LLAVA.image_token_layout(model, {"input_ids": torch.tensor([[7] * (per_image + 1)])}, 0, [(40, 90)]) is None
    pixels = torch.arange(2).view(2, 1, 1, 1).expand(2, 3, CROP, CROP)
    out = LLAVA.select_samples(model, {"input_ids": ids, "pixel_values": pixels}, torch.tensor([1]))
    assert out["pixel_values"][:, 0, 0, 0].tolist() == [1]


def test_llava_next_video_rows_with_videos_have_no_layout():
    family = tiny.family("llava_next_video")
    model = family.model()
    videos = family.inputs([1, None], video=True)
    assert adapter_for(model).image_token_layout(model, videos, 0) is None
    images = family.inputs([family.one])
    assert token_count(adapter_for(model).image_token_layout(model, images, 0)[0]) == family.visual_tokens(family.one)


@pytest.mark.parametrize("size,box", [((40, 80), "padded"), ((80, 40), "padded"), ((40, 80), "centre"),
                                      ((40, 80), "canvas")])
def test_picture_shows_each_token_its_region(size, box):
    """Drawn over the original image, every token's cell shows the part of the image its box names:
    padding black, a centre crop's middle, a canvas reaching past the image's edge."""
    height, width = size
    region = {"padded": padded_square(height, width), "centre": centre_square(height, width),
              "canvas": (-0.25, 0.0, 1.0, 1.5)}[box]
    grid = TokenGrid(4, 6, region)
    picture = np.asarray(outline_kept(coordinate_image(height, width), [grid], range(grid.tokens))).astype(float)
    cell_h, cell_w = picture.shape[0] / grid.rows, picture.shape[1] / grid.cols
    want = expected_colours(grid)
    for r in range(grid.rows):
        for c in range(grid.cols):
            y, x = int((r + 0.5) * cell_h), int((c + 0.5) * cell_w)
            centre = picture[y - 2:y + 3, x - 2:x + 3].mean((0, 1))
            if want[r, c, 2] > 254.9:   # wholly on the image: its colour encodes the cell's centre
                assert np.abs(centre[:2] - want[r, c, :2]).max() < 6, (r, c, centre, want[r, c])
            elif want[r, c, 2] == 0:    # wholly off it: black
                assert centre.max() < 1
