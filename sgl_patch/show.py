"""``sgl-patch show``: a picture of which visual tokens the large model kept for one image and question.

The large model runs with SGL applied; ``sgl_patch.kept_visual_tokens`` says which of the image's
tokens layers K.. saw, and the family's adapter says where each token lies in the image
(``Adapter.image_token_layout``): grids over regions of the image, one panel per view the model
read (a base view and its anyres grid, InternVL's tiles and thumbnail), drawn side by side.  Kept
tokens are outlined, dropped ones dimmed; tokens that lie nowhere (newlines, CLS) are not drawn.
Without ``--model`` it shows a held-out scene of the lab's trained pair.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .adapters.layout import TokenGrid, token_count, token_places

LAYOUT_SUPPORT = ("families that say: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, "
                  "InternVL, and the original InternVL2 and llava codebases")

MIN_SIDE = 512   # each view is drawn about this large (small images enlarged) so one token's outline is visible
GAP = 16         # pixels between the views of one image
DIM = 0.3        # brightness of dropped tokens


def outline_kept(image: Image.Image, segments, kept) -> Image.Image:
    """``image`` as each of the model's views saw it (``segments``: ``Adapter.image_token_layout``
    of this image), views side by side, the tokens in ``kept`` (indices among the image's visual
    tokens) outlined and the others dimmed."""
    places = token_places(segments)
    kept = {int(i) for i in kept}
    views = sorted({s.view for s in segments if isinstance(s, TokenGrid) and s.tokens})
    panels = [_draw_view(image, segments, places, kept, view) for view in views]
    picture = Image.new("RGB", (sum(p.width for p in panels) + GAP * (len(panels) - 1), max(p.height for p in panels)),
                        (40, 40, 40))
    x = 0
    for panel in panels:
        picture.paste(panel, (x, 0))
        x += panel.width + GAP
    return picture


def _draw_view(image, segments, places, kept, view) -> Image.Image:
    grids = [s for s in segments if isinstance(s, TokenGrid) and s.view == view and s.tokens]
    left, top = min(g.box[0] for g in grids), min(g.box[1] for g in grids)
    right, bottom = max(g.box[2] for g in grids), max(g.box[3] for g in grids)
    # the view's size in tokens, at the density of its first grid (a view's grids share one)
    token_w = (grids[0].box[2] - grids[0].box[0]) / grids[0].cols
    token_h = (grids[0].box[3] - grids[0].box[1]) / grids[0].rows
    assert all(abs((g.box[2] - g.box[0]) / g.cols - token_w) < 1e-6 * token_w for g in grids), \
        "the grids of one view must share one token size"
    cols, rows = round((right - left) / token_w), round((bottom - top) / token_h)
    cell = max(4, -(-MIN_SIDE // max(rows, cols)))
    size = (cols * cell, rows * cell)
    width, height = image.size
    region = image.convert("RGB").crop((round(left * width), round(top * height),
                                        round(right * width), round(bottom * height)))   # padding comes out black
    upscale = size[0] >= region.width and size[1] >= region.height
    panel = region.resize(size, Image.NEAREST if upscale else Image.BICUBIC)

    def cell_box(grid, r, c):
        x0 = (grid.box[0] + c * (grid.box[2] - grid.box[0]) / grid.cols - left) / (right - left) * size[0]
        y0 = (grid.box[1] + r * (grid.box[3] - grid.box[1]) / grid.rows - top) / (bottom - top) * size[1]
        return round(x0), round(y0), round(x0 + token_w / (right - left) * size[0]) - 1, \
            round(y0 + token_h / (bottom - top) * size[1]) - 1

    outlined = [cell_box(segments[g], r, c) for i, place in enumerate(places) if place and i in kept
                for g, r, c in [place] if segments[g].view == view]
    bright = np.zeros((size[1], size[0]), dtype=bool)
    for x0, y0, x1, y1 in outlined:
        bright[y0:y1 + 1, x0:x1 + 1] = True
    pixels = np.asarray(panel).astype(np.float32)
    pixels[~bright] *= DIM
    panel = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(panel)
    for box in outlined:
        draw.rectangle(box, outline=(255, 230, 0), width=max(1, cell // 12))
    return panel


def image_layouts(model, inputs: dict, row: int, image_sizes=None):
    """``Adapter.image_token_layout`` of ``model``'s family, with an error that names the families
    that have one where this one has none for the row's first image."""
    from .adapters import adapter_for

    layouts = adapter_for(model).image_token_layout(model, inputs, row, image_sizes=image_sizes)
    if not layouts or layouts[0] is None:
        raise ValueError(f"sgl-patch show does not know where {type(model).__name__}'s visual tokens lie in this "
                         f"input ({LAYOUT_SUPPORT}; images only, no videos)")
    return layouts


def picture_of_kept(model, inputs: dict, image: Image.Image, kept, row: int = 0) -> Image.Image:
    """The picture of what ``model`` kept of ``image``, the first image of sample ``row`` of
    ``inputs`` (what the model's ``generate`` was given: ``input_ids`` and the pixel inputs);
    ``kept``: that sample's entry of ``sgl_patch.kept_visual_tokens()``."""
    if kept is None:
        raise ValueError("this sample was not pruned (early exit, or no visual tokens): nothing to draw")
    first = image_layouts(model, inputs, row, image_sizes=[(image.height, image.width)])[0]
    return outline_kept(image, first, [i for i in kept if i < token_count(first)])   # its tokens come first


def show(model, small, processor, image: Image.Image, prompt: str, out, *, layer, retain, ranker="small",
         max_new_tokens: int = 16) -> dict:
    """Run ``model`` guided by ``small`` on one image and prompt, write the picture to ``out``."""
    import torch

    import sgl_patch

    inputs = processor(images=[image], text=[prompt], return_tensors="pt").to(model.device)
    layouts = image_layouts(model, inputs, 0, image_sizes=[(image.height, image.width)])   # refuse before generating
    handle = sgl_patch.apply(model, small, layer=layer, retain=retain, ranker=ranker)
    try:
        with torch.no_grad(), sgl_patch.kept_visual_tokens() as kept:
            sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    finally:
        handle.remove()
    answer = processor.batch_decode(sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
    picture_of_kept(model, inputs, image, kept[0]).save(out)
    return {"answer": answer, "kept": len(kept[0]), "kept_tokens": kept[0],
            "visual_tokens": token_count(layouts[0]),
            "layer": handle.layer, "retain": retain, "ranker": ranker, "picture": str(out)}


def add_parser(commands) -> None:
    p = commands.add_parser("show", help="a PNG of the image with the visual tokens SGL kept outlined",
                            description="Run the large model guided by the small one on one image and question "
                                        "and draw which visual tokens layers K.. kept.  Without --model: a "
                                        "held-out scene of the lab's trained pair.")
    p.add_argument("--model", help="large model (local path or hub id; a native transformers class: Qwen2-VL family, "
                                        "LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision or InternVL)")
    p.add_argument("--small", help="small model of the same family (with --model)")
    p.add_argument("--image", help="image file (with --model; default: a held-out lab scene)")
    p.add_argument("--question", help="question about the image (default: the lab scene's)")
    p.add_argument("--seed", type=int, default=0, help="which held-out lab scene (without --image)")
    p.add_argument("--layer", type=int, default=None, help="layer K (default: the 9%% point: 2, or the lab's scaled K)")
    p.add_argument("--retain", type=float, default=0.05, help="share of visual tokens kept (default 0.05)")
    p.add_argument("--ranker", default="small", help="what orders the tokens (default: small, i.e. SGL)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--out", default="sgl_show.png", help="PNG to write (default: sgl_show.png)")
    p.set_defaults(run=run_cli)


def run_cli(args) -> int:
    from .rankers import RANKERS

    if args.ranker not in RANKERS:
        raise SystemExit(f"--ranker must be one of {', '.join(RANKERS)}, got {args.ranker!r}")
    if (args.model is None) != (args.small is None):
        raise SystemExit("--model and --small go together (or give neither, for the lab's pair)")
    if args.model is None:
        from .lab import load_pair, make_dataset
        from .lab import processor as lab_processor
        from .lab.evaluation import points

        small, large, processor = load_pair()
        scene = make_dataset(args.seed + 1, seed=args.seed)[args.seed]
        image = Image.open(args.image).convert("RGB") if args.image else scene["image"]
        question = args.question or scene["question"]
        prompt = lab_processor.prompt(processor, question)
        layer = args.layer if args.layer is not None else points(large.config.text_config.num_hidden_layers)[-1]["layer"]
        expected = None if (args.image or args.question) else scene["answer"]
    else:
        if not (args.image and args.question):
            raise SystemExit("with --model, give --image and --question")
        from transformers import AutoModelForImageTextToText, AutoProcessor

        large = AutoModelForImageTextToText.from_pretrained(args.model).eval()
        small = AutoModelForImageTextToText.from_pretrained(args.small).eval()
        processor = AutoProcessor.from_pretrained(args.model)
        image = Image.open(args.image).convert("RGB")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        question, layer, expected = args.question, 2 if args.layer is None else args.layer, None
    result = show(large, small, processor, image, prompt, args.out, layer=layer, retain=args.retain,
                  ranker=args.ranker, max_new_tokens=args.max_new_tokens)
    print(f"question: {question}")
    print(f"answer:   {result['answer']}" + (f"   (truth: {expected})" if expected is not None else ""))
    print(f"kept {result['kept']} of {result['visual_tokens']} visual tokens from layer {result['layer']} "
          f"(ranker {args.ranker}); wrote {result['picture']}")
    return 0
