"""Command line: ``sgl-patch demo`` (also ``python -m sgl_patch demo``).

The demo runs a large model (the first family of ``sgl_patch.tiny.names()`` by default: Qwen2-VL on
transformers 5.x, InternVL2's original ``InternVLChatModel`` on the legacy line 4.37.2 .. 4.49; any
family that runs on the installed transformers with ``--family``) on one batch, first alone and
then guided by a small one (``sgl_patch.apply``), and prints per sample how many visual tokens the
large model kept, the early-exit decision, and whether the answer matches
the baseline.  Without ``--large``/``--small`` it builds tiny random models of the family
(``sgl_patch.tiny``), saves them and loads them back, so it runs on any CPU in seconds; with them
it loads real Qwen2-VL / Qwen2.5-VL checkpoints and feeds them synthetic inputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

# families whose synthetic inputs can be built for a real checkpoint's config (--large/--small)
_CHECKPOINT_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
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

    from . import tiny

    demo = commands.add_parser("demo", help="run a large model alone and with SGL on one batch; compare",
                               description=(
                                   "Run one batch through a large model, first unpatched and then "
                                   "guided by a small one, and compare. With no --family/--large (on "
                                   "transformers 5): the lab's trained Qwen2-VL pair on held-out scenes, with "
                                   "real answers. With --family, tiny random models of that family are built, "
                                   "saved and reloaded (CPU, a few seconds); their answers are noise and their "
                                   "timings show overhead, not speed-ups."))
    families = tiny.names()
    default = "the lab's trained pair" if "qwen2_vl" in families else (families[0] if families else "none")
    demo.add_argument("--family", metavar="NAME", default=None,
                      help=f"family of the built-in tiny random models, those that run on the installed "
                           f"transformers: {', '.join(families)} (default: {default})")
    demo.add_argument("--llm", metavar="SMALL[:LARGE]", default=None, type=_llms,
                      help=f"--family internvl_chat: the language models of the small and the large model, "
                           f"from {', '.join(_LLM_KINDS)} (default: internlm2, as InternVL2-2B and -26B)")
    demo.add_argument("--large", metavar="PATH", help="saved Qwen2-VL / Qwen2.5-VL checkpoint (the large model)")
    demo.add_argument("--small", metavar="PATH", help="saved checkpoint of the same family (the small model)")
    demo.add_argument("--layer", type=_layer, default=None,
                      help="decoder layer K of the large model where visual tokens are dropped "
                           "(int, or a fraction of the depth such as 0.1; default: 2, or the lab's 9%% point)")
    demo.add_argument("--retain", type=float, default=0.05,
                      help="fraction of visual tokens kept from layer K on (default: 0.05)")
    demo.add_argument("--exit-threshold", type=_threshold, default=None, metavar="S",
                      help="early exit when the small model's score reaches S (default: none, no exit; the "
                           "lab's pair: 0.9)")
    demo.add_argument("--samples", type=int, default=6, metavar="N", help="the lab's pair: held-out scenes (default: 6)")
    demo.add_argument("--show", default="sgl_demo_kept.png", metavar="PNG",
                      help="the lab's pair: picture of the tokens kept for the first scene (default: "
                           "sgl_demo_kept.png; '' for none)")
    demo.add_argument("--max-new-tokens", type=int, default=16, metavar="N", help="default: 16")
    demo.add_argument("--images", default=None, metavar="HxW,...",
                      help="Qwen2-VL families: one synthetic image per sample, sides in vision patches (multiples "
                           f"of the spatial merge size), or 'text' for a text-only sample (default: {_DEFAULT_IMAGES}); "
                           "other families use their built-in samples")
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
    bench.add_argument("--family", metavar="NAME", default=None,
                       help=f"family of the built-in models, those that run on the installed transformers: "
                            f"{', '.join(families)} (default: {families[0] if families else 'none'})")
    bench.add_argument("--llm", metavar="SMALL[:LARGE]", default=None, type=_llms,
                       help=f"--family internvl_chat: the small and the large model's language models, from "
                            f"{', '.join(_LLM_KINDS)} (default: internlm2)")
    bench.add_argument("--quick", action="store_true", help="tiny shapes, under a minute (a smoke test)")
    bench.add_argument("--reps", type=_positive, default=None, metavar="N",
                       help="pairs of runs per figure, after a warm-up (default: 5)")
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

    from . import calibrate

    calibrate.add_parser(commands)  # sgl-patch calibrate: its options and run live in calibrate.py
    from . import show

    show.add_parser(commands)  # sgl-patch show: a picture of the kept visual tokens
    from .lab import cli as lab_cli

    lab_cli.add_parser(commands)  # sgl-patch lab ...: options and runs live in sgl_patch/lab/
    parser.set_defaults(verbose=False)
    return parser


def _bench(args) -> int:
    from . import bench, tiny

    sections = [s.strip() for s in args.sections.split(",") if s.strip() and s.strip() != "none"]
    unknown = sorted(set(sections) - set(bench.SECTIONS))
    if unknown:
        raise ValueError(f"unknown --sections {unknown}; choose from {', '.join(bench.SECTIONS)}")
    # checked here, not by argparse choices, so that a wrong name is one line, like --sections
    if args.family is not None:
        _family(args.family, args.llm)
    elif args.llm is not None:
        raise ValueError("--llm chooses InternVL2's language models: give it with --family internvl_chat")
    if not args.verbose:
        _quiet_model_code()
    started = time.perf_counter()

    def progress(message):
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    result = bench.run(quick=args.quick, device=args.device, dtype=args.dtype, sections=sections,
                       config=args.config, timed=args.timed, tiles=args.tiles, family=args.family,
                       llm=args.llm, reps=args.reps, progress=progress)
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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def _threshold(text: str):
    if text.strip().lower() in {"none", "off"}:
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


_LLM_KINDS = ("internlm2", "qwen2", "llama", "phi3")  # sgl_patch.tiny.internvl2.KINDS (not imported here)


def _llms(text: str) -> tuple[str, str]:
    parts = [part.strip() for part in text.split(":")]
    if len(parts) > 2 or not all(part in _LLM_KINDS for part in parts):
        raise argparse.ArgumentTypeError(f"expected KIND or SMALL:LARGE with kinds from {', '.join(_LLM_KINDS)}, "
                                         f"got {text!r}")
    return parts[0], parts[-1]


def _family(name, llm=None):
    """The tiny family ``name`` (with InternVL2 language models ``llm``), or one line saying why not."""
    from . import tiny

    if name not in tiny.names(every=True):
        raise ValueError(f"unknown --family {name!r}; choose from {', '.join(tiny.names())}")
    kit = tiny.family(name)  # a family of the other transformers line: a ValueError naming both
    if llm is not None:
        if not hasattr(kit, "with_llms"):
            raise ValueError(f"--llm chooses InternVL2's language models; --family {name} has its own")
        kit = kit.with_llms(*llm)
    return kit


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

    from . import tiny
    from .adapters import adapter_for

    if (args.large is None) != (args.small is None):
        raise ValueError("--large and --small go together: give both checkpoints, or neither for tiny models")
    tiny_only = (args.family, args.large, args.images, args.llm)
    if all(option is None for option in tiny_only) and "qwen2_vl" in tiny.names():
        if args.samples < 1:
            raise ValueError("--samples must be at least 1")
        from .lab import demo as lab_demo

        return lab_demo.run(args)
    if args.family is None:
        families = tiny.names()
        args.family = families[0] if families else None
    if args.layer is None:
        args.layer = 2
    if args.family is None:
        raise ValueError(f"no tiny family runs on transformers {_transformers_version()}")
    if args.large is not None and args.family not in _CHECKPOINT_FAMILIES:
        raise ValueError(f"--large/--small load Qwen2-VL / Qwen2.5-VL checkpoints (transformers 5.x); "
                         f"--family {args.family} runs its built-in tiny models only")
    kit = _family(args.family, args.llm)
    if args.images is not None and args.family not in _CHECKPOINT_FAMILIES:
        raise ValueError(f"--images describes Qwen2-VL images; --family {args.family} uses its built-in samples")
    samples = _images(args.images) if args.images is not None else kit.demo_samples()
    # check the options before loading anything (the layer's range is checked by apply)
    sgl_patch.SGLConfig(layer=args.layer, retain=args.retain, exit_threshold=args.exit_threshold).validate()
    if args.large is None:
        large, small = _tiny_models(kit, args.dtype or "float32", args.device)
        source = f"tiny random models (sgl_patch.tiny, family {kit.title})"
        inputs = kit.inputs(samples, seed=args.seed)
    else:
        large = _load(args.large, args.dtype or "auto", args.device)
        small = _load(args.small, args.dtype or "auto", args.device)
        source = f"large {args.large}, small {args.small}"
        inputs = _inputs(large.config, samples, args.seed)
    inputs = {k: v.to(large.device) for k, v in inputs.items()}
    generation = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    stop_ids = _stop_ids(large)

    large_text, small_text = (adapter_for(m).text_config(m) for m in (large, small))
    n_layers = large_text.num_hidden_layers
    print(f"sgl-patch {sgl_patch.__version__} demo: {type(large).__name__}, {source}")
    print(f"  large: {n_layers} layers, hidden {large_text.hidden_size}; "
          f"small: {small_text.num_hidden_layers} layers, hidden {small_text.hidden_size}; "
          f"{large.dtype}, {large.device}, batch of {len(samples)}, max_new_tokens={args.max_new_tokens}")

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
            records = sgl_patch.stats(large)[-len(samples):]
        finally:
            sgl_patch.remove(large)

    if handle.active:
        ratio = sgl_patch.token_ratio(handle.layer, args.retain, n_layers)
        print(f"  SGL: layer K={handle.layer}, retain={args.retain} (layer-averaged visual-token ratio "
              f"{ratio:.1%}), exit_threshold={args.exit_threshold}")
    else:
        print("  SGL: SGL_DISABLE is set, so apply() left the model unpatched")
    print()
    baseline_answers = [_answer(row, stop_ids) for row in kit.new_tokens(large, baseline, inputs)]
    guided_answers = [_answer(row, stop_ids) for row in kit.new_tokens(large, guided, inputs)]
    table = [("sample", "image", "visual tokens", "kept by large", "early exit (score)", "same answer")]
    for i, sample in enumerate(samples):
        record = records[i] if i < len(records) else {}
        exited = bool(record.get("exited"))
        score = "-" if record.get("exit_score") is None else f"{record['exit_score']:.3f}"
        table.append((str(i), kit.describe(sample),
                      str(record.get("n_visual", "-")), "-" if exited else str(record.get("n_kept", "-")),
                      f"{'yes' if exited else 'no'} ({score})",
                      "yes" if baseline_answers[i] == guided_answers[i] else "no"))
    print_table(table)
    same = sum(a == b for a, b in zip(baseline_answers, guided_answers))
    exited = sum(bool(r["exited"]) for r in records)
    # the records of one batch carry the batch's seconds (the large model's are 0 for exited samples)
    small_s = max((r["small_seconds"] or 0.0 for r in records), default=0.0)
    large_s = max((r["large_seconds"] or 0.0 for r in records), default=0.0)
    print(f"  same answer as baseline: {same}/{len(samples)}; early exits: {exited}/{len(samples)}")
    print(f"  time: baseline {baseline_seconds:.3f} s; SGL {sgl_seconds:.3f} s "
          f"(small model {small_s:.3f} s, large model {large_s:.3f} s)")
    if args.large is None:
        print("  (tiny random models: times show overhead, not the speed-up of real checkpoints)")
    return 0


def print_table(table: list[tuple]) -> None:
    """Rows of strings as aligned columns, the first row a header underlined, then a blank line."""
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    for n, row in enumerate(table):
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print()


def _tiny_models(kit, dtype: str, device: str):
    """The family's built-in tiny large and small models, saved and loaded back like real ones."""
    import torch
    import transformers

    from .adapters import adapter_for

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    _quiet_model_code()
    with tempfile.TemporaryDirectory(prefix="sgl-demo-") as root:
        small_path, large_path = kit.saved_pair(root)
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        models = [kit.load(path, torch_dtype) for path in (large_path, small_path)]
    for model in models:
        adapter_for(model)  # a clear error for a family of another transformers line
    return models[0].to(device), models[1].to(device)


def _quiet_model_code() -> None:
    """No warnings from InternVL2's own code (ours and the copies ``trust_remote_code`` imports: flash_attn
    is missing) nor transformers' (4.49: its classes will lose ``generate`` in 4.50); ``-v`` shows them."""
    for name in ("sgl_patch.tiny.internvl2_code", "transformers_modules"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _load(path, dtype: str, device: str):
    import torch
    import transformers

    from .adapters import adapter_for

    model = transformers.AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    adapter_for(model)  # a clear error for a class sgl_patch does not support
    return model.to(device).eval()


def _inputs(config, samples, seed: int) -> dict:
    from . import tiny

    if config.model_type not in _CHECKPOINT_FAMILIES:
        raise ValueError(f"the demo builds synthetic inputs for real checkpoints of {', '.join(_CHECKPOINT_FAMILIES)} "
                         f"only, not {config.model_type!r}: run it without --large/--small and with "
                         f"--family {config.model_type} for tiny models of that family")
    return tiny.qwen2_vl_inputs_for_config(config, samples, seed=seed)


def _stop_ids(model) -> set:
    ids = set()
    for attr in ("eos_token_id", "pad_token_id"):
        value = getattr(model.generation_config, attr, None)
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return {int(i) for i in ids}


def _answer(row, stop_ids: set) -> list:
    """The generated tokens of one output row, up to its first end or pad token."""
    answer = []
    for token in row.tolist():
        if token in stop_ids:
            break
        answer.append(token)
    return answer


if __name__ == "__main__":
    sys.exit(main())
