"""``sgl-patch show``: a picture of which visual tokens the large model kept for one image and question.

The large model runs with SGL applied; ``sgl_patch.kept_visual_tokens`` says which of the image's
tokens layers K.. saw, and the family's adapter says where each token lies in the image
(``Adapter.image_token_layout``).  Kept tokens are outlined, dropped ones dimmed.  Without
``--model`` it shows a held-out scene of the lab's trained pair.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

MIN_SIDE = 512   # small images are enlarged (nearest neighbour) so one token's outline is visible


def outline_kept(image: Image.Image, layout: tuple[int, int, int], kept) -> Image.Image:
    """``image`` as the model saw it (``layout``: token rows, token columns, pixels per token side),
    the tokens in ``kept`` (raster indices) outlined, the others dimmed."""
    rows, cols, side = layout
    picture = image.convert("RGB").resize((cols * side, rows * side), Image.BICUBIC)
    scale = max(1, -(-MIN_SIDE // max(picture.size)))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    cell = side * scale
    mask = np.zeros((rows, cols), dtype=bool)
    kept = [int(i) for i in kept]
    mask.flat[kept] = True
    full = mask.repeat(cell, 0).repeat(cell, 1)
    pixels = np.asarray(picture).astype(np.float32)
    pixels[~full] *= 0.3
    picture = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    width = max(1, cell // 12)
    for index in kept:
        r, c = divmod(index, cols)
        draw.rectangle((c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1), outline=(255, 230, 0), width=width)
    return picture


def show(model, small, processor, image: Image.Image, prompt: str, out, *, layer, retain, ranker="small",
         max_new_tokens: int = 16) -> dict:
    """Run ``model`` guided by ``small`` on one image and prompt, write the picture to ``out``."""
    import torch

    import sgl_patch

    from .adapters import adapter_for

    inputs = processor(images=[image], text=[prompt], return_tensors="pt").to(model.device)
    adapter = adapter_for(model)
    layout = adapter.image_token_layout(model, inputs, 0)
    if not layout:
        raise ValueError(f"sgl-patch show does not know where {type(model).__name__}'s visual tokens lie in its "
                         "images yet (families that say: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-1.5)")
    handle = sgl_patch.apply(model, small, layer=layer, retain=retain, ranker=ranker)
    try:
        with torch.no_grad(), sgl_patch.kept_visual_tokens() as kept:
            sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    finally:
        handle.remove()
    answer = processor.batch_decode(sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
    rows, cols, _ = layout[0]
    first_image = [i for i in kept[0] if i < rows * cols]   # the first image's tokens come first
    outline_kept(image, layout[0], first_image).save(out)
    return {"answer": answer, "kept": len(kept[0]), "kept_tokens": kept[0], "visual_tokens": sum(r * c for r, c, _ in layout),
            "layer": handle.layer, "retain": retain, "ranker": ranker, "picture": str(out)}


def add_parser(commands) -> None:
    p = commands.add_parser("show", help="a PNG of the image with the visual tokens SGL kept outlined",
                            description="Run the large model guided by the small one on one image and question "
                                        "and draw which visual tokens layers K.. kept.  Without --model: a "
                                        "held-out scene of the lab's trained pair.")
    p.add_argument("--model", help="large model (local path or hub id; Qwen2-VL family or LLaVA-1.5)")
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
