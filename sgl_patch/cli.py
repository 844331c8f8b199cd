"""Command line: ``sgl-patch demo`` (also ``python -m sgl_patch demo``).

The demo runs a large Qwen2-VL model on one batch, first alone and then guided by a small one
(``sgl_patch.apply``), and prints per sample how many visual tokens the large model kept, the
early-exit decision, and whether the answer matches the baseline.  Without ``--large``/``--small``
it builds tiny random models (``sgl_patch.tiny``), saves them and loads them back, so it runs on
any CPU in seconds; with them it loads real checkpoints and feeds them synthetic inputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

# model_type in a checkpoint's config.json -> transformers class that loads it
_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}
_DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEFAULT_IMAGES = "16x16,12x16,8x8,16x8,text"


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as error:
        if args.verbose:
            raise
        print(f"sgl-patch {args.command}: error: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="sgl-patch", description=(
        "SGL: a small vision-language model guides a large one of the same family "
        "(visual-token pruning + early exit)."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser("demo", help="run a large model alone and with SGL on one batch; compare",
                               description=(
                                   "Run one batch through a large Qwen2-VL model, first unpatched and then "
                                   "guided by a small one, and compare. Without --large/--small, tiny random "
                                   "models are built, saved and reloaded (CPU, a few seconds); their timings "
                                   "show overhead, not speed-ups."))
    demo.add_argument("--large", metavar="PATH", help="saved Qwen2-VL / Qwen2.5-VL checkpoint (the large model)")
    demo.add_argument("--small", metavar="PATH", help="saved checkpoint of the same family (the small model)")
    demo.add_argument("--layer", type=_layer, default=2,
                      help="decoder layer K of the large model where visual tokens are dropped "
                           "(int, or a fraction of the depth such as 0.1; default: 2)")
    demo.add_argument("--retain", type=float, default=0.05,
                      help="fraction of visual tokens kept from layer K on (default: 0.05)")
    demo.add_argument("--exit-threshold", type=_threshold, default=None, metavar="S",
                      help="early exit when the small model's score reaches S (default: none, no exit)")
    demo.add_argument("--max-new-tokens", type=int, default=16, metavar="N", help="default: 16")
    demo.add_argument("--images", default=_DEFAULT_IMAGES, metavar="HxW,...",
                      help="one synthetic image per sample, sides in vision patches (multiples of the "
                           f"spatial merge size), or 'text' for a text-only sample (default: {_DEFAULT_IMAGES})")
    demo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    demo.add_argument("--dtype", choices=_DTYPES, default=None,
                      help="model dtype (default: float32 for the tiny models, auto for checkpoints)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs (default: 0)")
    demo.add_argument("-v", "--verbose", action="store_true", help="log what sgl_patch does; show tracebacks")
    demo.set_defaults(run=_demo)

    from .bench import SECTIONS

    bench = commands.add_parser("bench", help="measure speed-ups as ratios in one run, beside the FLOP limit",
                                description=(
                                    "Measure what SGL delivers: large-model prefill and decoding pruned vs "
                                    "unpruned at the paper's 64%%/35%%/9%% points beside the FLOP-predicted "
                                    "limit, importance-capture overhead vs plain SDPA and vs the eager "
                                    "approach, end to end with early exit, and batch throughput. Every figure "
                                    "is a ratio of runs interleaved in this process (median of pairs, min-max)."))
    bench.add_argument("--quick", action="store_true", help="tiny shapes, under a minute (a smoke test)")
    bench.add_argument("--json", metavar="PATH", help="write every figure and the machine to this JSON file")
    bench.add_argument("--plot", metavar="PATH", help="write the prefill speed-up plot (PNG; needs matplotlib)")
    bench.add_argument("--sections", default=",".join(SECTIONS),
                       help=f"comma-separated subset of {','.join(SECTIONS)} (default: all); "
                            "'none' for estimates only")
    bench.add_argument("--config", metavar="SPEC",
                       help="add FLOP/KV estimates for real models: 'all' (the paper's pairs), table names "
                            "such as InternVL2-26B or Qwen2-VL-72B:Qwen2-VL-2B, or config.json paths "
                            "LARGE.json[:SMALL.json], comma-separated (with --sections none: estimates only)")
    bench.add_argument("--timed", action="store_true",
                       help="with --config of one Qwen2-VL pair (config.json paths): also time random-weight "
                            "models of those shapes on --device")
    bench.add_argument("--tiles", type=int, default=5, help="image tiles per input for --config estimates")
    bench.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    bench.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    bench.add_argument("-v", "--verbose", action="store_true", help="log what sgl_patch does")
    bench.set_defaults(run=_bench)
    parser.set_defaults(verbose=False)
    return parser


def _bench(args) -> int:
    from . import bench

    sections = [s.strip() for s in args.sections.split(",") if s.strip() and s.strip() != "none"]
    unknown = sorted(set(sections) - set(bench.SECTIONS))
    if unknown:
        raise ValueError(f"unknown --sections {unknown}; choose from {', '.join(bench.SECTIONS)}")
    started = time.perf_counter()

    def progress(message):
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    result = bench.run(quick=args.quick, device=args.device, dtype=args.dtype, sections=sections,
                       config=args.config, timed=args.timed, tiles=args.tiles, progress=progress)
    print(bench.report.render(result))
    if args.json:
        bench.report.write_json(result, args.json)
        print(f"\n  figures written to {args.json}")
    if args.plot and "prefill" in result:
        if bench.report.plot(result, args.plot):
            print(f"  plot written to {args.plot}")
        else:
            print("  no plot: matplotlib is not installed (pip install matplotlib)")
    return 0


def _layer(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int or a fraction, got {text!r}") from None


def _threshold(text: str):
    if text.strip().lower() in {"none", "off"}:
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _images(text: str) -> list:
    sides = []
    for item in text.split(","):
        item = item.strip().lower()
        if item in {"text", "none", "-"}:
            sides.append(None)
            continue
        try:
            h, w = (int(part) for part in item.split("x"))
        except ValueError:
            raise ValueError(f"--images: {item!r} is not HxW (e.g. 16x16) or 'text'") from None
        sides.append((h, w))
    if not sides:
        raise ValueError("--images needs at least one sample")
    return sides


# -- demo ----------------------------------------------------------------------------------------

def _demo(args) -> int:
    import torch

    import sgl_patch

    if (args.large is None) != (args.small is None):
        raise ValueError("--large and --small go together: give both checkpoints, or neither for tiny models")
    sides = _images(args.images)
    # check the options before loading anything (the layer's range is checked by apply)
    sgl_patch.SGLConfig(layer=args.layer, retain=args.retain, exit_threshold=args.exit_threshold).validate()
    if args.large is None:
        large, small, source = _tiny_models(args.dtype or "float32", args.device)
    else:
        large = _load(args.large, args.dtype or "auto", args.device)
        small = _load(args.small, args.dtype or "auto", args.device)
        source = f"large {args.large}, small {args.small}"
    inputs = _inputs(large.config, sides, args.seed)
    inputs = {k: v.to(large.device) for k, v in inputs.items()}
    prompt_length = inputs["input_ids"].shape[1]
    generation = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    stop_ids = _stop_ids(large)

    n_layers = large.config.get_text_config().num_hidden_layers
    print(f"sgl-patch {sgl_patch.__version__} demo: {type(large).__name__}, {source}")
    print(f"  large: {n_layers} layers, hidden {large.config.get_text_config().hidden_size}; "
          f"small: {small.config.get_text_config().num_hidden_layers} layers, "
          f"hidden {small.config.get_text_config().hidden_size}; "
          f"{large.dtype}, {large.device}, batch of {len(sides)}, max_new_tokens={args.max_new_tokens}")

    with torch.no_grad():
        large.generate(**inputs, max_new_tokens=1, do_sample=False)  # warm-up, not timed
        started = time.perf_counter()
        baseline = large.generate(**inputs, **generation)
        baseline_seconds = time.perf_counter() - started

        handle = sgl_patch.apply(large, small_model=small, layer=args.layer, retain=args.retain,
                                 exit_threshold=args.exit_threshold)
        try:
            started = time.perf_counter()
            guided = large.generate(**inputs, **generation)
            sgl_seconds = time.perf_counter() - started
            records = sgl_patch.stats(large)[-len(sides):]
        finally:
            sgl_patch.remove(large)

    if handle.active:
        ratio = sgl_patch.token_ratio(handle.layer, args.retain, n_layers)
        print(f"  SGL: layer K={handle.layer}, retain={args.retain} (layer-averaged visual-token ratio "
              f"{ratio:.1%}), exit_threshold={args.exit_threshold}")
    else:
        print("  SGL: SGL_DISABLE is set, so apply() left the model unpatched")
    print()
    baseline_answers = [_answer(row, prompt_length, stop_ids) for row in baseline]
    guided_answers = [_answer(row, prompt_length, stop_ids) for row in guided]
    table = [("sample", "image", "visual tokens", "kept by large", "early exit (score)", "same answer")]
    for i, side in enumerate(sides):
        record = records[i] if i < len(records) else {}
        exited = bool(record.get("exited"))
        score = "-" if record.get("exit_score") is None else f"{record['exit_score']:.3f}"
        table.append((str(i), "text only" if side is None else f"{side[0]}x{side[1]}",
                      str(record.get("n_visual", "-")), "-" if exited else str(record.get("n_kept", "-")),
                      f"{'yes' if exited else 'no'} ({score})",
                      "yes" if baseline_answers[i] == guided_answers[i] else "no"))
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    for n, row in enumerate(table):
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print()
    same = sum(a == b for a, b in zip(baseline_answers, guided_answers))
    exited = sum(bool(r["exited"]) for r in records)
    # the records of one batch carry the batch's seconds (the large model's are 0 for exited samples)
    small_s = max((r["small_seconds"] or 0.0 for r in records), default=0.0)
    large_s = max((r["large_seconds"] or 0.0 for r in records), default=0.0)
    print(f"  same answer as baseline: {same}/{len(sides)}; early exits: {exited}/{len(sides)}")
    print(f"  time: baseline {baseline_seconds:.3f} s; SGL {sgl_seconds:.3f} s "
          f"(small model {small_s:.3f} s, large model {large_s:.3f} s)")
    if args.large is None:
        print("  (tiny random models: times show overhead, not the speed-up of real checkpoints)")
    return 0


def _tiny_models(dtype: str, device: str):
    """The built-in tiny small and large Qwen2-VL models, saved and loaded back like real ones."""
    import transformers

    from . import tiny

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="sgl-demo-") as root:
        tiny.qwen2_vl_model(tiny.SMALL).save_pretrained(Path(root, "small"))
        tiny.qwen2_vl_model(tiny.LARGE, seed=1).save_pretrained(Path(root, "large"))
        large = _load(Path(root, "large"), dtype, device)
        small = _load(Path(root, "small"), dtype, device)
    return large, small, "tiny random models (sgl_patch.tiny)"


def _load(path, dtype: str, device: str):
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    name = _CLASSES.get(config.model_type)
    if name is None:
        raise ValueError(f"{path}: model_type {config.model_type!r} is not supported by the demo; "
                         f"expected one of {', '.join(_CLASSES)}")
    cls = getattr(transformers, name)
    model = cls.from_pretrained(path, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    return model.to(device).eval()


def _inputs(config, sides, seed: int) -> dict:
    from . import tiny

    return tiny.qwen2_vl_inputs_for_config(config, sides, seed=seed)


def _stop_ids(model) -> set:
    ids = set()
    for attr in ("eos_token_id", "pad_token_id"):
        value = getattr(model.generation_config, attr, None)
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return {int(i) for i in ids}


def _answer(row, prompt_length: int, stop_ids: set) -> list:
    """The generated tokens of one output row, up to its first end or pad token."""
    answer = []
    for token in row[prompt_length:].tolist():
        if token in stop_ids:
            break
        answer.append(token)
    return answer


if __name__ == "__main__":
    sys.exit(main())
