"""``sgl-patch demo`` on the lab's trained pair (its default where transformers 5 is installed):
held-out scenes and their questions, the answers of the large model alone, the small model alone
and the large model guided by the small one (SGL), tokens kept, exit decisions, times, and a
picture of the tokens kept for the first scene."""

from __future__ import annotations

import time

# early exit in the demo: the small model answers alone when its score reaches this (illustrative;
# `sgl-patch lab eval` prints accuracy against the share sent to the large model for every threshold)
EXIT_THRESHOLD = 0.9


def run(args) -> int:
    import sgl_patch

    from ..cli import print_table
    from ..show import show
    from . import load_pair, make_dataset, scenes
    from . import processor as lab_processor
    from .evaluation import answers, points

    small, large, processor = load_pair()
    samples = make_dataset(args.samples, seed=args.seed)
    nine = points(large.config.text_config.num_hidden_layers)[-1]
    layer = nine["layer"] if args.layer is None else args.layer
    threshold = EXIT_THRESHOLD if args.exit_threshold is None else args.exit_threshold
    sgl_patch.SGLConfig(layer=layer, retain=args.retain, exit_threshold=threshold).validate()
    size = len(samples)
    print(f"sgl-patch {sgl_patch.__version__} demo: the lab's trained Qwen2-VL pair (sgl_patch/lab/weights), "
          f"{size} held-out scenes (seed {args.seed})")
    for name, model in (("large", large), ("small", small)):
        text = model.config.text_config
        print(f"  {name}: {text.num_hidden_layers} layers, hidden {text.hidden_size}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")

    def timed(fn):
        started = time.perf_counter()
        value = fn()
        return value, time.perf_counter() - started

    answers(large, processor, samples[:1], size)   # warm-up, not timed
    large_answers, large_s = timed(lambda: answers(large, processor, samples, size))
    small_answers, small_s = timed(lambda: answers(small, processor, samples, size))
    handle = sgl_patch.apply(large, small, layer=layer, retain=args.retain, exit_threshold=threshold)
    try:
        sgl_answers, sgl_s = timed(lambda: answers(large, processor, samples, size))
        records = sgl_patch.stats(large)[-size:]
    finally:
        handle.remove()
    ratio = sgl_patch.token_ratio(handle.layer, args.retain, large.config.text_config.num_hidden_layers)
    print(f"  SGL: layer K={handle.layer}, retain={args.retain} (layer-averaged visual-token ratio {ratio:.1%}), "
          f"exit_threshold={threshold}")
    print()
    table = [("scene", "question", "truth", "large", "small", "SGL", "kept", "exit (score)")]
    for i, (sample, record) in enumerate(zip(samples, records)):
        kept = "-" if record["exited"] else f"{record['n_kept']}/{record['n_visual']}"
        table.append((str(i), sample["question"], sample["answer"], large_answers[i], small_answers[i],
                      sgl_answers[i], kept, f"{'yes' if record['exited'] else 'no'} ({record['exit_score']:.3f})"))
    print_table(table)

    def right(predictions):
        return sum(scenes.is_correct(p, s["answer"]) for p, s in zip(predictions, samples))

    exits = sum(r["exited"] for r in records)
    print(f"  right: large {right(large_answers)}/{size}, small {right(small_answers)}/{size}, "
          f"SGL {right(sgl_answers)}/{size}; early exits: {exits}/{size}")
    print(f"  time for the batch: large alone {large_s:.3f} s, small alone {small_s:.3f} s, SGL {sgl_s:.3f} s "
          "(CPU, tiny models: the ratios of real checkpoints on a GPU are in BENCHMARKS.md)")
    if args.show:
        first = samples[0]
        result = show(large, small, processor, first["image"], lab_processor.prompt(processor, first["question"]),
                      args.show, layer=layer, retain=args.retain)
        print(f"  scene 0: the {result['kept']} visual tokens of {result['visual_tokens']} that the large model kept "
              f"from layer {result['layer']} are outlined in {args.show}")
    print("  accuracy of every ranker at the paper's three points: sgl-patch lab eval")
    return 0
